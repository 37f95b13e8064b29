"""Symbol tables from BTF: the parser on the lab kernel's real ``.BTF``, its kallsyms, the ISF
against the dwarf2json table of the same kernel, ``atomwatch symbols build``, and — on a real TCG
guest, one dump — Volatility giving the same rows with both tables.

The lab kernel package is unpacked once per session (``dpkg-deb -x``) and its lz4 bzImage
decompressed with the ``lz4`` tool, as the builder does.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LAB_ASSETS, ROOT, have_module, require

DEB = LAB_ASSETS / "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
DWARF_ISF = LAB_ASSETS / "symbols" / "linux" / "linux-6.1.0-56-cloud-amd64.json.xz"
BANNER_END = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)"

#: the structures Volatility's process, module, socket and memory-map plugins walk
STRUCTS = [
    "task_struct",
    "mm_struct",
    "list_head",
    "hlist_node",
    "file",
    "files_struct",
    "fdtable",
    "path",
    "dentry",
    "qstr",
    "inode",
    "vfsmount",
    "mount",
    "sock",
    "sock_common",
    "socket",
    "inet_sock",
    "unix_sock",
    "netlink_sock",
    "module",
    "module_layout",
    "mod_tree_root",
    "kobject",
    "vm_area_struct",
    "maple_tree",
    "maple_node",
    "cred",
    "pid",
    "upid",
    "pid_namespace",
    "nsproxy",
    "net",
    "signal_struct",
    "timekeeper",
    "seqcount_raw_spinlock_t",
    "pgd_t",
    "spinlock_t",
    "kuid_t",
]


@pytest.fixture(scope="session")
def vmlinux(tmp_path_factory) -> bytes:
    require(DEB.is_file(), f"the lab kernel package is missing: {DEB}")
    require(shutil.which("dpkg-deb") is not None, "dpkg-deb is not installed")
    require(shutil.which("lz4") is not None, "the lz4 tool is not installed (.ci/setup)")
    from atomwatch.introspection import btf

    d = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", str(DEB), str(d)], check=True)
    (vmlinuz,) = (d / "boot").glob("vmlinuz-*")
    return btf.vmlinux_from_bzimage(vmlinuz.read_bytes(), vmlinuz.name)


@pytest.fixture(scope="session")
def types(vmlinux):
    from atomwatch.introspection import btf

    return btf.parse(btf.elf_section(vmlinux, ".BTF"), ".BTF")


@pytest.fixture(scope="session")
def dwarf():
    require(DWARF_ISF.is_file(), f"the dwarf2json table is missing: {DWARF_ISF}")
    with lzma.open(DWARF_ISF) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def built(vmlinux):
    from atomwatch.introspection import symbols

    return symbols.build_from_vmlinux(vmlinux, what="lab vmlinux")


def test_parser_reads_the_lab_kernels_btf(types):
    from atomwatch.introspection import btf

    counts = types.counts()
    assert counts["struct"] > 5000 and counts["enum"] > 1000 and counts["func"] > 10000
    (tid,) = types.by_name("task_struct", (btf.STRUCT,))
    task = types[tid]
    assert task.size == 9728
    comm = next(m for m in task.members if m.name == "comm")
    assert comm.bit_offset % 8 == 0 and types[comm.type].kind == btf.ARRAY and types[comm.type].nelems == 16
    (lh,) = types.by_name("list_head", (btf.STRUCT,))
    assert [(m.name, m.bit_offset) for m in types[lh].members] == [("next", 0), ("prev", 64)]
    (ms,) = types.by_name("module_state", (btf.ENUM,))
    assert dict(types[ms].values)["MODULE_STATE_LIVE"] == 0
    # the only variables BTF types are per-CPU ones
    (sec,) = [t for t in types.types if t.kind == btf.DATASEC]
    assert sec.name == ".data..percpu"
    assert "current_task" in {types[v].name for v, _, _ in sec.vars}


def test_parser_refuses_what_is_not_btf_by_name(types):
    from atomwatch.introspection import btf

    with pytest.raises(btf.BtfError, match=r"^x\.bin: no BTF magic"):
        btf.parse(b"\0" * 64, "x.bin")
    header = (0xEB9F).to_bytes(2, "little") + bytes([1, 0]) + (24).to_bytes(4, "little")
    bad = header + (0).to_bytes(4, "little") + (1 << 20).to_bytes(4, "little") + bytes(8)
    with pytest.raises(btf.BtfError, match=r"^cut: sections run past the end"):
        btf.parse(bad, "cut")
    with pytest.raises(btf.BtfError, match=r"neither an ELF file nor an x86 bzImage"):
        btf.vmlinux_from_bzimage(b"hello" * 200, "notakernel")


def test_kallsyms_from_the_image_give_dwarf2json_addresses(vmlinux, dwarf):
    from atomwatch.introspection import kallsyms

    syms = kallsyms.from_vmlinux(vmlinux)
    d = dwarf["symbols"]
    for name in (
        "init_task",
        "linux_banner",
        "modules",
        "init_top_pgt",
        "_text",
        "mod_tree",
        "init_net",
        "net_namespace_list",
        "tk_core",
        "current_task",
        "runqueues",
        "socket_file_ops",
    ):
        assert syms[name][0] == d[name]["address"], name
    shared = [n for n in syms if n in d]
    same = sum(syms[n][0] == d[n]["address"] for n in shared)
    assert len(shared) > 80000 and same / len(shared) > 0.98  # the rest: same-named static symbols


def test_system_map_placeholder_and_running_kallsyms(vmlinux):
    from atomwatch.introspection import kallsyms

    with pytest.raises(kallsyms.SymbolsError, match="Debian's placeholder"):
        kallsyms.parse_system_map(
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
        )
    with pytest.raises(kallsyms.SymbolsError, match=r"^my.map: no '_text' symbol"):
        kallsyms.parse_system_map("hello\n", "my.map")
    # a running kernel's list is shifted by KASLR; per-CPU offsets and modules' symbols are not kernel image addresses
    syms = kallsyms.from_vmlinux(vmlinux)
    shift = 0x2A400000
    lines = []
    for name in ("_text", "init_task", "linux_banner", "current_task"):
        addr, kind = syms[name]
        lines.append(f"{addr + (shift if addr >= kallsyms.DEFAULT_TEXT else 0):016x} {kind} {name}")
    lines.append("ffffffffc0123000 t virtio_dev_probe\t[virtio]")
    back = kallsyms.parse_proc_kallsyms("\n".join(lines))
    assert {n: a for n, (a, _) in back.items()} == {
        n: syms[n][0] for n in ("_text", "init_task", "linux_banner", "current_task")
    }
    with pytest.raises(kallsyms.SymbolsError, match="kptr_restrict"):
        kallsyms.parse_proc_kallsyms("0000000000000000 T _text\n0000000000000000 D init_task\n")


def _shape(ty: dict, isf: dict, depth: int = 0):
    """A type descriptor with names of structs/enums replaced by their layout (names of anonymous
    types and typedef aliases differ between the two producers, layouts must not)."""
    k = ty["kind"]
    if k in ("struct", "union"):
        u = isf["user_types"].get(ty["name"])
        if u is None:
            return (k, ty["name"], None)
        return (
            k,
            u["size"],
            tuple(sorted((f, v["offset"]) for f, v in u["fields"].items() if not f.startswith("unnamed_field"))),
        )
    if k == "enum":
        e = isf["enums"][ty["name"]]
        return (k, e["size"], tuple(sorted(e["constants"])))
    if k == "pointer":
        return ("pointer", _shape(ty["subtype"], isf, depth + 1) if depth < 2 else ty["subtype"]["kind"])
    if k == "array":
        return ("array", ty["count"], _shape(ty["subtype"], isf, depth))
    if k == "bitfield":
        return ("bitfield", ty["bit_length"], ty["bit_position"], _shape(ty["type"], isf, depth))
    return (k, ty.get("name"))


def _flat(name: str, isf: dict, base: int = 0) -> dict:
    """A struct's fields with anonymous members folded in, as Volatility sees them."""
    out = {}
    for f, v in isf["user_types"][name]["fields"].items():
        if v.get("anonymous"):
            out.update(_flat(v["type"]["name"], isf, base + v["offset"]))
        else:
            out[f] = dict(v, offset=base + v["offset"])
    return out


def test_isf_from_btf_matches_dwarf2json_where_volatility_reads(built, dwarf):
    mine = built.isf
    assert mine["base_types"] == dwarf["base_types"]
    checked = 0
    for name in STRUCTS:
        a, b = dwarf["user_types"][name], mine["user_types"][name]
        assert (b["kind"], b["size"]) == (a["kind"], a["size"]), name
        fa, fb = _flat(name, dwarf), _flat(name, mine)
        assert set(fb) == set(fa), name
        for f in fa:
            assert fb[f]["offset"] == fa[f]["offset"], f"{name}.{f}"
            assert _shape(fb[f]["type"], mine) == _shape(fa[f]["type"], dwarf), f"{name}.{f}"
            checked += 1
    assert checked > 500
    # every struct both have: same size (BTF keeps a few same-named layouts of different files)
    same = [n for n in dwarf["user_types"] if not n.startswith("unnamed_") and n in mine["user_types"]]
    differ = [n for n in same if mine["user_types"][n]["size"] != dwarf["user_types"][n]["size"]]
    assert len(same) > 7500 and len(differ) < 10, differ
    # the symbols Volatility reads typed have dwarf2json's types
    for name in (
        "init_task",
        "modules",
        "init_top_pgt",
        "linux_banner",
        "mod_tree",
        "net_namespace_list",
        "socket_file_ops",
        "tk_core",
        "current_task",
        "runqueues",
        "prb",
        "cap_last_cap",
        "idt_table",
        "taint_flags",
        "registered_fb",
        "__per_cpu_offset",
    ):
        assert _shape(mine["symbols"][name]["type"], mine) == _shape(dwarf["symbols"][name]["type"], dwarf), name
    assert mine["symbols"]["linux_banner"]["constant_data"] == dwarf["symbols"]["linux_banner"]["constant_data"]
    assert built.report["untyped"] == []


def _atomwatch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomwatch", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def test_cli_builds_a_table_once_per_banner(tmp_path, vmlinux):
    out = tmp_path / "symbols"
    r = _atomwatch("symbols", "build", "--deb", str(DEB), "--symbols", str(out), "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["banner"].endswith(BANNER_END) and not first["cached"]
    path = Path(first["path"])
    assert path.parent == out / "linux" and path.name.startswith("btf-6.1.0-56-cloud-amd64-")
    mtime = path.stat().st_mtime_ns
    r = _atomwatch("symbols", "build", "--deb", str(DEB), "--symbols", str(out))
    assert r.returncode == 0 and "kept (already built for this banner)" in r.stdout
    assert path.stat().st_mtime_ns == mtime
    # a vmlinux given as a file: same banner, so the same table
    (tmp_path / "vmlinux").write_bytes(vmlinux)
    r = _atomwatch("symbols", "build", "--vmlinux", str(tmp_path / "vmlinux"), "--symbols", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vmlinux", "/nonexistent"], "--vmlinux /nonexistent: no such file"),
        (["--vmlinux", "/etc/hostname"], "neither an ELF file nor an x86 bzImage"),
        (["--deb", "/etc/hostname"], "not a Debian package dpkg-deb can unpack"),
        (["--deb", str(DEB), "--system-map", "/etc/hostname"], "--system-map goes with --vmlinux"),
    ],
)
def test_cli_bad_input_is_named_without_a_traceback(tmp_path, args, message):
    r = _atomwatch("symbols", "build", *args, "--symbols", str(tmp_path))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_names_a_truncated_kernel_and_one_without_btf(tmp_path, vmlinux):
    cut = tmp_path / "vmlinux-cut"
    cut.write_bytes(vmlinux[:100_000])
    r = _atomwatch("symbols", "build", "--vmlinux", str(cut), "--symbols", str(tmp_path))
    assert r.returncode == 2 and "truncated or malformed ELF file" in r.stderr and "Traceback" not in r.stderr
    r = _atomwatch("symbols", "build", "--vmlinux", sys.executable, "--symbols", str(tmp_path))
    assert r.returncode == 2 and "no .BTF section" in r.stderr and "Traceback" not in r.stderr


# --- on a real guest ----------------------------------------------------------------------------

PLUGINS = ["linux.pslist", "linux.lsmod", "linux.sockstat", "linux.proc.Maps"]


@pytest.mark.lab
def test_volatility_gives_the_same_rows_with_the_btf_table(tmp_path_factory, vmlinux):
    require(have_module("libvirt"), "libvirt-python is not installed (.ci/lab-setup.sh)")
    require(have_module("volatility3"), "volatility3 is not installed (pip install volatility3 pefile)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    from atomwatch.introspection import acquire, symbols
    from atomwatch.introspection.volatility import VolatilityConfig, analyse
    from atomwatch.lab import workloads
    from atomwatch.lab.domains import LabError
    from atomwatch.lab.private_guest import boot_private_guest, destroy_private_guest

    work = tmp_path_factory.mktemp("btf-lab")
    tag = f"btf{os.getpid()}"
    try:
        conn, dom = boot_private_guest(work / "guest", tag=tag)
    except LabError as e:
        require(False, f"cannot boot a lab guest: {e}")
    try:
        # the table of the running guest, read through its guest agent, and the one of the package
        from_guest = symbols.build_from_guest(dom)
        from_deb = symbols.build_from_deb(DEB)
        assert from_guest.banner == from_deb.banner and from_deb.banner.endswith(BANNER_END)
        deb_dir, guest_dir = work / "btf-deb", work / "btf-guest"
        symbols.store(from_deb, deb_dir)
        symbols.store(from_guest, guest_dir)
        # sockets to list: a local web server and a bot hammering it
        workloads.start(dom, "httpd")
        workloads.start(dom, "ddos-bot", ["http://127.0.0.1/", "4"])
        time.sleep(3)
        dump = acquire.dump_memory(conn, dom.name(), root=work / "dumps", keep=True)
    finally:
        destroy_private_guest(conn, tag)

    def run(symbol_dir: Path, plugins: list[str]):
        cfg = VolatilityConfig(
            symbol_dirs=[str(symbol_dir)], cache_dir=str(work / f"cache-{symbol_dir.name}"), timeout=600
        )
        return analyse(dump.path, plugins, cfg)

    dwarf_run = run(LAB_ASSETS / "symbols", PLUGINS)
    btf_run = run(deb_dir, PLUGINS)
    assert btf_run.banner == dwarf_run.banner
    for plugin in PLUGINS:
        assert not btf_run.plugins[plugin].get("error"), (plugin, btf_run.plugins[plugin].get("error"))
        assert dwarf_run.rows(plugin), plugin
        assert btf_run.rows(plugin) == dwarf_run.rows(plugin), plugin
    assert btf_run.tasks == dwarf_run.tasks
    pids = {r["PID"] for r in btf_run.rows("linux.pslist")}
    assert 1 in pids and len(pids) > 20
    assert any(r.get("Source Port") == "80" and r.get("State") == "LISTEN" for r in btf_run.rows("linux.sockstat"))
    guest_run = run(guest_dir, ["linux.pslist"])
    assert guest_run.rows("linux.pslist") == dwarf_run.rows("linux.pslist")
    dump.path.unlink()


def test_volatility_reads_the_btf_table_as_the_dwarf2json_one(built, tmp_path):
    """Volatility's own loader (no memory image needed): the same sizes, offsets (anonymous members
    folded in) and symbol types for what its plugins ask for."""
    require(have_module("volatility3"), "volatility3 is not installed (pip install volatility3 pefile)")
    from atomwatch.introspection import symbols

    path = symbols.store(built, tmp_path / "btf")
    script = f"""
import json, sys
sys.modules["jsonschema"] = None
import volatility3.plugins
from volatility3 import framework
framework.import_files(volatility3.plugins, True)
from volatility3.framework import contexts
from volatility3.framework.symbols import linux
ctx = contexts.Context()
out = {{}}
for name, path in (("btf", {str(path)!r}), ("dwarf", {str(DWARF_ISF)!r})):
    t = linux.LinuxKernelIntermedSymbols(ctx, "c" + name, name, "file://" + path)
    ctx.symbol_space.append(t)
    task = t.get_type("task_struct")
    tk = ctx.symbol_space.get_type(t.get_symbol("tk_core").type.vol.type_name)
    out[name] = {{
        "task_size": task.size,
        "offsets": [task.relative_child_offset(m) for m in ("rcu_users", "comm", "tasks", "pid", "tgid", "mm", "real_parent")],
        "init_task": t.get_symbol("init_task").type.vol.type_name.split("!")[1],
        "modules": t.get_symbol("modules").type.vol.type_name.split("!")[1],
        "tk_core": sorted(tk.vol.members),
        "sock_common": t.get_type("sock").relative_child_offset("__sk_common"),
        "skc_family": t.get_type("sock_common").relative_child_offset("skc_family"),
    }}
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["btf"] == got["dwarf"]
    assert got["btf"]["init_task"] == "task_struct" and got["btf"]["tk_core"] == ["seq", "timekeeper"]
