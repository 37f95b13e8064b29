"""A Volatility 3 symbol table (ISF) made from a kernel's BTF and its symbol addresses.

:func:`build_isf` writes the same shapes dwarf2json writes, so Volatility's Linux plugins read it
unchanged: ``base_types`` from BTF integers and floats, ``user_types`` from structs and unions
(members with byte offsets, bitfields as byte offset + bit position, anonymous members as
``unnamed_field_N`` with ``"anonymous": true``, which Volatility folds into the parent), a
typedef of a struct, union or enum gives a copy under the typedef's name (``pgd_t``,
``spinlock_t``), anonymous types are named ``unnamed_`` + a hash of their layout; ``enums``;
``symbols`` with link-time addresses.

BTF types only per-CPU variables. The global variables whose type Volatility's Linux plugins
need are typed from :data:`SYMBOL_TYPES`, a short table written from those plugins' use; each
entry is checked against the BTF at build time and left untyped (reported) when its type is not
there. docs/introspection.md says which and why.

What does not live here: reading BTF (:mod:`atomwatch.introspection.btf`), addresses
(:mod:`atomwatch.introspection.kallsyms`), where tables are kept (:mod:`atomwatch.introspection.symbols`).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
from collections.abc import Callable
from typing import Any

from atomwatch.introspection import btf as B

FORMAT = "6.2.0"
PRODUCER = {"name": "atomwatch-btf", "version": "1.0.0"}

#: The global variables Volatility 3's Linux plugins read as typed objects (``object_from_symbol``
#: and the stacker), with their C types; ``[]`` is an array of unknown length (count 0), ``[?]``
#: an array whose length is the gap to the next symbol (or, for those in :data:`ELEMENT_CHECKS`,
#: the run of valid elements read from the kernel's memory), ``struct {a, b}`` the anonymous struct
#: with exactly those members. Symbols absent from a kernel are skipped.
SYMBOL_TYPES: dict[str, str] = {
    "init_task": "struct task_struct",
    "linux_banner": "char[]",
    "init_top_pgt": "struct pgd_t[]",
    "init_level4_pgt": "struct pgd_t[]",
    "swapper_pg_dir": "struct pgd_t[]",
    "_text": "char[]",
    "_stext": "char[]",
    "_etext": "char[]",
    "_end": "char[]",
    "_sinittext": "char[]",
    "_einittext": "char[]",
    "modules": "struct list_head",
    "mod_tree": "struct mod_tree_root",
    "module_kset": "struct kset *",
    "module_addr_min": "long unsigned int",
    "module_addr_max": "long unsigned int",
    "init_mm": "struct mm_struct",
    "init_files": "struct files_struct",
    "init_pid_ns": "struct pid_namespace",
    "init_net": "struct net",
    "net_namespace_list": "struct list_head",
    "socket_file_ops": "struct file_operations",
    "sockfs_dentry_operations": "struct dentry_operations",
    "cap_last_cap": "int",
    "prb": "struct printk_ringbuffer *",
    "log_buf": "char *",
    "log_buf_len": "unsigned int",
    "log_first_idx": "unsigned int",
    "log_next_idx": "unsigned int",
    "tk_core": "struct {seq, timekeeper}",
    "timekeeper": "struct timekeeper",
    "vmemmap_base": "long unsigned int",
    "page_offset_base": "long unsigned int",
    "mem_section": "struct mem_section **",
    "mem_map": "struct page *",
    "node_data": "struct pg_data_t *[]",
    "tty_drivers": "struct list_head",
    "keyboard_notifier_list": "struct atomic_notifier_head",
    "idt_table": "struct gate_desc[?]",
    "sys_call_table": "function *[]",
    "ia32_sys_call_table": "function *[]",
    "iomem_resource": "struct resource",
    "taint_flags": "struct taint_flag[?]",
    "registered_fb": "struct fb_info *[?]",
    "num_registered_fb": "int",
    "prog_idr": "struct idr",
    "bpf_kallsyms": "struct list_head",
    "nf_hooks": "struct list_head[?]",
    "ftrace_ops_list": "struct ftrace_ops *",
    "ftrace_list_end": "struct ftrace_ops",
    "ftrace_mod_maps": "struct list_head",
    "ftrace_ops_trampoline_list": "struct list_head",
    "__start___tracepoints_ptrs": "int[]",
    "__per_cpu_offset": "long unsigned int[?]",
    "height_to_maxindex": "long unsigned int[?]",
    "height_to_maxnodes": "long unsigned int[?]",
}


def _taint_flag_ok(b: bytes) -> bool:
    """``struct taint_flag {char c_true; char c_false; bool module;}``: a letter, a letter or space, 0/1."""
    return len(b) == 3 and 65 <= b[0] <= 90 and (b[1] == 32 or 65 <= b[1] <= 90) and b[2] in (0, 1)


#: ``[?]`` arrays whose gap to the next symbol is no bound (constant data followed by unnamed
#: strings): their length is the number of valid elements, read from the kernel's memory
#: (``TAINT_FLAGS_COUNT`` is a macro, in no BTF type)
ELEMENT_CHECKS: dict[str, Callable[[bytes], bool]] = {"taint_flags": _taint_flag_ok}

#: reads ``size`` bytes at a link-time kernel address; None where it cannot
Reader = Callable[[int, int], "bytes | None"]


class IsfError(ValueError):
    """The BTF or the symbols cannot make a table; the text says why."""


def _base_name(t: B.BtfType) -> str:
    return t.name or f"int{t.size * 8}"


class _Writer:
    def __init__(self, btf: B.Btf):
        self.btf = btf
        self.names: dict[int, str] = {}  # struct/union/enum type id → ISF name
        self.base_types: dict[str, Any] = {}
        self.user_types: dict[str, Any] = {}
        self.enums: dict[str, Any] = {}
        self.endian = btf.endian
        self._taken: set[str] = set()
        #: typedef names claimed for a copy of their struct/union, filled once the structs are done
        self._pending_aliases: list[tuple[str, int]] = []

    # -- naming ---------------------------------------------------------------------------------
    def name_types(self) -> None:
        types = self.btf.types
        for tid, t in enumerate(types):
            if t.kind in (B.STRUCT, B.UNION, B.ENUM, B.ENUM64) and t.name:
                self.names[tid] = t.name
        for tid, t in enumerate(types):
            if t.kind in (B.STRUCT, B.UNION, B.ENUM, B.ENUM64) and not t.name:
                name = "unnamed_" + self._layout_hash(tid)
                salt = 0
                while name in self._taken:
                    salt += 1
                    name = "unnamed_" + self._layout_hash(tid, salt)
                self._taken.add(name)
                self.names[tid] = name

    def _layout_hash(self, tid: int, salt: int = 0) -> str:
        t = self.btf[tid]
        desc: list[Any] = [t.kind, t.size, salt]
        for m in t.members:
            mt = self.btf[self._skip(m.type)]
            desc.append((m.name, m.bit_offset, m.bitfield_size, mt.kind, mt.name))
        desc.extend(t.values)
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]

    def _skip(self, tid: int) -> int:
        """Through const, volatile, restrict and type tags."""
        types = self.btf.types
        while types[tid].kind in (B.CONST, B.VOLATILE, B.RESTRICT, B.TYPE_TAG):
            tid = types[tid].type
        return tid

    def _typedef_target(self, tid: int) -> int:
        """Through typedefs and qualifiers."""
        types = self.btf.types
        while types[tid].kind in (B.TYPEDEF, B.CONST, B.VOLATILE, B.RESTRICT, B.TYPE_TAG):
            tid = types[tid].type
        return tid

    # -- references -----------------------------------------------------------------------------
    def ref(self, tid: int) -> dict[str, Any]:
        tid = self._skip(tid)
        t = self.btf[tid]
        k = t.kind
        if k == 0:
            return {"kind": "base", "name": "void"}
        if k in (B.INT, B.FLOAT):
            return {"kind": "base", "name": _base_name(t)}
        if k == B.PTR:
            return {"kind": "pointer", "subtype": self.ref(t.type)}
        if k == B.ARRAY:
            return {"count": t.nelems, "kind": "array", "subtype": self.ref(t.type)}
        if k in (B.STRUCT, B.UNION):
            return {"kind": "struct" if k == B.STRUCT else "union", "name": self.names[tid]}
        if k in (B.ENUM, B.ENUM64):
            return {"kind": "enum", "name": self.names[tid]}
        if k == B.FWD:
            return {"kind": "union" if t.kind_flag else "struct", "name": t.name}
        if k == B.TYPEDEF:
            target = self._typedef_target(tid)
            tt = self.btf[target]
            if tt.kind in (B.STRUCT, B.UNION):
                self._alias(t.name, target)
                return {"kind": "struct" if tt.kind == B.STRUCT else "union", "name": t.name}
            if tt.kind in (B.ENUM, B.ENUM64):
                self._alias(t.name, target)
                return {"kind": "enum", "name": t.name}
            return self.ref(t.type)
        if k in (B.FUNC, B.FUNC_PROTO):
            return {"kind": "function"}
        raise IsfError(f"BTF type {tid} ({t.kind_name} {t.name!r}) cannot be referenced")

    def _alias(self, name: str, target: int) -> None:
        """A typedef's own entry, a copy of what it names (as dwarf2json writes them)."""
        tt = self.btf[target]
        if tt.kind in (B.ENUM, B.ENUM64):
            if name not in self.enums:
                self.enums[name] = self._enum(tt)
        elif name not in self.user_types:
            self.user_types[name] = None  # claimed; filled after the named types
            self._pending_aliases.append((name, target))

    # -- definitions ----------------------------------------------------------------------------
    def _enum(self, t: B.BtfType) -> dict[str, Any]:
        signed = t.kind_flag or any(v < 0 for _, v in t.values)
        base = {
            1: ("signed char", "unsigned char"),
            2: ("short int", "short unsigned int"),
            4: ("int", "unsigned int"),
            8: ("long int", "long unsigned int"),
        }.get(t.size, ("int", "unsigned int"))[0 if signed else 1]
        self._need_base(base, t.size, signed)
        return {"size": t.size, "base": base, "constants": dict(t.values)}

    def _need_base(self, name: str, size: int, signed: bool) -> None:
        if name not in self.base_types:
            self.base_types[name] = {"size": size, "signed": signed, "kind": "int", "endian": self.endian}

    def _fields(self, t: B.BtfType) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        anon = 0
        for m in t.members:
            if m.bitfield_size:
                inner = self.ref(m.type)
                fields[m.name or f"unnamed_field_{anon}"] = {
                    "type": {
                        "bit_length": m.bitfield_size,
                        "bit_position": m.bit_offset % 8,
                        "kind": "bitfield",
                        "type": inner,
                    },
                    "offset": m.bit_offset // 8,
                }
                if not m.name:
                    anon += 1
                continue
            entry: dict[str, Any] = {"type": self.ref(m.type), "offset": m.bit_offset // 8}
            if m.name:
                fields[m.name] = entry
            else:
                entry["anonymous"] = True
                fields[f"unnamed_field_{anon}"] = entry
                anon += 1
        return fields

    def _user_type(self, t: B.BtfType) -> dict[str, Any]:
        return {"size": t.size, "fields": self._fields(t), "kind": "struct" if t.kind == B.STRUCT else "union"}

    def build_types(self) -> None:
        self.base_types["pointer"] = {"size": 8, "signed": False, "kind": "int", "endian": self.endian}
        self.base_types["void"] = {"size": 0, "signed": False, "kind": "void", "endian": self.endian}
        for t in self.btf.types[1:]:
            if t.kind == B.INT:
                if t.encoding & B.INT_BOOL:
                    kind = "bool"
                elif t.encoding & B.INT_CHAR or t.name in ("char", "signed char", "unsigned char"):
                    kind = "char"
                else:
                    kind = "int"
                signed = bool(t.encoding & B.INT_SIGNED) or kind == "bool"
                self.base_types[_base_name(t)] = {"size": t.size, "signed": signed, "kind": kind, "endian": self.endian}
            elif t.kind == B.FLOAT:
                self.base_types[t.name] = {"size": t.size, "signed": True, "kind": "float", "endian": self.endian}
        types = self.btf.types
        # the first complete definition of a name wins (BTF may keep a few same-named layouts)
        chosen: dict[str, int] = {}
        for tid, t in enumerate(types):
            if t.kind in (B.STRUCT, B.UNION):
                name = self.names[tid]
                prev = chosen.get(name)
                if prev is None or (not types[prev].members and t.members):
                    chosen[name] = tid
        for name, tid in chosen.items():
            self.user_types[name] = self._user_type(types[tid])
        for tid, t in enumerate(types):
            if t.kind in (B.ENUM, B.ENUM64) and self.names[tid] not in self.enums:
                self.enums[self.names[tid]] = self._enum(t)
        # every typedef of a struct/union/enum gets its copy, referenced or not (plugins name them)
        for t in types:
            if t.kind == B.TYPEDEF and t.name:
                self._alias_typedef(t)
        while self._pending_aliases:
            name, target = self._pending_aliases.pop()
            if self.user_types.get(name) is None:
                self.user_types[name] = self._user_type(types[target])

    def _alias_typedef(self, t: B.BtfType) -> None:
        target = self._typedef_target(t.type)
        if self.btf[target].kind in (B.STRUCT, B.UNION, B.ENUM, B.ENUM64):
            self._alias(t.name, target)

    # -- symbol types ---------------------------------------------------------------------------
    def percpu_types(self) -> dict[str, dict[str, Any]]:
        out = {}
        for t in self.btf.types:
            if t.kind == B.DATASEC:
                for var_id, _off, _size in t.vars:
                    v = self.btf[var_id]
                    if v.kind == B.VAR and v.name:
                        out[v.name] = self.ref(v.type)
        return out

    def type_from_c(self, decl: str, gap: int | None, count_of=None) -> dict[str, Any] | None:
        """An ISF type for a :data:`SYMBOL_TYPES` declaration; None if this BTF lacks it."""
        decl = decl.strip()
        array = None
        if decl.endswith("]"):
            decl, _, dim = decl[:-1].rpartition("[")
            array = dim.strip()
        base_decl = decl.rstrip(" *").strip()
        pointers = decl[len(base_decl) :].count("*")
        if base_decl.startswith("struct {"):
            members = [m.strip() for m in base_decl[len("struct {") : -1].split(",")]
            found = [
                tid
                for tid, t in enumerate(self.btf.types)
                if t.kind == B.STRUCT and not t.name and [m.name for m in t.members] == members
            ]
            if len(found) != 1:
                return None
            ty: dict[str, Any] = {"kind": "struct", "name": self.names[found[0]]}
        elif base_decl.startswith("struct "):
            name = base_decl[len("struct ") :]
            if name not in self.user_types:
                return None
            ty = {"kind": self.user_types[name]["kind"], "name": name}
        elif base_decl == "function":
            ty = {"kind": "function"}
        else:
            if base_decl not in self.base_types:
                return None
            ty = {"kind": "base", "name": base_decl}
        for _ in range(pointers):
            ty = {"kind": "pointer", "subtype": ty}
        if array is not None:
            count = 0
            if array == "?" and count_of is not None:
                count = count_of(self.size_of(ty))
            elif array == "?" and gap:
                size = self.size_of(ty)
                count = gap // size if size else 0
            elif array not in ("", "?"):
                count = int(array)
            ty = {"count": count, "kind": "array", "subtype": ty}
        return ty

    def size_of(self, ty: dict[str, Any]) -> int:
        k = ty["kind"]
        if k == "pointer":
            return 8
        if k == "base":
            return self.base_types[ty["name"]]["size"]
        if k in ("struct", "union"):
            return self.user_types[ty["name"]]["size"]
        if k == "enum":
            return self.enums[ty["name"]]["size"]
        if k == "array":
            return ty["count"] * self.size_of(ty["subtype"])
        return 0


def _element_counter(read: Reader, addr: int, gap: int | None, ok: Callable[[bytes], bool]):
    def count(size: int) -> int:
        limit = (gap or 4096) // size if size else 0
        data = read(addr, size * limit) or b""
        n = 0
        while n < limit and ok(data[n * size : (n + 1) * size]):
            n += 1
        return n

    return count


def build_isf(
    btf: B.Btf,
    symbols: dict[str, tuple[int, str]],
    banner: bytes,
    sources: dict[str, Any] | None = None,
    read: Reader | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ISF (a dict ready for JSON) and a report: counts, typed symbols, and the
    :data:`SYMBOL_TYPES` entries left untyped (their type is not in this kernel's BTF).
    ``banner`` is the ``linux_banner`` text as the kernel holds it (ending ``\\n``); ``read``
    gives the kernel's bytes for the :data:`ELEMENT_CHECKS` arrays (without it, such an array is
    left untyped: a wrong length would give wrong rows)."""
    if "linux_banner" not in symbols:
        raise IsfError("the symbols have no 'linux_banner': Volatility could not match the table to a memory image")
    w = _Writer(btf)
    w.name_types()
    w.build_types()
    percpu = w.percpu_types()
    addrs = sorted({a for a, _ in symbols.values()})
    out_syms: dict[str, Any] = {}
    for name, (addr, _kind) in symbols.items():
        out_syms[name] = {"address": addr}
    typed, untyped = [], []
    for name, ty in percpu.items():
        if name in out_syms:
            out_syms[name]["type"] = ty
            typed.append(name)
    for name, decl in SYMBOL_TYPES.items():
        if name not in out_syms:
            continue
        addr = out_syms[name]["address"]
        i = bisect.bisect_right(addrs, addr)
        gap = addrs[i] - addr if i < len(addrs) else None
        count_of = None
        if name in ELEMENT_CHECKS:
            if read is None:
                untyped.append(f"{name} ({decl}: no kernel memory to count its elements)")
                continue
            count_of = _element_counter(read, addr, gap, ELEMENT_CHECKS[name])
        ty = w.type_from_c(decl, gap, count_of)
        if ty is None:
            untyped.append(f"{name} ({decl})")
            continue
        out_syms[name]["type"] = ty
        typed.append(name)
    banner_bytes = banner if banner.endswith(b"\0") else banner + b"\0"
    out_syms["linux_banner"]["constant_data"] = base64.b64encode(banner_bytes).decode("ascii")
    isf = {
        "metadata": {
            "linux": {
                "symbols": [dict(s) for s in (sources or {}).get("symbols", [])],
                "types": [dict(s) for s in (sources or {}).get("types", [])],
            },
            "producer": dict(PRODUCER),
            "format": FORMAT,
        },
        "base_types": dict(sorted(w.base_types.items())),
        "user_types": dict(sorted(w.user_types.items())),
        "enums": dict(sorted(w.enums.items())),
        "symbols": dict(sorted(out_syms.items())),
    }
    report = {
        "base_types": len(w.base_types),
        "user_types": len(w.user_types),
        "enums": len(w.enums),
        "symbols": len(out_syms),
        "typed_symbols": len(typed),
        "untyped": sorted(untyped),
    }
    return isf, report
