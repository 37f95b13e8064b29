"""Introspection on a real TCG guest: libvirt dump, Volatility 3 with the shared symbol table,
suspect ranking against a baseline, guest-agent termination guarded against PID reuse, and the
closed loop through a real broker, agent and controller (alarm → findings → verdict → terminate →
score back under its threshold → closed).

One guest (``awintro-t…``, not a lab name, so the lab's own tests never destroy it) is booted for
the module and reused; tests run in file order and the later ones use what earlier ones found.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY

from tests.conftest import LAB_ASSETS, require, require_introspection_lab

SYMBOLS = LAB_ASSETS / "symbols"
STATE: dict = {}


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    require_introspection_lab()
    from atomwatch.lab.domains import LabError
    from atomwatch.lab.private_guest import boot_private_guest, destroy_private_guest

    work = tmp_path_factory.mktemp("intro")
    tag = f"t{os.getpid()}"
    try:
        conn, dom = boot_private_guest(work / "guest", tag=tag)
    except LabError as e:
        require(False, f"cannot boot a lab guest: {e}")
    STATE["work"] = work
    try:
        yield conn, dom
    finally:
        destroy_private_guest(conn, tag)


def _cfg(work: Path, symbols: Path = SYMBOLS):
    from atomwatch.introspection.pipeline import IntrospectionConfig
    from atomwatch.introspection.volatility import VolatilityConfig

    return IntrospectionConfig(
        volatility=VolatilityConfig(
            symbol_dirs=[str(symbols)], cache_dir=str(work / f"volcache-{symbols.name}"), timeout=240
        ),
        dump_dir=work / "dumps",
        baseline_dir=work / "baselines",
    )


@pytest.mark.lab
def test_dump_is_private_deleted_after_use_and_guest_keeps_running(guest):
    from atomwatch.introspection.acquire import DomainGone, dump_memory, state_name

    conn, dom = guest
    with dump_memory(conn, dom.UUIDString(), STATE["work"] / "dumps") as dump:
        assert dump.path.exists() and dump.size > 200 << 20  # 256 MiB guest
        assert stat.S_IMODE(dump.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(dump.path.parent.stat().st_mode) == 0o700
        assert dump.path.read_bytes()[:4] == b"\x7fELF"
        assert dump.state_after == "running"
    assert not dump.path.exists() and not dump.path.parent.exists()
    assert state_name(dom) == "running"
    with pytest.raises(DomainGone, match="no-such-vm"):
        dump_memory(conn, "no-such-vm")


@pytest.mark.lab
def test_process_list_from_volatility_matches_the_guest(guest):
    from atomwatch.introspection import guest_agent
    from atomwatch.introspection.pipeline import introspect

    conn, dom = guest
    progress: list[dict] = []
    res = introspect(conn, dom.name(), ["CPUUtilization"], _cfg(STATE["work"]), progress=progress.append, baseline=True)
    assert res["plugins"] == ["linux.pslist", "linux.pstree", "linux.psaux"]
    # this guest's RAM is QEMU's private memory: no live read, a dump, and the result says why
    assert res["source"] == "dump" and res["dump"]["dump_bytes"] > 200 << 20
    assert "not a shared file" in res["not_live"] and "memoryBacking" in res["not_live"], res["not_live"]
    assert "memory dump: not live because" in res["summary"]
    assert "6.1.0-56-cloud-amd64" in res["banner"]
    rows = res["rows"]["linux.pslist"]
    by_pid = {r["PID"]: r for r in rows}
    seen = guest_agent.list_processes(dom)
    ga = next(p for p in seen if p.name == "qemu-ga")
    assert by_pid[ga.pid]["COMM"] == "qemu-ga"
    assert by_pid[1]["COMM"] == "init"
    # the long-lived processes the guest agent lists are in the image, same PID, name and start time
    starts = {t["pid"]: t["start_s"] for t in res["tasks"] if t["pid"] == t["tid"]}
    for p in seen:
        if p.name in ("init", "qemu-ga") and p.pid in starts:
            assert by_pid[p.pid]["COMM"] == p.name
            assert abs(starts[p.pid] - p.start_time) <= guest_agent.START_TOLERANCE
    assert any(r["ARGS"].startswith("qemu-ga") for r in res["rows"]["linux.psaux"])
    stages = {p.get("stage") for p in progress}
    assert {"dump", "dumped", "volatility-loaded", "volatility-done"} <= stages
    assert res["baseline"]["saved"] and not list((STATE["work"] / "dumps").iterdir())


@pytest.mark.lab
def test_cryptominer_is_the_top_suspect_against_the_baseline(guest):
    from atomwatch.introspection import guest_agent
    from atomwatch.introspection.pipeline import introspect
    from atomwatch.lab import workloads

    conn, dom = guest
    workloads.start(dom, "cryptominer")
    time.sleep(3)
    miner = next(p for p in guest_agent.list_processes(dom) if p.name == "cryptominer")
    res = introspect(conn, dom.UUIDString(), ["CPUUtilization"], _cfg(STATE["work"]))
    top = res["suspects"][0]
    assert top["name"] == "cryptominer" and top["pid"] == miner.pid
    assert abs(top["start_time"] - miner.start_time) <= guest_agent.START_TOLERANCE
    assert any("new since the baseline" in e for e in top["evidence"])
    assert top["facts"]["cpu_share"] > 0.5
    assert res["suspects"][1]["score"] < top["score"] / 2
    assert res["baseline"] is not None and "cryptominer" in res["summary"]
    STATE["suspect"] = top


@pytest.mark.lab
def test_a_kernel_without_symbols_names_its_banner(guest):
    from atomwatch.introspection.pipeline import introspect
    from atomwatch.introspection.volatility import NoSymbols

    conn, dom = guest
    empty = STATE["work"] / "no-symbols"
    empty.mkdir(exist_ok=True)
    with pytest.raises(NoSymbols, match=r"^no symbol table for banner 'Linux version 6\.1\.0-56-cloud-amd64 ") as e:
        introspect(conn, dom.name(), ["CPUUtilization"], _cfg(STATE["work"], empty))
    assert e.value.banner.endswith("(2026-11-16)")
    assert "atomwatch symbols build --domain" in str(e.value)  # what to do about it
    assert not list((STATE["work"] / "dumps").iterdir())  # the dump is deleted on failure too


@pytest.mark.lab
def test_volatility_worker_limits_and_agent_command_errors(guest):
    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import BrokerAddress
    from atomwatch.introspection.acquire import dump_memory
    from atomwatch.introspection.volatility import (
        VolatilityConfig,
        VolatilityError,
        VolatilityTimeout,
        analyse,
    )
    from atomwatch.plugins.introspection_commands import register_agent_commands
    from atomwatch.types import CommandError

    conn, dom = guest
    work = STATE["work"]
    with dump_memory(conn, dom.name(), work / "dumps") as dump:
        cfg = VolatilityConfig(symbol_dirs=[str(SYMBOLS)], cache_dir=str(work / "volcache-symbols"), timeout=1.0)
        t = time.monotonic()
        with pytest.raises(VolatilityTimeout, match="overran its 1 s limit and was killed"):
            analyse(dump.path, ["linux.pslist"], cfg)
        assert time.monotonic() - t < 10
        small = VolatilityConfig(
            symbol_dirs=[str(SYMBOLS)], cache_dir=str(work / "volcache-symbols"), memory_limit=150 << 20
        )
        with pytest.raises(VolatilityError, match="memory|MemoryError|Cannot allocate"):
            analyse(dump.path, ["linux.pslist"], small)
        with pytest.raises(VolatilityError, match="linux.nosuch.*no such plugin"):
            analyse(dump.path, ["linux.nosuch"], VolatilityConfig(symbol_dirs=[str(SYMBOLS)]))

    config = AgentConfig(
        broker=BrokerAddress.parse("mqtt://127.0.0.1:1"),
        site="s",
        host="h",
        # the owner consents to terminate and protects no name, so the guest agent's own pid-1 check is reached
        options={"introspection": {"symbols": str(SYMBOLS), "terminate": "on", "never_kill": []}},
    )
    handlers = register_agent_commands(config)
    sent: list = []

    async def progress(info):
        sent.append(info)

    with pytest.raises(CommandError, match="introspect: VM gone: VM no-such-vm: no such domain"):
        asyncio.run(handlers["introspect"]({"vm": "no-such-vm", "metrics": ["CPUUtilization"]}, progress))
    with pytest.raises(CommandError, match="'metrics' must be a list"):
        asyncio.run(handlers["introspect"]({"vm": dom.name(), "metrics": "CPU"}, progress))
    with pytest.raises(CommandError, match="linux.malfind: not allowed here"):
        asyncio.run(handlers["introspect"]({"vm": dom.name(), "metrics": [], "plugins": ["linux.malfind"]}, progress))
    with pytest.raises(CommandError, match="refused: pid 1: not a process that may be terminated"):
        asyncio.run(
            handlers["terminate"](
                {
                    "vm": dom.name(),
                    "pid": 1,
                    "name": "init",
                    "start_time": 0.1,
                    "alarm": 1,
                    "authorization": {"by": "verdict", "actor": "test", "at": time.time()},
                },
                progress,
            )
        )
    bad = register_agent_commands(
        AgentConfig(
            broker=BrokerAddress.parse("mqtt://127.0.0.1:1"),
            site="s",
            host="h",
            options={"introspection": {"symbols": "/nonexistent/symbols"}},
        )
    )
    with pytest.raises(CommandError, match="misconfigured.*symbol directory '/nonexistent/symbols' does not exist"):
        asyncio.run(bad["introspect"]({"vm": dom.name()}, progress))


@pytest.mark.lab
def test_a_reused_pid_is_never_killed(guest):
    from atomwatch.introspection import guest_agent

    conn, dom = guest
    s = STATE["suspect"]
    with pytest.raises(guest_agent.Refused, match=r"started .* not .* the PID was reused, nothing killed"):
        guest_agent.terminate(dom, s["pid"], s["name"], s["start_time"] + 2.5)
    with pytest.raises(guest_agent.Refused, match="is now 'cryptominer', not 'sshd'"):
        guest_agent.terminate(dom, s["pid"], "sshd", s["start_time"])
    # the in-guest re-check refuses on its own too (the window between check and kill)
    code, out, _ = guest_agent.exec_in_guest(
        dom, "/bin/sh", ["-c", guest_agent._guarded_kill_script(s["pid"], s["name"], s["start_time"] + 2.5, 9)]
    )
    assert code == 5 and out.startswith("start ")
    alive = guest_agent.find(guest_agent.list_processes(dom), s["pid"])
    assert alive is not None and alive.name == "cryptominer"


@pytest.mark.lab
def test_guest_agent_commands_wait_for_a_paused_guest_and_say_why_when_it_stays_paused(guest):
    """A memory dump (ours or another tool's) pauses the guest: a process listing or a kill sent
    meanwhile waits for it to run again instead of failing with "domain is not running"."""
    import threading

    from atomwatch.introspection import guest_agent

    conn, dom = guest
    dom.suspend()
    resumer = threading.Timer(2.0, dom.resume)
    resumer.start()
    try:
        t0 = time.monotonic()
        procs = guest_agent.list_processes(dom)
        assert time.monotonic() - t0 >= 1.5, "the listing cannot have run while the guest was paused"
        assert guest_agent.find(procs, STATE["suspect"]["pid"]) is not None
    finally:
        resumer.join()
    dom.suspend()
    try:
        with pytest.raises(guest_agent.GuestAgentError, match=r"paused \(paused by a user\) for over 1 s"):
            guest_agent.agent_command(dom, {"execute": "guest-ping"}, paused_wait=1.0)
    finally:
        dom.resume()
    assert guest_agent.agent_command(dom, {"execute": "guest-ping"}) == {}


@pytest.mark.lab
def test_terminate_kills_the_cryptominer_and_verifies_it_is_gone(guest):
    from atomwatch.introspection import guest_agent

    conn, dom = guest
    s = STATE["suspect"]
    out = guest_agent.terminate(dom, s["pid"], s["name"], s["start_time"])
    assert out["verified"] in ("gone", "zombie (dead, awaiting its parent)")
    now = guest_agent.find(guest_agent.list_processes(dom), s["pid"])
    assert now is None or now.state == "Z"
    with pytest.raises(guest_agent.Refused, match="no longer exists|already exited"):
        guest_agent.terminate(dom, s["pid"], s["name"], s["start_time"])


@pytest.mark.lab
def test_ddos_bot_is_the_top_suspect_with_socket_evidence_and_its_group_is_terminated(guest):
    from atomwatch.introspection import guest_agent
    from atomwatch.introspection.pipeline import introspect
    from atomwatch.lab import workloads

    conn, dom = guest
    cfg = _cfg(STATE["work"])
    metrics = ["NetworkOut", "NetworkIn"]
    workloads.start(dom, "httpd")  # the local victim, part of the healthy baseline
    try:
        base = introspect(conn, dom.name(), metrics, cfg, baseline=True)
        assert base["plugins"] == ["linux.pslist", "linux.sockstat", "linux.lsof", "linux.ip.Addr"]
        assert not base["errors"], base["errors"]
        assert any(r.get("IP") == "127.0.0.1" for r in base["rows"]["linux.ip.Addr"])
        assert any(r.get("Source Port") == "80" and r.get("State") == "LISTEN" for r in base["rows"]["linux.sockstat"])
        workloads.start(dom, "ddos-bot", ["http://127.0.0.1/", "4"])
        time.sleep(3)
        res = introspect(conn, dom.name(), metrics, cfg)
        top = res["suspects"][0]
        assert top["name"] == "ddos-bot", [(s["name"], s["score"], s["evidence"]) for s in res["suspects"][:4]]
        assert top["facts"]["descendants"], top
        socket_evidence = [e for e in top["evidence"] if "new socket" in e]
        assert socket_evidence and "127.0.0.1" in " ".join(socket_evidence), top["evidence"]
        out = guest_agent.terminate(dom, top["pid"], top["name"], top["start_time"], group=True)
        assert out["group"] is True and out["verified"].startswith(("gone", "zombie"))
        left = [p for p in guest_agent.list_processes(dom) if p.pgrp == top["pid"] and p.state != "Z"]
        assert not left, left
    finally:
        workloads.stop_all(dom)


# ----------------------------------------------------------------------------- closed loop


class CpuLimitDetector:
    """A small real detector for the one-guest closed loop: flags a row where a VM's
    CPUUtilization exceeds ``limit`` and blames that column. (pca-spe needs several varying
    columns: on a one-guest scope only CPU varies, its residual space is empty and the model is
    degenerate by design, so the pca-spe closed loop belongs to the multi-guest lab test.)"""

    name = "cpu-limit"

    def __init__(self, scope: str, limit: float):
        self.scope, self.limit, self.last = scope, limit, None

    def update(self, row):
        from atomwatch import Anomaly, Blame

        worst = None
        for col, v in zip(row.columns, row.values):
            if col.metric == "CPUUtilization" and v == v and (worst is None or v > worst[1]):
                worst = (col, float(v))
        self.last = worst[1] if worst else None
        if worst is None or worst[1] <= self.limit:
            return None
        return Anomaly(
            self.name,
            row.scope,
            row.index,
            row.ts,
            worst[1],
            self.limit,
            [Blame(worst[0], "up", worst[1] / self.limit)],
        )

    def status(self):
        return {"score": self.last, "threshold": self.limit, "ready": self.last is not None}


class CpuLimitPlugin:
    class Factory:
        name = "cpu-limit"
        description = "CPUUtilization of any VM above a limit (test detector)"

        def create(self, scope, options):
            return CpuLimitDetector(scope, float((options or {}).get("limit", 30.0)))

    def __init__(self):
        import atomwatch

        @atomwatch.hookimpl
        def register_detectors():
            return [CpuLimitPlugin.Factory()]

        self.register_detectors = register_detectors


@pytest.mark.lab
def test_closed_loop_alarm_findings_verdict_reuse_refused_then_terminated_and_closed(guest, mosquitto, site):
    """cryptominer → alarm blaming the VM's CPU → introspection over the protocol names it
    → a verdict on a finding whose start time no longer matches is refused (the alarm says why)
    → the verdict on the real finding kills it → the score back under its threshold → the alarm closes."""
    import atomwatch.plugins.introspection_commands as cmds_plugin
    import atomwatch.plugins.orchestrate as orch_plugin
    from atomwatch.agent.config import AgentConfig
    from atomwatch.agent.runtime import Agent
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.introspection import guest_agent
    from atomwatch.lab import workloads
    from atomwatch.pluginmanager import PluginManager

    conn, dom = guest
    work = STATE["work"]
    pm = PluginManager()
    pm.load_entry_points(allow="libvirt")
    pm.register(CpuLimitPlugin(), name="cpu-limit")
    pm.register(cmds_plugin, name="introspection-commands")
    pm.register(orch_plugin, name="orchestrate")
    opts = {
        "libvirt": {"domains": f"^{dom.name()}$"},
        "cpu-limit": {"limit": 30.0},
        "introspection": {
            "symbols": str(SYMBOLS),
            "cache": str(work / "volcache-symbols"),
            "baseline_dir": str(work / "baselines"),
            "dump_dir": str(work / "dumps"),
            "timeout": 240,
            # the owner's consent: this test terminates, and introspects the guest again at once
            "terminate": "on",
            "introspect_min_interval": "0s",
        },
        # a guest burning its only vCPU under TCG on a loaded 2-core host answers its guest agent
        # slowly: the agent's process listing before a kill has taken over a minute there
        "orchestrate": {
            "rate_limit": 0,
            "settle_rows": 3,
            "watch_timeout": 120,
            "watch_interval": 0.5,
            "terminate_timeout": 240,
        },
    }
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=1.0, options=opts), pm
    )
    controller = Controller(
        ControllerConfig(
            broker=broker,
            signing_key=SIGNING_KEY,
            sites=[site],
            tick=1.0,
            detectors=["cpu-limit"],
            options=opts,
            db=":memory:",
        ),
        pm,
    )

    seen_rows: list[str] = []
    controller.row_listeners.append(
        lambda row: seen_rows.append(
            f"row {row.index}: "
            + ", ".join(f"{c.metric}={v:.3g}" for c, v in zip(row.columns, row.values))
            + f" | score={status().get('score')} threshold={status().get('threshold')}"
        )
    )

    async def wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, (
                f"timed out after {timeout} s waiting for {what}; last rows:\n" + "\n".join(seen_rows[-8:])
            )
            await asyncio.sleep(0.25)

    def status():
        return (controller.scope_status.get(f"{site}/hv1") or {}).get("detectors", {}).get("cpu-limit") or {}

    async def main():
        tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
        try:
            await wait(lambda: status().get("ready") and status()["score"] < 30.0, 90, "an idle guest")
            for a in controller.alarms.list(state="open"):  # an idle-guest blip: fold it into M
                await controller.give_verdict(a.id, "normal", "test")
            started_at = time.time()
            workloads.start(dom, "cryptominer")
            await wait(lambda: any(a.opened_at >= started_at for a in controller.alarms.list()), 60, "an alarm")
            alarm = next(a for a in controller.alarms.list() if a.opened_at >= started_at)
            assert alarm.blamed_vms()[0] == dom.UUIDString()
            assert any(b["metric"] == "CPUUtilization" for b in alarm.blame)
            await wait(
                lambda: any(f["kind"].startswith("introspection") for f in controller.alarms.get(alarm.id).findings),
                240,
                "the introspection findings",
            )
            finding = next(f for f in controller.alarms.get(alarm.id).findings if f["kind"].startswith("introspection"))
            assert finding["kind"] == "introspection", finding.get("error")
            top = finding["suspects"][0]
            assert top["name"] == "cryptominer" and finding["rows"]["linux.pslist"]
            # the same PID, but started later than the finding saw: PID reuse → refused, nothing killed
            reused = dict(finding, suspects=[dict(top, start_time=top["start_time"] + 3.0)])
            controller.add_findings(alarm.id, "test", reused)
            await controller.give_verdict(alarm.id, "malicious", "operator", {"pid": top["pid"]})

            def outcome():
                return next(
                    (f for f in controller.alarms.get(alarm.id).findings if f["kind"].startswith("termination")), None
                )

            try:
                await wait(lambda: outcome() is not None, 300, "the refusal")
            except AssertionError as e:
                trail = [
                    (round(x["ts"] - started_at, 1), x["actor"], x["action"]) for x in controller.alarms.audit(alarm.id)
                ]
                raise AssertionError(f"{e}\naudit trail (s since the miner started): {trail}") from None
            refusal = outcome()
            assert refusal["kind"] == "termination-refused", refusal
            assert "PID was reused, nothing killed" in refusal["summary"]
            assert guest_agent.find(guest_agent.list_processes(dom), top["pid"]) is not None
            # the operator gives the verdict again on the real finding: terminated, then closed
            controller.add_findings(alarm.id, "test", finding)
            await controller.give_verdict(alarm.id, "malicious", "operator", {"pid": top["pid"]})
            await wait(lambda: controller.alarms.get(alarm.id).state == "closed", 150, "the alarm to close")
            closed = controller.alarms.get(alarm.id)
            assert closed.resolution == "terminated"
            term = next(f for f in closed.findings if f["kind"] == "termination")
            assert term["result"]["pid"] == top["pid"]
            now = guest_agent.find(guest_agent.list_processes(dom), top["pid"])
            assert now is None or now.state == "Z"
            actions = [a["action"] for a in controller.alarms.audit(alarm.id)]
            for expected in (
                "introspection requested",
                "findings",
                "verdict malicious",
                "termination requested",
                "watching the scope",
                "closed",
            ):
                assert expected in actions, f"{expected!r} missing from the audit trail {actions}"
            last = controller.alarms.audit(alarm.id)[-1]["details"]
            assert last["score"] <= last["threshold"] == 30.0 and last["measure"] == "score ≤ threshold"
        finally:
            workloads.stop_all(dom)
            agent.stop()
            controller.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# ----------------------------------------------------------------------------- no guest needed


def test_absent_default_symbol_directory_is_not_a_misconfiguration(tmp_path, monkeypatch, caplog):
    """On a fresh agent the built-in symbol directory does not exist yet: that is no error at
    start (the agent logs it once at INFO), ``introspect`` refuses before any dump and says what
    to set, ``terminate`` is registered; a symbol path the operator gave that is wrong, or a
    file, is a misconfiguration that names it."""
    import logging

    from atomwatch.agent.config import AgentConfig
    from atomwatch.config import BrokerAddress
    from atomwatch.introspection import volatility
    from atomwatch.plugins import introspection_commands as ic
    from atomwatch.types import CommandError

    absent = str(tmp_path / "symbols")
    monkeypatch.delenv("ATOMWATCH_SYMBOLS", raising=False)
    monkeypatch.setattr(volatility, "DEFAULT_SYMBOL_DIRS", (absent,))
    monkeypatch.setattr(ic, "DEFAULT_SYMBOL_DIRS", (absent,))

    def handlers(options):
        return ic.register_agent_commands(
            AgentConfig(
                broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), site="s", host="h", options={"introspection": options}
            )
        )

    async def progress(info):
        raise AssertionError(f"no progress before the refusal, got {info}")

    with caplog.at_level(logging.INFO, logger="atomwatch.plugins.introspection_commands"):
        got = handlers({})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "no symbol directory" in caplog.text and absent in caplog.text
    assert set(got) == {"introspect", "terminate"} and got["terminate"].__name__ == "terminate"
    with pytest.raises(
        CommandError,
        match=f"introspect: no symbol directory on this agent \\({absent} does not exist\\).*introspection.symbols=DIR",
    ):
        asyncio.run(got["introspect"]({"vm": "vm1", "metrics": ["CPUUtilization"]}, progress))
    (tmp_path / "symbols").mkdir()
    assert volatility.VolatilityConfig.from_options({}).symbol_dirs == [absent]  # there once it exists
    isf = tmp_path / "kernel.json.xz"
    isf.write_bytes(b"")
    for wrong, why in ((str(tmp_path / "nope"), "does not exist"), (str(isf), "is a file")):
        bad = handlers({"symbols": wrong})
        with pytest.raises(CommandError, match=f"misconfigured on this agent: symbol directory '{wrong}' {why}"):
            asyncio.run(bad["introspect"]({"vm": "vm1"}, progress))


def test_plugin_choice_follows_the_blamed_metrics():
    from atomwatch.introspection.plugins_choice import choose

    assert choose([]) == ["linux.pslist"]
    assert choose(["CPUUtilization"]) == ["linux.pslist", "linux.pstree", "linux.psaux"]
    assert choose(["NetworkOut", "NetworkIn"]) == ["linux.pslist", "linux.sockstat", "linux.lsof", "linux.ip.Addr"]
    assert choose(["MemoryUtilization"]) == ["linux.pslist", "linux.proc.Maps"]
    assert choose(["DiskWriteOps", "NetworkIn"]) == ["linux.pslist", "linux.lsof", "linux.sockstat", "linux.ip.Addr"]
    assert choose(["Temperature"]) == ["linux.pslist"]


def _task(pid, comm, start, cpu, ppid=1, kthread=False):
    return {
        "pid": pid,
        "tid": pid,
        "ppid": ppid,
        "comm": comm,
        "start_s": start,
        "cpu_s": cpu,
        "kernel_thread": kthread,
    }


def test_suspects_rank_new_sockets_and_reused_pids_from_real_row_shapes():
    from atomwatch.introspection.suspects import rank

    sock = {
        "NetNS": 1,
        "Process Name": "ddos-bot",
        "PID": 300,
        "TID": 300,
        "FD": 3,
        "Family": "AF_INET",
        "Type": "STREAM",
        "Proto": "TCP",
        "Source Addr": "10.77.0.11",
        "Source Port": "40000",
        "Destination Addr": "10.77.0.1",
        "Destination Port": "8080",
        "State": "ESTABLISHED",
        "Filter": None,
    }
    base = {
        "tasks": [
            _task(1, "init", 1.0, 0.5),
            _task(163, "qemu-ga", 15.1, 0.9),
            _task(300, "sleep", 20.0, 0.0),
            _task(7, "kworker/0:1", 0.5, 3.0, ppid=2, kthread=True),
        ],
        "plugins": {"linux.sockstat": {"rows": []}},
    }
    now = {
        "tasks": [
            _task(1, "init", 1.0, 0.6),
            _task(163, "qemu-ga", 15.1, 1.4),
            _task(300, "ddos-bot", 400.0, 0.3),
            _task(7, "kworker/0:1", 0.5, 9.0, ppid=2, kthread=True),
        ],
        "plugins": {"linux.sockstat": {"rows": [sock, dict(sock, **{"Source Port": "40001", "FD": 4})]}},
    }
    ranked = rank(now, base, ["NetworkOut"])
    top = ranked[0]
    assert (top.pid, top.name, top.start_time) == (300, "ddos-bot", 400.0)
    assert any("its PID was another process's in the baseline" in e for e in top.evidence)
    assert any(e.startswith("2 new socket(s): TCP 10.77.0.11:40000 → 10.77.0.1:8080") for e in top.evidence)
    assert all(s.name != "kworker/0:1" for s in ranked)  # kernel threads are never suspects
    # the same processes, nothing new: no "new" evidence, nothing outranks by novelty
    same = rank(base, base, ["CPUUtilization"])
    assert not any(s.facts.get("new") for s in same)


def test_guest_stat_lines_parse_names_with_spaces_and_parens():
    from atomwatch.introspection.guest_agent import check_identity, parse_stat

    line = "412 (my (odd) proc) R 1 412 412 0 -1 4194560 100 0 0 0 50 10 0 0 20 0 1 0 12345 2314240 416 0"
    p = parse_stat(line)
    assert (p.pid, p.name, p.state, p.ppid, p.start_time) == (412, "my (odd) proc", "R", 1, 123.45)
    assert check_identity(p, 412, "my (odd) proc", 123.45) is None
    assert "the PID was reused" in check_identity(p, 412, "my (odd) proc", 130.0)
    assert "no longer exists" in check_identity(None, 412, "x", 1.0)
    assert parse_stat("garbage") is None


@pytest.mark.lab
def test_orchestrator_rate_limit_dry_run_and_auto_termination_policy(guest, mosquitto, site):
    """Alarms injected into a real controller (the detector is beside the point here), real
    agent over a real broker: a second alarm on the same VM within the rate limit is not
    introspected; the policy's automatic termination is only written down under dry_run; without
    dry_run the same policy kills the cryptominer with no verdict at all."""
    import atomwatch.plugins.introspection_commands as cmds_plugin
    import atomwatch.plugins.orchestrate as orch_plugin
    from atomwatch import Anomaly, Blame, SeriesKey
    from atomwatch.agent.config import AgentConfig
    from atomwatch.agent.runtime import Agent
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.introspection import guest_agent
    from atomwatch.lab import workloads
    from atomwatch.pluginmanager import PluginManager

    conn, dom = guest
    work = STATE["work"]
    pm = PluginManager()
    pm.register(cmds_plugin, name="introspection-commands")
    pm.register(orch_plugin, name="orchestrate")
    broker = BrokerAddress.parse(mosquitto.url)
    key = SeriesKey(dom.UUIDString(), dom.name(), "CPUUtilization", "%")
    intro = {
        "symbols": str(SYMBOLS),
        "cache": str(work / "volcache-symbols"),
        "baseline_dir": str(work / "baselines"),
        "dump_dir": str(work / "dumps"),
        "terminate": "on",
        "introspect_min_interval": "0s",
    }
    policy = {
        "auto_terminate_detectors": ["cpu-test"],
        "auto_terminate_processes": ["cryptominer"],
        "rate_limit": 3600,
        "watch_timeout": 0.5,
    }

    async def wait(pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
            await asyncio.sleep(0.1)

    async def run(orch_opts, scenario):
        opts = {"introspection": intro, "orchestrate": orch_opts}
        agent = Agent(
            AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=5.0, options=opts), pm
        )
        controller = Controller(
            ControllerConfig(
                broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=5.0, options=opts, db=":memory:"
            ),
            pm,
        )
        tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
        try:
            await asyncio.wait_for(controller.connected.wait(), 10)
            await asyncio.wait_for(agent.connected.wait(), 10)
            await asyncio.sleep(0.3)

            def open_alarm(detector):
                alarm, opened = controller.alarms.record(
                    Anomaly(detector, f"{site}/hv1", 0, time.time(), 90.0, 30.0, [Blame(key, "up", 3.0)])
                )
                assert opened
                controller.dispatch("alarm_opened", alarm=alarm)
                return alarm.id

            def actions(alarm_id):
                return [(a["actor"], a["action"]) for a in controller.alarms.audit(alarm_id)]

            await scenario(controller, open_alarm, actions)
        finally:
            agent.stop()
            controller.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def dry(controller, open_alarm, actions):
        first = open_alarm("cpu-test")
        second = open_alarm("cpu-other")
        await wait(lambda: ("orchestrate", "introspection skipped") in actions(second), 10, "the rate limit")
        skipped = next(a for a in controller.alarms.audit(second) if a["action"] == "introspection skipped")
        assert "rate limit 3600 s per VM" in skipped["details"]["why"]
        await wait(lambda: ("policy", "dry run: would terminate") in actions(first), 120, "the dry-run policy action")
        assert ("orchestrate", "introspection requested") not in actions(second)
        assert not any(f["kind"].startswith("termination") for f in controller.alarms.get(first).findings)

    async def live(controller, open_alarm, actions):
        alarm_id = open_alarm("cpu-test")
        await wait(
            lambda: any(f["kind"] == "termination" for f in controller.alarms.get(alarm_id).findings),
            120,
            "the policy's termination",
        )
        assert ("policy", "automatic termination allowed by policy") in actions(alarm_id)
        assert ("policy", "termination requested") in actions(alarm_id)

    workloads.start(dom, "cryptominer")
    try:
        time.sleep(2)
        miner = next(p for p in guest_agent.list_processes(dom) if p.name == "cryptominer")
        asyncio.run(run(dict(policy, dry_run=True), dry))
        assert guest_agent.find(guest_agent.list_processes(dom), miner.pid) is not None  # dry run killed nothing
        asyncio.run(run(policy, live))
        now = guest_agent.find(guest_agent.list_processes(dom), miner.pid)
        assert now is None or now.state == "Z"
    finally:
        workloads.stop_all(dom)


def test_live_memory_is_the_one_shared_file_mapping_of_the_guests_size(tmp_path):
    """QEMU's RAM as this process maps it (no QEMU needed: the same /proc files): a shared mapping
    of a file of exactly the guest's size is found by its path, a memfd through map_files; a private
    mapping, or two candidates, is no live memory and says why."""
    import mmap

    from atomwatch.introspection import live

    size = 4 << 20
    path = tmp_path / "pc.ram"
    path.write_bytes(b"\0" * size)
    with path.open("r+b") as f, mmap.mmap(f.fileno(), size, mmap.MAP_SHARED) as m:
        m[:5] = b"hello"
        found, what = live.memory_mapping(os.getpid(), size)
        assert found == str(path) and what == str(path)
        with open(found, "rb") as g:
            assert g.read(5) == b"hello"
        fd = os.memfd_create("pc.ram")
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED):
            with pytest.raises(live.NotLive, match="split over 2 shared files"):
                live.memory_mapping(os.getpid(), size)
        os.close(fd)
    fd = os.memfd_create("pc.ram")
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size, mmap.MAP_SHARED) as m3:
        m3[:5] = b"memfd"
        found, what = live.memory_mapping(os.getpid(), size)
        assert found.startswith(f"/proc/{os.getpid()}/map_files/") and "memfd:pc.ram" in what
        if os.geteuid() == 0:  # map_files opens for root only (CAP_SYS_ADMIN)
            with open(found, "rb") as g:
                assert g.read(5) == b"memfd"
    os.close(fd)
    with path.open("r+b") as f, mmap.mmap(f.fileno(), size, mmap.MAP_PRIVATE) as m4:
        m4[:1] = b"x"
        with pytest.raises(live.NotLive, match="not a shared file"):
            live.memory_mapping(os.getpid(), size)
    assert live.linear_limit("pc-i440fx-7.2") == 0xE0000000 and live.linear_limit("pc-q35-7.2") == 0xB0000000


def test_warm_pool_keeps_a_worker_per_guest_and_stops_it_when_its_qemu_is_gone(tmp_path):
    """Real serving workers (no Volatility is imported until a request comes): one kept per guest
    key, the oldest stopped beyond the pool's size, and a worker stopped by the sweep once the
    process its key names (the guest's QEMU, here a ``sleep``) is gone."""
    import subprocess

    from atomwatch.introspection import live, warm
    from atomwatch.introspection.volatility import VolatilityConfig

    cfg = VolatilityConfig(symbol_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "cache"))
    pool = warm.WarmPool(size=1, idle=600)
    qemus = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        keys = [f"uuid-{i}/{live.process_key(q.pid)}" for i, q in enumerate(qemus)]
        first, warm_ = pool.take("uuid-0", keys[0], cfg)
        assert not warm_ and first.alive()
        pool.give(first)
        again, warm_ = pool.take("uuid-0", keys[0], cfg)
        assert warm_ and again is first
        pool.give(again)
        second, _ = pool.take("uuid-1", keys[1], cfg)
        pool.give(second)  # size 1: the older guest's worker is stopped
        assert first.proc.poll() is not None and pool.workers() == {keys[1]: second.proc.pid}
        qemus[1].kill()
        qemus[1].wait()
        assert not second.alive()
        pool.sweep()
        assert pool.workers() == {} and second.proc.poll() is not None
        # a spare is started only when it is worth it
        spare_pool = warm.WarmPool(spare=True)
        spare_pool.prepare(cfg, worth=lambda: False)
        time.sleep(0.5)
        assert spare_pool.workers() == {}
        spare_pool.close()
    finally:
        pool.close()
        for q in qemus:
            q.kill()
            q.wait()
