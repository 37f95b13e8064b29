"""Kernel symbol addresses for a symbol table built from BTF: System.map, ``/proc/kallsyms``, or the
kallsyms tables compiled into the kernel image.

All three give ``{name: (address, type letter)}`` with link-time (unrelocated) addresses, as
Volatility wants them (it finds the KASLR shift itself):

* :func:`parse_system_map` — ``nm`` lines; Debian's placeholder System.map is refused by name;
* :func:`parse_proc_kallsyms` — a running kernel's list, shifted back by the running ``_text``
  minus the link-time ``_text`` (per-CPU offsets, below the kernel's range, are not shifted);
* :func:`from_vmlinux` — the compressed tables ``CONFIG_KALLSYMS`` puts in ``.rodata``
  (``kallsyms_offsets``, ``kallsyms_relative_base``, ``kallsyms_num_syms``, ``kallsyms_names``,
  ``kallsyms_token_table``, in the order 6.1 lays them out), found by their shape, decoded, and
  checked against the ``linux_banner`` string.

What does not live here: types (:mod:`atomwatch.introspection.btf`), the ISF
(:mod:`atomwatch.introspection.isf_from_btf`).
"""

from __future__ import annotations

import re
import struct

from atomwatch.introspection.btf import BtfError, elf_load_segments, elf_section

#: where x86-64 kernels are linked unless configured otherwise (CONFIG_PHYSICAL_START 0x1000000)
DEFAULT_TEXT = 0xFFFFFFFF81000000

Symbols = dict[str, tuple[int, str]]


class SymbolsError(ValueError):
    """No usable symbol addresses; the text names the input and what is wrong."""


_LINE = re.compile(r"^([0-9a-fA-F]{1,16})\s+(\S)\s+(\S+)(\s+\[[^\]]+\])?\s*$")


def _parse_nm(text: str) -> Symbols:
    syms: Symbols = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and not m.group(4):  # group 4: a module's symbol, not in the kernel image
            syms.setdefault(m.group(3), (int(m.group(1), 16), m.group(2)))
    return syms


def parse_system_map(text: str, what: str = "System.map") -> Symbols:
    """Link-time addresses from a System.map (or ``nm vmlinux``)."""
    if "The real System.map is in" in text:
        raise SymbolsError(
            f"{what} is Debian's placeholder (the real one is in the -dbg package); "
            "build from the kernel image's own kallsyms instead (leave out --system-map)"
        )
    syms = _parse_nm(text)
    if "_text" not in syms:
        raise SymbolsError(f"{what}: no '_text' symbol among {len(syms)} lines read: not a System.map?")
    return syms


def parse_proc_kallsyms(text: str, link_text: int = DEFAULT_TEXT, what: str = "/proc/kallsyms") -> Symbols:
    """A running kernel's ``/proc/kallsyms`` (read as root), shifted back to link-time addresses."""
    syms = _parse_nm(text)
    if "_text" not in syms:
        raise SymbolsError(f"{what}: no '_text' symbol among {len(syms)} lines: not a kallsyms listing?")
    running = syms["_text"][0]
    if running == 0:
        raise SymbolsError(f"{what}: every address reads 0 (kptr_restrict): read it as root in the guest")
    shift = running - link_text
    return {n: ((a - shift) if a >= running - 0x1000000 else a, t) for n, (a, t) in syms.items()}


def running_text(text: str) -> int:
    """The running ``_text`` of a ``/proc/kallsyms`` listing (0 when read without root)."""
    syms = _parse_nm(text)
    return syms.get("_text", (0, ""))[0]


def from_vmlinux(image: bytes, what: str = "vmlinux") -> Symbols:
    """The symbols of the kernel's own kallsyms tables (``CONFIG_KALLSYMS``), link-time addresses."""
    rodata = elf_section(image, ".rodata", what)
    if rodata is None:
        raise SymbolsError(f"{what}: no .rodata section")
    loads = elf_load_segments(image)
    if not any(v >= 0xFFFF800000000000 for v, _, _ in loads):
        raise SymbolsError(f"{what}: no loadable segment in the kernel's address range: not a kernel image")
    text = link_text(image)
    table = _token_table(rodata, what)
    base = struct.pack("<Q", text)
    tried = 0
    for m in re.finditer(re.escape(base), rodata):
        pos = m.start()
        if pos % 8:
            continue
        tried += 1
        syms = _decode_at(rodata, pos, text, table, what)
        if syms is not None and _banner_checks(image, loads, syms):
            return syms
    raise SymbolsError(
        f"{what}: found no kallsyms tables in the old layout "
        f"({tried} candidate relative bases at {text:#x}); give --system-map, or build from the running guest"
    )


def _token_table(rodata: bytes, what: str) -> list[bytes]:
    """The 256 tokens (bytes) of ``kallsyms_token_table``, found by its run of one-digit tokens."""
    digits = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
    for m in re.finditer(re.escape(digits), rodata):
        start = m.start()
        # walk back 48 tokens ('0' is token 0x30)
        p = start
        ok = True
        for _ in range(0x30):
            if p < 2 or rodata[p - 1] != 0:
                ok = False
                break
            q = rodata.rfind(b"\0", 0, p - 1)
            p = q + 1
            if p >= start or start - p > 0x30 * 64:
                ok = False
                break
        if not ok:
            continue
        tokens = []
        q = p
        for _ in range(256):
            e = rodata.find(b"\0", q)
            if e < 0:
                break
            tokens.append(rodata[q:e])
            q = e + 1
        if len(tokens) == 256 and all(tokens) and tokens[0x30] == b"0":
            return tokens
    raise SymbolsError(f"{what}: no kallsyms token table in .rodata (kernel built without CONFIG_KALLSYMS?)")


def _decode_at(rodata: bytes, pos: int, text: int, tokens: list[bytes], what: str) -> Symbols | None:
    """Decode the tables around a ``kallsyms_relative_base`` candidate at ``pos``; None if they do not fit."""
    if pos + 16 > len(rodata):
        return None
    num = struct.unpack_from("<I", rodata, pos + 8)[0]
    if not 1000 <= num <= 5_000_000:
        return None
    off_len = (num * 4 + 7) // 8 * 8
    if off_len > pos:
        return None
    offsets = struct.unpack_from(f"<{num}i", rodata, pos - off_len)
    p = pos + 16
    names: list[tuple[str, str]] = []
    try:
        for _ in range(num):
            n = rodata[p]
            p += 1
            if n & 0x80:  # long names: two bytes of length (kernels from 6.1)
                n = (n & 0x7F) | (rodata[p] << 7)
                p += 1
            if n == 0:
                return None
            s = b"".join(tokens[b] for b in rodata[p : p + n])
            p += n
            names.append((chr(s[0]), s[1:].decode("ascii", "replace")))
    except IndexError:
        return None
    absolute_percpu = any(o < 0 for o in offsets)
    syms: Symbols = {}
    for (kind, name), off in zip(names, offsets):
        if absolute_percpu:
            addr = off if off >= 0 else text - 1 - off
        else:
            addr = text + (off & 0xFFFFFFFF)
        syms.setdefault(name, (addr, kind))
    return syms


def _banner_checks(image: bytes, loads: list[tuple[int, int, int]], syms: Symbols) -> bool:
    """``linux_banner`` points at "Linux version" in the image: the decoding is right."""
    if "linux_banner" not in syms:
        return False
    data = read_at(image, loads, syms["linux_banner"][0], 14)
    return data == b"Linux version "


def read_at(image: bytes, loads: list[tuple[int, int, int]], addr: int, size: int) -> bytes | None:
    """``size`` bytes at virtual address ``addr`` of the ELF image, None when not in the file."""
    for vaddr, off, filesz in loads:
        if vaddr <= addr and addr + size <= vaddr + filesz:
            return image[off + addr - vaddr : off + addr - vaddr + size]
    return None


def link_text(image: bytes) -> int:
    """The link-time address of ``_text``: the lowest kernel-range load address of the ELF image."""
    loads = elf_load_segments(image)
    high = [v for v, _, _ in loads if v >= 0xFFFF800000000000]
    if not high:
        raise BtfError("the ELF image has no segment in the kernel's address range")
    return min(high)
