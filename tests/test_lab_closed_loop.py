"""ATOM's whole loop on real guests: detect → explain → act, through a secured site.

Three TCG guests with normal work; the real agent (libvirt collector, introspection commands)
and controller (PCA-SPE, the orchestrator) talk through a real Mosquitto configured by ``atomwatch
secure init`` (TLS, client certificates, the per-host ACL), with the site's command-signing keys;
the operator gives verdicts with ``atomwatch verdict`` over the HTTPS API and the site's token. A healthy baseline
introspection of each guest is taken first. Then ``cryptominer`` starts in guest 2: an alarm
blames guest 2's CPU, the orchestrator dumps guest 2's memory and runs Volatility 3 with the
shared symbol table, ``cryptominer`` is the top suspect, the operator's *malicious* verdict
kills it through the guest agent (verified gone), SPE falls back under Q_α and the alarm closes.
Then the same for ``ddos-bot`` in guest 3, blamed on its network metrics, with socket evidence,
up to its verified termination.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from conftest import LAB_ASSETS, free_port, have_module, require, secured_site
from pipeline import LAB_DELTAS, Pipeline, detector_status, live_pipeline

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]

TICK = 1.0


async def attack_and_respond(pipe: Pipeline, scope: str, dom, workload: str, metrics: set[str], close: bool = True):
    """Start ``workload`` in ``dom``; return (alarm, finding) once the loop has run: the process is
    verified gone and, with ``close``, SPE is back under Q_α and the alarm closed."""
    from atomwatch.lab import workloads

    controller = pipe.controller
    vm = dom.name()
    known = {a.id for a in controller.alarms.list(scope=scope)}
    await asyncio.to_thread(workloads.start, dom, workload, workloads.default_args(workload))

    def new_alarm():
        for a in controller.alarms.list(scope=scope):
            if a.id not in known and any(b["vm_name"] == vm for b in a.blame):
                return a
        return None

    await pipe.wait_for(lambda: new_alarm() is not None, 60, f"an alarm blaming {vm}")
    alarm = new_alarm()
    assert alarm.blamed_vms()[0] == dom.UUIDString(), f"{vm} is the most blamed VM: {alarm.blame}"
    assert {b["metric"] for b in alarm.blame if b["vm_name"] == vm} & metrics, alarm.blame

    def findings():
        return [f for f in controller.alarms.get(alarm.id).findings if f.get("kind", "").startswith("introspection")]

    await pipe.wait_for(lambda: findings(), 180, "the introspection findings")
    finding = findings()[0]
    assert finding["kind"] == "introspection", finding
    top = finding["suspects"][0]
    assert top["name"] == workload, [(s["name"], s.get("score")) for s in finding["suspects"][:5]]

    await operator_verdict(pipe, alarm.id)

    def terminated() -> bool:
        return any(f.get("kind") == "termination" for f in controller.alarms.get(alarm.id).findings)

    await pipe.wait_for(terminated, 120, "the verified termination")
    running = await asyncio.to_thread(workloads.running, dom)
    assert workload not in running, f"{workload} still runs in {vm}: {running}"
    if not close:
        return controller.alarms.get(alarm.id), finding
    try:
        await pipe.wait_for(lambda: controller.alarms.get(alarm.id).state == "closed", 240, "the alarm to close")
    except AssertionError:
        trail = [(e["actor"], e["action"]) for e in controller.alarms.audit(alarm.id)]
        status = detector_status(controller, scope, "pca-spe")
        raise AssertionError(
            f"alarm {alarm.id} not closed; audit {trail}; spe {status.get('spe')} q {status.get('q_alpha')}"
        ) from None
    closed = controller.alarms.get(alarm.id)
    assert closed.resolution == "terminated", closed.to_dict()
    trail = [(e["actor"], e["action"]) for e in controller.alarms.audit(alarm.id)]
    assert ("operator", "verdict malicious") in trail and "closed" in {a for _, a in trail}, trail
    return closed, finding


async def operator_verdict(pipe: Pipeline, alarm_id: int) -> None:
    """``atomwatch verdict ID malicious`` as the operator runs it: HTTPS, verified against the site's
    CA, with the token ``secure init`` wrote for the operator (its name, ``operator``, is the actor)."""
    root = pipe.secured.root
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atomwatch",
        "verdict",
        str(alarm_id),
        "malicious",
        "--controller",
        f"https://127.0.0.1:{pipe.controller.http.server.server_address[1]}",
        "--ca",
        str(root / "ca.crt"),
        "--token-file",
        str(root / "controller" / "api-token"),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    assert answer["verdict"] == "malicious" and answer["id"] == alarm_id, answer


async def test_cryptominer_and_ddos_bot_are_found_and_stopped(lab, site, tmp_path):
    require(have_module("volatility3"), "volatility3 is not installed (pip install volatility3)")
    require((LAB_ASSETS / "symbols" / "linux").is_dir(), "the guest kernel's symbol table is missing")
    from atomwatch.lab import scenarios
    from atomwatch.lab.driver import ScenarioDriver

    doms = lab["doms"]
    driver = ScenarioDriver(scenarios.get("ddos"), minutes=1.5, doms=doms)  # a 90 s "day" (see test_lab_detection)
    await asyncio.to_thread(driver.setup)
    options = {
        "libvirt": {"domains": r"^awlab-guest\d+$", **LAB_DELTAS},
        "pca-spe": {"confirm": 2, "min_rows": 150},
        "introspection": {
            "symbols": str(LAB_ASSETS / "symbols"),
            "cache": str(tmp_path / "volcache"),
            "baseline_dir": str(tmp_path / "baselines"),
            "timeout": 240,
            # the hypervisor owner's consent: the closed loop terminates, and may introspect again soon
            "terminate": "on",
            "introspect_min_interval": "0s",
        },
        "orchestrate": {"settle_rows": 3, "watch_interval": 1.0},
    }
    try:
        with secured_site(site, ["hv1"]) as broker:
            await closed_loop(broker, site, options, doms)
    finally:
        await asyncio.to_thread(driver.finish)


async def closed_loop(broker, site: str, options: dict, doms: list) -> None:
    controller_dir = broker.root / "controller"
    pipe = live_pipeline(
        broker.url,
        site,
        ("libvirt", "introspection-commands", "pca-spe", "orchestrate"),
        options,
        ["pca-spe"],
        TICK,
        TICK,
        secured=broker,
        http=f"127.0.0.1:{free_port()}",
        http_tokens=str(controller_dir / "api-tokens"),
        http_cert=str(controller_dir / "api.crt"),
        http_key=str(controller_dir / "api.key"),
    )
    controller = pipe.controller
    scope = f"{site}/hv1"
    await pipe.start()
    try:
        # healthy baselines, as an operator takes them when a VM is known good
        for dom in doms[1:]:
            await controller.send_command(
                site,
                "hv1",
                "introspect",
                {"vm": dom.name(), "metrics": ["CPUUtilization", "NetworkOut"], "baseline": True},
                timeout=240,
            )

        await pipe.wait_for(
            lambda: bool(detector_status(controller, scope, "pca-spe").get("ready")), 360, "the PCA model to be ready"
        )
        await attack_and_respond(pipe, scope, doms[1], "cryptominer", {"CPUUtilization"})
        # After ddos-bot is killed guest 3's memory settles ~0.5 points above the level the
        # model learnt as constant: within its tracking error (Δ = 1 %), so pca-spe's quiet-column
        # rule must not hold the alarm open; it closes like the first.
        _, finding = await attack_and_respond(
            pipe, scope, doms[2], "ddos-bot", {"NetworkOut", "NetworkIn", "CPUUtilization"}
        )
        evidence = " ".join(finding["suspects"][0].get("evidence", []))
        assert "socket" in evidence.lower(), evidence
        # every command (baselines, introspections, terminations) reached the agent signed, fresh and addressed to it
        assert pipe.agent.refused == {}, f"the agent refused commands of its own controller: {pipe.agent.refused}"
        assert pipe.agent.stats["commands_refused"] == 0
    finally:
        await pipe.stop()
