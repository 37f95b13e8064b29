"""A reader of BTF, the kernel's compact type format (``/sys/kernel/btf/vmlinux``, a vmlinux's ``.BTF``).

:func:`parse` turns the raw bytes into a :class:`Btf`: the type table (index = BTF type id, 0 is
``void``) of :class:`BtfType` records, each with its kind, name, size or referenced type and its
kind's extra data (members, enumerators, array bounds, parameters, section variables). Both byte
orders are read; the format is the one in the kernel's Documentation/bpf/btf.rst (header, type
section, string section), kinds 1–19 (INT … ENUM64).

Also here: :func:`vmlinux_from_bzimage` (the ELF kernel inside a ``vmlinuz``, decompressed with
the standard library or the ``lz4``/``zstd`` tools) and :func:`elf_section` (one section of an ELF
file by name).

What does not live here: turning types into a Volatility symbol table
(:mod:`atomwatch.introspection.isf_from_btf`), symbol addresses (:mod:`atomwatch.introspection.kallsyms`).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass, field
from typing import Any

MAGIC = 0xEB9F

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19

KIND_NAMES = {
    0: "void",
    INT: "int",
    PTR: "ptr",
    ARRAY: "array",
    STRUCT: "struct",
    UNION: "union",
    ENUM: "enum",
    FWD: "fwd",
    TYPEDEF: "typedef",
    VOLATILE: "volatile",
    CONST: "const",
    RESTRICT: "restrict",
    FUNC: "func",
    FUNC_PROTO: "func_proto",
    VAR: "var",
    DATASEC: "datasec",
    FLOAT: "float",
    DECL_TAG: "decl_tag",
    TYPE_TAG: "type_tag",
    ENUM64: "enum64",
}

#: INT encoding bits
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4


class BtfError(ValueError):
    """The bytes are not BTF this reader understands; the text says where and why."""


@dataclass(slots=True)
class Member:
    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0  # 0: not a bitfield


@dataclass(slots=True)
class BtfType:
    kind: int
    name: str
    #: byte size for INT/STRUCT/UNION/ENUM/ENUM64/FLOAT/DATASEC, else 0
    size: int = 0
    #: the referenced type id for PTR/TYPEDEF/qualifiers/FUNC/VAR/DECL_TAG/TYPE_TAG, the return type
    #: for FUNC_PROTO, the element type for ARRAY
    type: int = 0
    kind_flag: bool = False
    #: INT: encoding bits, bit offset and bit count
    encoding: int = 0
    int_bits: int = 0
    #: ARRAY: element count
    nelems: int = 0
    members: list[Member] = field(default_factory=list)
    #: ENUM/ENUM64: (name, value) in order
    values: list[tuple[str, int]] = field(default_factory=list)
    #: FUNC_PROTO: (name, type) parameters
    params: list[tuple[str, int]] = field(default_factory=list)
    #: DATASEC: (var type id, offset, size)
    vars: list[tuple[int, int, int]] = field(default_factory=list)
    #: VAR: linkage; DECL_TAG: component index
    extra: int = 0

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind{self.kind}")


@dataclass
class Btf:
    types: list[BtfType]  # index = type id; types[0] is void
    endian: str  # "little" or "big"

    def __len__(self) -> int:
        return len(self.types)

    def __getitem__(self, tid: int) -> BtfType:
        return self.types[tid]

    def by_name(self, name: str, kinds: tuple[int, ...] | None = None) -> list[int]:
        """Type ids named ``name`` (of the given kinds)."""
        return [i for i, t in enumerate(self.types) if t.name == name and (kinds is None or t.kind in kinds)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.types[1:]:
            out[t.kind_name] = out.get(t.kind_name, 0) + 1
        return out


def parse(data: bytes, what: str = "BTF") -> Btf:
    """Read BTF bytes (``what`` names them in errors)."""
    if len(data) < 24:
        raise BtfError(f"{what}: {len(data)} bytes, too short for a BTF header")
    if struct.unpack_from("<H", data)[0] == MAGIC:
        e, endian = "<", "little"
    elif struct.unpack_from(">H", data)[0] == MAGIC:
        e, endian = ">", "big"
    else:
        raise BtfError(f"{what}: no BTF magic 0xeb9f at the start (found {data[:2].hex()})")
    _magic, version, _flags, hdr_len = struct.unpack_from(e + "HBBI", data)
    if version != 1:
        raise BtfError(f"{what}: BTF version {version}, only version 1 is known")
    type_off, type_len, str_off, str_len = struct.unpack_from(e + "IIII", data, 8)
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    if t0 + type_len > len(data) or s0 + str_len > len(data):
        raise BtfError(
            f"{what}: sections run past the end ({len(data)} bytes; types {t0}+{type_len}, strings {s0}+{str_len})"
        )
    strings = data[s0 : s0 + str_len]
    cache: dict[int, str] = {}

    def name(off: int) -> str:
        s = cache.get(off)
        if s is None:
            if off >= str_len:
                raise BtfError(f"{what}: string offset {off} beyond the string section ({str_len} bytes)")
            end = strings.find(b"\0", off)
            s = cache[off] = strings[off : end if end >= 0 else str_len].decode("utf-8", "replace")
        return s

    u32 = struct.Struct(e + "I")
    i32 = struct.Struct(e + "i")
    three = struct.Struct(e + "III")
    types = [BtfType(0, "void")]
    pos, end = t0, t0 + type_len
    try:
        while pos < end:
            name_off, info, size_type = three.unpack_from(data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            t = BtfType(kind, name(name_off), kind_flag=kflag)
            if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
                t.size = size_type
            else:
                t.type = size_type
            if kind == INT:
                v = u32.unpack_from(data, pos)[0]
                pos += 4
                t.encoding, t.int_bits = (v >> 24) & 0x0F, v & 0xFF
            elif kind == ARRAY:
                t.type, _index, t.nelems = three.unpack_from(data, pos)
                pos += 12
            elif kind in (STRUCT, UNION):
                for _ in range(vlen):
                    m_name, m_type, off = three.unpack_from(data, pos)
                    pos += 12
                    if kflag:
                        t.members.append(Member(name(m_name), m_type, off & 0xFFFFFF, off >> 24))
                    else:
                        t.members.append(Member(name(m_name), m_type, off))
            elif kind == ENUM:
                for _ in range(vlen):
                    n = u32.unpack_from(data, pos)[0]
                    v = (i32 if kflag else u32).unpack_from(data, pos + 4)[0]
                    pos += 8
                    t.values.append((name(n), v))
            elif kind == ENUM64:
                for _ in range(vlen):
                    n, lo, hi = three.unpack_from(data, pos)
                    pos += 12
                    v = (hi << 32) | lo
                    if kflag and v >> 63:
                        v -= 1 << 64
                    t.values.append((name(n), v))
            elif kind == FUNC_PROTO:
                for _ in range(vlen):
                    n, p_type = struct.unpack_from(e + "II", data, pos)
                    pos += 8
                    t.params.append((name(n), p_type))
            elif kind in (VAR, DECL_TAG):
                t.extra = (u32 if kind == VAR else i32).unpack_from(data, pos)[0]
                pos += 4
            elif kind == DATASEC:
                for _ in range(vlen):
                    t.vars.append(three.unpack_from(data, pos))
                    pos += 12
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise BtfError(f"{what}: type {len(types)} at byte {pos - 12} has unknown kind {kind}")
            types.append(t)
    except struct.error:
        raise BtfError(f"{what}: the type section ends inside type {len(types)}") from None
    if pos != end:
        raise BtfError(f"{what}: the last type runs {pos - end} bytes past the type section")
    n = len(types)
    for i, t in enumerate(types):
        refs = [t.type] + [m.type for m in t.members] + [p for _, p in t.params] + [v[0] for v in t.vars]
        bad = [r for r in refs if r >= n]
        if bad:
            raise BtfError(
                f"{what}: type {i} ({t.kind_name} {t.name!r}) refers to type {bad[0]}, beyond the last ({n - 1})"
            )
    return Btf(types, endian)


# --- ELF and bzImage ---------------------------------------------------------------------------


def elf_section(image: bytes, name: str, what: str = "ELF file") -> bytes | None:
    """The bytes of section ``name`` of a 64-bit little-endian ELF file; None when absent."""
    if image[:4] != b"\x7fELF":
        raise BtfError(f"{what}: not an ELF file")
    if image[4] != 2 or image[5] != 1:
        raise BtfError(f"{what}: only 64-bit little-endian ELF is read (class {image[4]}, data {image[5]})")
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    if shoff == 0 or shnum == 0:
        return None

    def header(i: int) -> tuple[Any, ...]:
        # name, type, flags, addr, offset, size
        return struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize)

    names = header(shstrndx)
    strtab = image[names[4] : names[4] + names[5]]
    for i in range(shnum):
        h = header(i)
        end = strtab.find(b"\0", h[0])
        if strtab[h[0] : end].decode("ascii", "replace") == name:
            return bytes(image[h[4] : h[4] + h[5]]) if h[1] != 8 else None  # 8: NOBITS
    return None


def elf_load_segments(image: bytes) -> list[tuple[int, int, int]]:
    """(virtual address, file offset, file size) of each PT_LOAD segment of a 64-bit ELF file."""
    phoff = struct.unpack_from("<Q", image, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", image, 0x36)
    out = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", image, phoff + i * phentsize
        )
        if p_type == 1:
            out.append((p_vaddr, p_offset, p_filesz))
    return out


_COMPRESSIONS = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
)


def vmlinux_from_bzimage(data: bytes, what: str = "vmlinuz") -> bytes:
    """The ELF kernel inside an x86 bzImage (gzip, xz, lzma, bzip2 from the standard library; lz4
    and zstd through the ``lz4`` and ``zstd`` tools). An ELF file is returned as it is."""
    if data[:4] == b"\x7fELF":
        return data
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise BtfError(f"{what}: neither an ELF file nor an x86 bzImage (no 'HdrS' boot header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    method = next((m for magic, m in _COMPRESSIONS if payload.startswith(magic)), None)
    if method is None:
        raise BtfError(f"{what}: unknown compression of the kernel payload (starts {payload[:6].hex()})")
    try:
        if method == "gzip":
            import zlib

            out = zlib.decompressobj(31).decompress(payload)
        elif method in ("xz", "lzma"):
            import lzma

            dec = lzma.LZMADecompressor(lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE)
            out = dec.decompress(payload)
        elif method == "bzip2":
            import bz2

            out = bz2.BZ2Decompressor().decompress(payload)
        else:
            out = _decompress_with_tool(method, payload, what)
    except (OSError, EOFError, ValueError) as e:
        raise BtfError(f"{what}: the {method} payload does not decompress: {e}") from None
    if out[:4] != b"\x7fELF":
        raise BtfError(f"{what}: the decompressed {method} payload is not an ELF kernel")
    return out


def _decompress_with_tool(method: str, payload: bytes, what: str) -> bytes:
    tool = {"lz4": "lz4", "zstd": "zstd"}[method]
    try:
        # the payload ends with the kernel's 4-byte size, which the tools call trailing garbage:
        # their exit status then says failure although the output is whole (checked by the caller)
        res = subprocess.run([tool, "-dc"], input=payload, capture_output=True, timeout=120, check=False)
    except FileNotFoundError:
        raise BtfError(f"{what}: the kernel is {method}-compressed and the {tool!r} tool is not installed") from None
    return res.stdout
