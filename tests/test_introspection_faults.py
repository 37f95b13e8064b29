"""No leaked dumps or workers: an introspection's leftovers never outlive it, whatever kills it.

Without a guest: the sweep at agent start (planted directories, one held by a live process), the
free-space refusal (a 1 MiB tmpfs, libvirt's ``test:///default`` guest of 8 GiB), the wall-clock
limit and a cancel killing a real worker, and the worker dying with a parent killed by SIGKILL.
With a real TCG guest (lab): a real ``atomwatch agent`` process killed with SIGKILL during the
dump and during Volatility leaves no worker, and its restart leaves no dump; SIGTERM during
Volatility stops the worker and deletes the dump itself; a guest destroyed during its dump gives a
clear error and leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY, until

from tests.conftest import LAB_ASSETS, have_module, require

SYMBOLS = LAB_ASSETS / "symbols"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan may wait for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def workers_of(parent: int) -> list[int]:
    """Live Volatility workers started by process ``parent`` (by their command line), wherever reparented."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 4 and argv[-3].endswith(b"introspection/worker.py") and argv[-2] == str(parent).encode():
            if alive(int(d.name)):
                found.append(int(d.name))
    return found


def dumps_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("atomwatch-dump-*")) if directory.exists() else []


def handlers(options: dict) -> dict:
    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import BrokerAddress
    from atomwatch.plugins.introspection_commands import register_agent_commands

    config = AgentConfig(
        broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), site="s", host="h", options={"introspection": options}
    )
    return register_agent_commands(config)


async def no_progress(info):
    pass


# ----------------------------------------------------------------------------- no guest needed


def test_agent_start_sweeps_only_its_own_unheld_dumps_and_says_what_it_removed(tmp_path, caplog):
    from atomwatch.introspection import acquire

    dumps = tmp_path / "dumps"
    dumps.mkdir()

    def plant(name: str, files: dict[str, int]) -> Path:
        d = dumps / name
        d.mkdir()
        for f, size in files.items():
            (d / f).write_bytes(b"\0" * size)
        return d

    leftover = plant("atomwatch-dump-vm1-abcd1234", {"vm1.elf": 3 << 20})
    empty = plant("atomwatch-dump-vm7-x_yz9876", {})  # killed before libvirt wrote anything
    held = plant("atomwatch-dump-vm2-efgh5678", {"vm2.elf": 1024})
    odd = plant("atomwatch-dump-vm3-ijkl9012", {"vm3.elf": 10, "notes.txt": 10})
    kept = plant("atomwatch-kept-vm4-mnop3456", {"vm4.elf": 10})
    foreign = plant("dump-vm5-qrst7890", {"vm5.elf": 10})
    elsewhere = plant("elsewhere", {"x.elf": 10})
    link = dumps / "atomwatch-dump-vm6-uvwx1234"
    link.symlink_to(elsewhere)
    plain_file = dumps / "atomwatch-dump-vm8-abcdefgh"
    plain_file.write_bytes(b"x")
    # a live agent's dump: another process holds the directory's lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(held)!r}, os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        symbols = tmp_path / "symbols"
        symbols.mkdir()
        with caplog.at_level(logging.INFO, logger="atomwatch.introspection.acquire"):
            got = handlers({"dump_dir": str(dumps), "symbols": str(symbols)})
        assert set(got) == {"introspect", "terminate"}
    finally:
        holder.kill()
        holder.wait()
    assert not leftover.exists() and not empty.exists()
    for stays in (held, odd, kept, foreign, elsewhere / "x.elf", link, plain_file):
        assert stays.exists() or stays.is_symlink(), f"{stays} was not ours to remove"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"removed leftover memory dump {leftover} (3 MiB)" in " ".join(warnings), warnings
    assert f"removed leftover memory dump {empty} (0 MiB)" in " ".join(warnings), warnings
    assert len(warnings) == 2, warnings
    assert f"left {held} alone: a running agent holds it" in caplog.text
    assert f"left {odd} alone: it holds notes.txt, not only dumps" in caplog.text
    # the holder is gone now: the next start removes its dump
    assert acquire.sweep(dumps) == [(held, 1024)]


def test_a_dump_directory_in_use_is_never_swept_and_is_once_released(tmp_path):
    """The directories dump_memory makes are the ones sweep recognises, and its lock keeps them."""
    from atomwatch.introspection import acquire

    d, fd = acquire._private_dir(tmp_path, "awintro-x")
    (d / "awintro-x.elf").write_bytes(b"\0" * 100)
    assert d.name.startswith("atomwatch-dump-awintro-x-")
    assert acquire.sweep(tmp_path) == [] and d.exists()
    os.close(fd)  # what the kernel does when the agent is killed
    assert acquire.sweep(tmp_path) == [(d, 100)] and not d.exists()


@contextlib.contextmanager
def tiny_tmpfs(path: Path):
    """A 1 MiB tmpfs at ``path`` (root only); None where mounting is not allowed."""
    path.mkdir()
    if os.geteuid() != 0:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_no_dump_without_room_for_the_guest_memory_plus_margin(tmp_path):
    """libvirt's test driver has a running 8 GiB guest ("test"): a dump directory on a 1 MiB tmpfs
    is refused before anything is written, naming the directory, the space needed and available.
    Where mounting is not allowed, the margin option asks for more than the disk has."""
    require(have_module("libvirt"), "libvirt-python is not installed")
    import libvirt

    from atomwatch.types import CommandError

    symbols = tmp_path / "symbols"
    symbols.mkdir()
    with tiny_tmpfs(tmp_path / "tiny") as tiny:
        options = {"uri": "test:///default", "symbols": str(symbols), "introspect_min_interval": "0s"}
        if tiny is not None:
            options["dump_dir"] = str(tiny)
            margin, available = 512, "1 MiB available"
        else:
            options["dump_dir"] = str(tmp_path / "tiny")
            st = os.statvfs(tmp_path)
            margin, available = (st.f_bavail * st.f_frsize >> 20) + 1, "MiB available"
            options["dump_margin_mib"] = margin
        intro = handlers(options)["introspect"]
        with pytest.raises(CommandError) as e:
            asyncio.run(intro({"vm": "test", "metrics": ["CPUUtilization"]}, no_progress))
        text = str(e.value)
        assert text.startswith(
            f"introspect: no space for the dump: not enough free space in {options['dump_dir']} for a memory dump of "
            f"VM test: needs {8192 + margin} MiB (guest memory 8192 MiB + margin {margin} MiB), "
        ), text
        assert available in text and "introspection.dump_dir" in text
        assert os.listdir(options["dump_dir"]) == []
    conn = libvirt.open("test:///default")
    assert conn.lookupByName("test").state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_failed_dump_leaves_no_directory_behind(tmp_path):
    """With room enough the check passes; libvirt's test driver cannot make a memory-only dump,
    and the error reply says so while the private directory made for it is gone."""
    require(have_module("libvirt"), "libvirt-python is not installed")
    from atomwatch.types import CommandError

    st = os.statvfs(tmp_path)
    if st.f_bavail * st.f_frsize < (8 << 30) + (64 << 20):
        pytest.skip("less than 8 GiB free beside the tests: the 8 GiB test guest cannot pass the space check")
    symbols, dumps = tmp_path / "symbols", tmp_path / "dumps"
    symbols.mkdir()
    intro = handlers(
        {"uri": "test:///default", "symbols": str(symbols), "dump_dir": str(dumps), "dump_margin_mib": 64}
    )["introspect"]
    with pytest.raises(CommandError, match=r"^introspect: dump failed: VM test: memory dump failed: .*unsupported"):
        asyncio.run(intro({"vm": "test", "metrics": []}, no_progress))
    assert dumps.is_dir() and os.listdir(dumps) == []


@pytest.fixture
def endless_image(tmp_path):
    """An 8 GiB sparse file of zeros: Volatility scans it for a kernel for about 40 s (measured)."""
    require(have_module("volatility3"), "volatility3 is not installed")
    image = tmp_path / "zeros.elf"
    with open(image, "wb") as f:
        f.truncate(8 << 30)
    return image


def _vcfg(tmp_path, **kw):
    from atomwatch.introspection.volatility import VolatilityConfig

    symbols = tmp_path / "symbols"
    symbols.mkdir(exist_ok=True)
    return VolatilityConfig(symbol_dirs=[str(symbols)], cache_dir=str(tmp_path / "cache"), **kw)


def test_the_time_limit_kills_a_worker_that_runs_too_long(tmp_path, endless_image):
    from atomwatch.introspection.volatility import VolatilityTimeout, analyse

    started: list[int] = []
    with pytest.raises(VolatilityTimeout, match=r"overran its 3 s limit and was killed \(.*introspection.timeout\)"):
        analyse(
            endless_image,
            ["linux.pslist"],
            _vcfg(tmp_path, timeout=3.0),
            progress=lambda m: started.append(m["pid"]) if m.get("stage") == "started" else None,
        )
    assert len(started) == 1
    assert not alive(started[0])
    with pytest.raises(ProcessLookupError):
        os.killpg(started[0], 0)  # its whole group is gone


def test_cancel_kills_the_worker_from_another_thread(tmp_path, endless_image):
    import threading

    from atomwatch.introspection.volatility import Cancel, Cancelled, analyse

    cancel = Cancel()
    started = threading.Event()
    pids: list[int] = []
    outcome: list[BaseException] = []

    def progress(m):
        if m.get("stage") == "started":
            pids.append(m["pid"])
            started.set()

    def run():
        try:
            analyse(endless_image, ["linux.pslist"], _vcfg(tmp_path, timeout=600), progress=progress, cancel=cancel)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(30)
    time.sleep(0.5)
    assert alive(pids[0])
    cancel.cancel("the test stops it")
    t.join(30)
    assert not t.is_alive()
    assert isinstance(outcome[0], Cancelled) and "the test stops it" in str(outcome[0])
    assert not alive(pids[0])


PARENT = """
import sys, threading, time
from pathlib import Path
from atomwatch.introspection.volatility import VolatilityConfig, analyse

cfg = VolatilityConfig(symbol_dirs=[sys.argv[2]], cache_dir=sys.argv[3], timeout=600)

def progress(m):
    if m.get("stage") == "started":
        print(m["pid"], flush=True)

# started from a worker thread, as the agent does (asyncio.to_thread): the parent-death signal
# follows the thread that forked, which waits for the worker
t = threading.Thread(target=analyse, args=(Path(sys.argv[1]), ["linux.pslist"], cfg), kwargs={"progress": progress})
t.start()
t.join()
"""


def test_the_worker_dies_when_its_parent_is_killed(tmp_path, endless_image):
    symbols = tmp_path / "symbols"
    symbols.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(endless_image), str(symbols), str(tmp_path / "cache")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        worker = int(parent.stdout.readline())
        time.sleep(1.0)  # past its start: importing Volatility, scanning
        assert alive(worker) and workers_of(parent.pid) == [worker]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_dead(worker), f"worker {worker} outlived its parent"
        assert workers_of(parent.pid) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ----------------------------------------------------------------------------- a real guest, a real agent


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    require(have_module("libvirt"), "libvirt-python is not installed (.ci/lab-setup.sh)")
    require(have_module("volatility3"), "volatility3 is not installed (pip install volatility3 pefile)")
    require((SYMBOLS / "linux").is_dir(), f"the guest kernel's symbol table is missing: {SYMBOLS}")
    from atomwatch.lab.domains import LabError
    from atomwatch.lab.private_guest import boot_private_guest, destroy_private_guest

    work = tmp_path_factory.mktemp("faults")
    tag = f"f{os.getpid()}"
    try:
        conn, dom = boot_private_guest(work / "guest", tag=tag)
    except LabError as e:
        require(False, f"cannot boot a lab guest: {e}")
    try:
        yield conn, dom, work
    finally:
        destroy_private_guest(conn, tag)


class AgentProcess:
    """``python -m atomwatch agent`` with the introspection commands only, its log in a file."""

    def __init__(self, work: Path, broker_url: str, site: str, dumps: Path):
        from atomwatch import signing

        self.work = work
        key = work / "controller.pub"
        key.write_bytes(signing.public_key_pem(CONTROLLER_KEY))
        settings = {
            "symbols": SYMBOLS,
            "cache": work / "volcache",
            "baseline_dir": work / "baselines",
            "dump_dir": dumps,
            "timeout": 240,
            "introspect_min_interval": "0s",
        }
        self.argv = [sys.executable, "-m", "atomwatch", "agent", "--broker", broker_url, "--site", site]
        self.argv += ["--host", "hv1", "--tick", "1", "--controller-key", str(key)]
        for k, v in settings.items():
            self.argv += ["--set", f"introspection.{k}={v}"]
        # a real hypervisor's agent: the libvirt collector (watching the private guests only) and the
        # introspection commands (an agent with no collector that can run refuses to start)
        self.argv += ["--set", "libvirt.domains=^awintro-"]
        self.env = dict(os.environ, ATOMWATCH_LOAD_PLUGINS="libvirt,introspection-commands")
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.log = self.work / f"agent-{self.runs}.log"
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def connected(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "connected to" not in self.text():
            assert self.proc.poll() is None, f"the agent exited ({self.proc.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"the agent did not connect:\n{self.text()}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # its subscriptions are made before the line; the broker's state retained

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.asynccontextmanager
async def controller_for(broker_url: str, site: str):
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.pluginmanager import PluginManager

    controller = Controller(
        ControllerConfig(
            broker=BrokerAddress.parse(broker_url), signing_key=SIGNING_KEY, sites=[site], tick=1.0, db=":memory:"
        ),
        PluginManager(),
    )
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.connected.wait(), 10)
        yield controller
    finally:
        controller.stop()
        await asyncio.gather(task, return_exceptions=True)


def guest_running(dom) -> bool:
    import libvirt

    return dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.lab
@pytest.mark.parametrize("when", ["during the dump", "during Volatility"])
def test_an_agent_killed_mid_introspection_leaves_no_worker_and_its_restart_no_dump(
    guest, mosquitto, site, tmp_path, when
):
    conn, dom, _ = guest
    dumps = tmp_path / "dumps"
    agent = AgentProcess(tmp_path, mosquitto.url, site, dumps)

    async def main():
        async with controller_for(mosquitto.url, site) as controller:
            agent.start()
            await agent.connected()
            stages: list[dict] = []
            request = asyncio.create_task(
                controller.send_command(
                    site,
                    "hv1",
                    "introspect",
                    {"vm": dom.name(), "metrics": ["CPUUtilization"]},
                    timeout=300,
                    on_progress=lambda reply: stages.append(reply.result),
                )
            )
            try:
                worker = None
                if when == "during the dump":

                    def dump_being_written():
                        return [f for d in dumps_in(dumps) for f in d.glob("*.elf") if f.stat().st_size > 0]

                    await until(dump_being_written, "the dump to be written", timeout=60)
                else:
                    started = await until(
                        lambda: [s for s in stages if s.get("stage") == "volatility-started"], "the worker", timeout=90
                    )
                    worker = started[0]["pid"]
                    await asyncio.sleep(1.5)  # Volatility is loading the symbol table
                    assert alive(worker) and workers_of(agent.proc.pid) == [worker]
                os.kill(agent.proc.pid, signal.SIGKILL)
                agent.proc.wait()
            finally:
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
            if worker is not None:
                assert wait_dead(worker), f"the Volatility worker {worker} outlived the agent killed {when}"
            assert workers_of(agent.proc.pid) == [], "an orphaned Volatility worker"
            left = dumps_in(dumps)
            assert len(left) == 1, f"the killed agent left its dump {when} (what the restart must sweep): {left}"
            await until(lambda: guest_running(dom), "libvirt to resume the guest after its dump", timeout=30)

            agent.start()
            await agent.connected()
            assert dumps_in(dumps) == [], f"the restarted agent left {dumps_in(dumps)}"
            assert f"removed leftover memory dump {left[0]}" in agent.text()
            if when == "during Volatility":
                # the restarted agent introspects the same guest to the end, and leaves nothing either
                result = await controller.send_command(
                    site, "hv1", "introspect", {"vm": dom.name(), "metrics": ["CPUUtilization"]}, timeout=300
                )
                assert result["plugins"][0] == "linux.pslist" and result["rows"]["linux.pslist"]
                assert dumps_in(dumps) == [] and workers_of(agent.proc.pid) == []
            agent.proc.send_signal(signal.SIGTERM)
            assert agent.proc.wait(60) == 0

    try:
        asyncio.run(main())
    finally:
        agent.stop()


@pytest.mark.lab
def test_sigterm_during_volatility_stops_the_worker_and_deletes_the_dump(guest, mosquitto, site, tmp_path):
    conn, dom, _ = guest
    dumps = tmp_path / "dumps"
    agent = AgentProcess(tmp_path, mosquitto.url, site, dumps)

    async def main():
        async with controller_for(mosquitto.url, site) as controller:
            agent.start()
            await agent.connected()
            stages: list[dict] = []
            request = asyncio.create_task(
                controller.send_command(
                    site,
                    "hv1",
                    "introspect",
                    {"vm": dom.name(), "metrics": ["CPUUtilization"]},
                    timeout=300,
                    on_progress=lambda reply: stages.append(reply.result),
                )
            )
            try:
                started = await until(
                    lambda: [s for s in stages if s.get("stage") == "volatility-started"], "the worker", timeout=90
                )
                worker = started[0]["pid"]
                await asyncio.sleep(1.5)
                assert alive(worker) and len(dumps_in(dumps)) == 1
                agent.proc.send_signal(signal.SIGTERM)
                assert agent.proc.wait(60) == 0
            finally:
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
            assert not alive(worker)
            assert f"stopping Volatility worker {worker}: the introspect command was cancelled" in agent.text()
            assert dumps_in(dumps) == [], "the stopping agent deletes its own dump"

    try:
        asyncio.run(main())
    finally:
        agent.stop()


@pytest.mark.lab
def test_a_guest_destroyed_during_its_dump_gives_a_clear_error_and_leaves_nothing(guest, tmp_path):
    """Runs last: it destroys the module's guest."""
    import threading

    from atomwatch.types import CommandError

    conn, dom, work = guest
    dumps = tmp_path / "dumps"
    intro = handlers(
        {
            "symbols": str(SYMBOLS),
            "cache": str(work / "volcache"),
            "dump_dir": str(dumps),
            "baseline_dir": str(tmp_path / "baselines"),
            "introspect_min_interval": "0s",
        }
    )["introspect"]
    destroyed = threading.Event()

    def destroy_when_the_dump_is_written():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(f.stat().st_size > 0 for d in dumps_in(dumps) for f in d.glob("*.elf")):
                dom.destroy()
                destroyed.set()
                return
            time.sleep(0.002)

    t = threading.Thread(target=destroy_when_the_dump_is_written)
    t.start()
    try:
        with pytest.raises(CommandError) as e:
            asyncio.run(intro({"vm": dom.name(), "metrics": ["CPUUtilization"]}, no_progress))
    finally:
        t.join()
    assert destroyed.is_set()
    assert e.value.args[0].startswith(f"introspect: VM gone: VM {dom.name()} went away "), e.value
    assert "during its memory dump" in str(e.value) or "right after its memory dump" in str(e.value), e.value
    assert "the partial dump was deleted" in str(e.value) or "the dump was deleted" in str(e.value)
    assert dumps_in(dumps) == []
