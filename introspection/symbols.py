"""Volatility symbol tables built from a kernel's BTF, kept by banner in the symbol directory.

Three sources, one result (an ISF file Volatility finds by the kernel banner it holds):

* :func:`build_from_deb` — a ``linux-image-*.deb``: its ``vmlinuz`` is unpacked and decompressed,
  its ``.BTF`` read, its addresses taken from the package's System.map when it is a real one,
  else from the kernel's own kallsyms tables;
* :func:`build_from_vmlinux` — a ``vmlinux`` or ``vmlinuz`` file (``system_map`` optional);
* :func:`build_from_guest` — a running guest, through the QEMU guest agent:
  ``/sys/kernel/btf/vmlinux``, ``/proc/kallsyms`` (the guest agent runs as root) and ``/proc/version``.

:func:`store` writes ``linux/btf-<release>-<hash of the banner>.json.xz`` under the symbol
directory, so a second build for the same banner finds it (:func:`cached`) and does nothing.

What does not live here: the BTF reader (:mod:`atomwatch.introspection.btf`), addresses
(:mod:`atomwatch.introspection.kallsyms`), the ISF shapes (:mod:`atomwatch.introspection.isf_from_btf`).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomwatch.introspection import btf as B
from atomwatch.introspection import kallsyms
from atomwatch.introspection.isf_from_btf import IsfError, build_isf


class BuildError(ValueError):
    """A symbol table cannot be built; the text names the input and what is wrong."""


@dataclass
class Built:
    """One table: its banner, the ISF, what the build found, and its timings."""

    banner: str
    isf: dict[str, Any]
    report: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    cached: bool = False


def table_name(banner: str) -> str:
    """The file name a banner's table is kept under."""
    m = re.match(r"Linux version (\S+)", banner)
    release = re.sub(r"[^A-Za-z0-9._+-]", "_", m.group(1)) if m else "unknown"
    digest = hashlib.sha256(banner.strip().encode()).hexdigest()[:12]
    return f"btf-{release}-{digest}.json.xz"


def cached(symbol_dir: Path, banner: str) -> Path | None:
    """The table already built for this banner under ``symbol_dir``, if any."""
    p = Path(symbol_dir) / "linux" / table_name(banner)
    return p if p.is_file() else None


def store(built: Built, symbol_dir: Path, preset: int = 6) -> Path:
    """Write the table (xz) under ``symbol_dir/linux``; atomically, so a reader never sees half."""
    out_dir = Path(symbol_dir) / "linux"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / table_name(built.banner)
    t0 = time.monotonic()
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".btf-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, lzma.open(raw, "wb", preset=preset) as f:
            f.write(json.dumps(built.isf, separators=(",", ":")).encode())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    built.timings["write"] = round(time.monotonic() - t0, 3)
    built.path = path
    return path


def _banner_in_image(image: bytes, syms: kallsyms.Symbols, what: str) -> bytes:
    loads = B.elf_load_segments(image)
    addr = syms.get("linux_banner", (None, ""))[0]
    raw = kallsyms.read_at(image, loads, addr, 1024) if addr is not None else None
    if raw is None or not raw.startswith(b"Linux version "):
        raise BuildError(f"{what}: 'linux_banner' does not point at the banner: wrong symbols for this kernel?")
    return raw[: raw.index(b"\0")] if b"\0" in raw else raw


def build_from_vmlinux(
    image: bytes, system_map: str | None = None, what: str = "vmlinux", sources: dict[str, Any] | None = None
) -> Built:
    """A table from a kernel image (ELF vmlinux or bzImage) and, optionally, its System.map text."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        elf = B.vmlinux_from_bzimage(image, what)
        timings["decompress"] = round(time.monotonic() - t0, 3)
        data = B.elf_section(elf, ".BTF", what)
        if data is None:
            raise BuildError(f"{what}: no .BTF section (a kernel built without CONFIG_DEBUG_INFO_BTF)")
        t1 = time.monotonic()
        types = B.parse(data, f"{what} .BTF")
        timings["btf"] = round(time.monotonic() - t1, 3)
        t1 = time.monotonic()
        if system_map is not None:
            syms = kallsyms.parse_system_map(system_map)
        else:
            syms = kallsyms.from_vmlinux(elf, what)
        timings["symbols"] = round(time.monotonic() - t1, 3)
        banner = _banner_in_image(elf, syms, what)
        loads = B.elf_load_segments(elf)

        def read(addr: int, size: int) -> bytes | None:
            return kallsyms.read_at(elf, loads, addr, size)

        src = sources or {
            "types": [{"kind": "btf", "name": what, "hash_type": "sha256", "hash_value": _sha(image)}],
            "symbols": [{"kind": "system-map" if system_map is not None else "kallsyms", "name": what}],
        }
        return _finish(types, syms, banner, src, timings, t0, read)
    except BuildError:
        raise
    except (B.BtfError, kallsyms.SymbolsError, IsfError) as e:
        raise BuildError(str(e)) from None
    except (struct.error, IndexError):  # headers that point outside the file
        raise BuildError(f"{what}: a truncated or malformed ELF file (its headers point past its end)") from None


def _finish(
    types: B.Btf,
    syms: kallsyms.Symbols,
    banner: bytes,
    sources: dict[str, Any],
    timings: dict[str, float],
    t0: float,
    read: Any = None,
) -> Built:
    t1 = time.monotonic()
    isf, report = build_isf(types, syms, banner, sources, read)
    timings["isf"] = round(time.monotonic() - t1, 3)
    timings["total"] = round(time.monotonic() - t0, 3)
    return Built(banner.decode("utf-8", "replace").strip(), isf, report, timings)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_from_deb(deb: Path) -> Built:
    """A table from a Debian ``linux-image-*`` package (unpacked with ``dpkg-deb``)."""
    deb = Path(deb)
    if not deb.is_file():
        raise BuildError(f"{deb}: no such file")
    if shutil.which("dpkg-deb") is None:
        raise BuildError(f"{deb}: dpkg-deb is not installed (it unpacks the package)")
    with tempfile.TemporaryDirectory(prefix="atomwatch-deb-") as tmp:
        res = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BuildError(f"{deb}: not a Debian package dpkg-deb can unpack: {res.stderr.strip()[:200]}")
        boot = Path(tmp) / "boot"
        kernels = sorted(boot.glob("vmlinuz-*")) + sorted(boot.glob("vmlinux-*"))
        if not kernels:
            raise BuildError(f"{deb}: no /boot/vmlinuz-* in the package: not a kernel image package")
        kernel = kernels[0]
        release = kernel.name.split("-", 1)[1]
        smap_path = boot / f"System.map-{release}"
        smap = smap_path.read_text(errors="replace") if smap_path.is_file() else None
        if smap is not None and "The real System.map is in" in smap:
            smap = None  # Debian's placeholder: the kernel's own kallsyms it is
        image = kernel.read_bytes()
        sources = {
            "types": [
                {"kind": "btf", "name": f"{deb.name}:{kernel.name}", "hash_type": "sha256", "hash_value": _sha(image)}
            ],
            "symbols": [{"kind": "system-map" if smap else "kallsyms", "name": f"{deb.name}:{kernel.name}"}],
        }
        return build_from_vmlinux(image, smap, what=f"{deb.name}:{kernel.name}", sources=sources)


def guest_banner(dom: Any) -> str:
    """The running guest's banner (``/proc/version``): enough to see whether its table is built."""
    from atomwatch.introspection import guest_agent

    try:
        version = guest_agent.read_file(dom, "/proc/version")
    except guest_agent.GuestAgentError as e:
        raise BuildError(f"guest {dom.name()}: {e}") from None
    return version.rstrip(b"\0").decode("utf-8", "replace").strip()


def build_from_guest(dom: Any) -> Built:
    """A table for the kernel a running guest runs, read through its QEMU guest agent."""
    from atomwatch.introspection import guest_agent

    t0 = time.monotonic()
    name = dom.name()
    timings: dict[str, float] = {}
    try:
        data = guest_agent.read_file(dom, "/sys/kernel/btf/vmlinux")
        text = guest_agent.read_file(dom, "/proc/kallsyms").decode("ascii", "replace")
        version = guest_agent.read_file(dom, "/proc/version")
    except guest_agent.GuestAgentError as e:
        raise BuildError(f"guest {name}: {e}") from None
    timings["read"] = round(time.monotonic() - t0, 3)
    if not version.startswith(b"Linux version "):
        raise BuildError(f"guest {name}: /proc/version does not start 'Linux version': {version[:60]!r}")
    try:
        t1 = time.monotonic()
        types = B.parse(data, f"{name}:/sys/kernel/btf/vmlinux")
        timings["btf"] = round(time.monotonic() - t1, 3)
        syms = kallsyms.parse_proc_kallsyms(text, what=f"{name}:/proc/kallsyms")
        read = _kcore_reader(dom, text)
        sources = {
            "types": [
                {
                    "kind": "btf",
                    "name": f"{name}:/sys/kernel/btf/vmlinux",
                    "hash_type": "sha256",
                    "hash_value": _sha(data),
                }
            ],
            "symbols": [{"kind": "kallsyms", "name": f"{name}:/proc/kallsyms"}],
        }
        return _finish(types, syms, version.rstrip(b"\0"), sources, timings, t0, read)
    except (B.BtfError, kallsyms.SymbolsError, IsfError) as e:
        raise BuildError(str(e)) from None


def _kcore_reader(dom: Any, kallsyms_text: str):
    """Reads the running guest kernel's memory at link-time addresses through ``/proc/kcore`` (an
    ELF core of the kernel's address space, root only): its program headers map the running
    addresses (link-time + KASLR shift) to file offsets."""
    from atomwatch.introspection import guest_agent

    shift = kallsyms.running_text(kallsyms_text) - kallsyms.DEFAULT_TEXT
    segments: list[tuple[int, int, int]] | None = None

    def read(addr: int, size: int) -> bytes | None:
        nonlocal segments
        try:
            if segments is None:
                head = guest_agent.read_file(dom, "/proc/kcore", size=1 << 16)
                if head[:4] != b"\x7fELF":
                    return None
                phoff = struct.unpack_from("<Q", head, 0x20)[0]
                phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
                segments = []
                for i in range(phnum):
                    p_type, _f, p_off, p_vaddr, _pa, _fs, p_memsz = struct.unpack_from(
                        "<IIQQQQQ", head, phoff + i * phentsize
                    )
                    if p_type == 1:
                        segments.append((p_vaddr, p_off, p_memsz))
            live = addr + shift
            for vaddr, off, memsz in segments:
                if vaddr <= live and live + size <= vaddr + memsz:
                    return guest_agent.read_file(dom, "/proc/kcore", offset=off + live - vaddr, size=size)
        except guest_agent.GuestAgentError:
            return None
        return None

    return read
