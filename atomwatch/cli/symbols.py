"""``atomwatch symbols build``: make a Volatility symbol table from a kernel's BTF, for a kernel with
no debug package — from a ``linux-image-*.deb``, a ``vmlinux``/``vmlinuz`` (with an optional
System.map), or a running libvirt guest (through its QEMU guest agent).

The table goes to ``--symbols`` (default: the first of the introspection's symbol directories,
``$ATOMWATCH_SYMBOLS`` or /var/lib/atomwatch/symbols), named by the kernel banner; a table already
there for that banner is kept unless ``--force``. The work lives in
:mod:`atomwatch.introspection.symbols`; this module only parses and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="symbols_command", metavar="SUBCOMMAND")
    b = sub.add_parser("build", help="build a symbol table (ISF) from a kernel's BTF")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--deb", type=Path, help="a Debian linux-image-*.deb")
    src.add_argument("--vmlinux", type=Path, help="a vmlinux (ELF) or vmlinuz (bzImage) file")
    src.add_argument("--domain", help="a running libvirt guest (name or UUID) with the QEMU guest agent")
    b.add_argument("--system-map", type=Path, help="with --vmlinux: its System.map (default: the image's kallsyms)")
    b.add_argument("--uri", default="qemu:///system", help="with --domain: libvirt URI (default qemu:///system)")
    b.add_argument("--symbols", type=Path, help="the symbol directory to write to (see above)")
    b.add_argument("--force", action="store_true", help="rebuild even if a table for the banner is there")
    b.add_argument("--json", action="store_true", help="print the result as JSON")


def _fail(msg: str) -> int:
    print(f"atomwatch symbols: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if getattr(args, "symbols_command", None) != "build":
        return _fail("give a subcommand: build (see `atomwatch symbols build --help`)")
    from atomwatch.introspection import symbols as S
    from atomwatch.introspection.volatility import DEFAULT_SYMBOL_DIRS

    if args.system_map is not None and args.vmlinux is None:
        return _fail("--system-map goes with --vmlinux")
    out = args.symbols or (Path(DEFAULT_SYMBOL_DIRS[0]) if DEFAULT_SYMBOL_DIRS else None)
    if out is None:
        return _fail("no symbol directory: give --symbols DIR")
    if out.exists() and not out.is_dir():
        return _fail(f"--symbols {out} is a file, not a directory")
    try:
        if args.deb is not None:
            built = S.build_from_deb(args.deb)
        elif args.vmlinux is not None:
            if not args.vmlinux.is_file():
                return _fail(f"--vmlinux {args.vmlinux}: no such file")
            smap = None
            if args.system_map is not None:
                if not args.system_map.is_file():
                    return _fail(f"--system-map {args.system_map}: no such file")
                smap = args.system_map.read_text(errors="replace")
            built = S.build_from_vmlinux(args.vmlinux.read_bytes(), smap, what=str(args.vmlinux))
        else:
            built = _from_domain(args, S, out)
    except S.BuildError as e:
        return _fail(str(e))
    if not built.cached:
        done = S.cached(out, built.banner)
        if done is not None and not args.force:
            built.path, built.cached = done, True
        else:
            S.store(built, out)
    result = {
        "banner": built.banner,
        "path": str(built.path),
        "cached": built.cached,
        "bytes": built.path.stat().st_size if built.path else None,
        "timings": built.timings,
        **built.report,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        state = "kept (already built for this banner)" if built.cached else "written"
        print(f"{built.path}: {state}")
        print(f"  banner: {built.banner}")
        if built.report:
            print(
                f"  {built.report['user_types']} types, {built.report['enums']} enums, {built.report['symbols']} symbols "
                f"({built.report['typed_symbols']} typed) in {built.timings.get('total', 0):.1f} s"
            )
        for u in built.report.get("untyped", []):
            print(f"  untyped (not in this kernel's BTF): {u}")
    return 0


def _from_domain(args: argparse.Namespace, S, out: Path):  # noqa: N803 (the module, passed in)
    try:
        import libvirt  # type: ignore[import-not-found]
    except ImportError:
        raise S.BuildError("--domain needs libvirt-python") from None
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open(args.uri)
    except libvirt.libvirtError as e:
        raise S.BuildError(f"libvirt {args.uri}: {e.get_error_message()}") from None
    try:
        try:
            dom = conn.lookupByName(args.domain)
        except libvirt.libvirtError:
            try:
                dom = conn.lookupByUUIDString(args.domain)
            except libvirt.libvirtError:
                raise S.BuildError(f"--domain {args.domain}: no such domain at {args.uri}") from None
        if not dom.isActive():
            raise S.BuildError(f"--domain {args.domain}: not running")
        if not args.force:  # its banner first: a table already built is not read again
            banner = S.guest_banner(dom)
            done = S.cached(out, banner)
            if done is not None:
                return S.Built(banner, {}, {}, path=done, cached=True)
        return S.build_from_guest(dom)
    finally:
        conn.close()
