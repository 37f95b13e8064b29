"""Alarms: opened and extended by anomalies, verdicts, the audit trail, the SQLite file surviving
a restart, the HTTP API, /metrics and the operator's CLI against a live controller."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import free_port
from pipeline import make_pipeline

import atomwatch
from atomwatch.controller.alarms import AlarmError, AlarmNotFound, AlarmStateError, AlarmStore
from atomwatch.series import SeriesKey

CPU = SeriesKey("u1", "vm1", "CPUUtilization", "%")
NET = SeriesKey("u2", "vm2", "NetworkOut", "bytes/s")


def anomaly(index, score=10.0, scope="s/h", detector="d", blame=(CPU,)):
    return atomwatch.Anomaly(
        detector=detector,
        scope=scope,
        index=index,
        ts=1000.0 + index,
        score=score,
        threshold=5.0,
        blame=[atomwatch.Blame(column=c, direction="up", score=score, details={"rd": 4.0}) for c in blame],
    )


def test_consecutive_anomalies_extend_one_alarm_and_a_later_one_opens_another(tmp_path):
    store = AlarmStore(tmp_path / "a.sqlite", merge_gap=2)
    a1, opened = store.record(anomaly(10), (CPU, NET), np.array([90.0, np.nan]))
    assert opened and a1.level == 1 and a1.state == "open"
    a2, opened = store.record(anomaly(11, blame=(CPU, NET)))
    assert not opened and a2.id == a1.id and a2.level == 2
    a3, opened = store.record(anomaly(13))
    assert not opened and a3.level == 3
    assert [b["column"] for b in a3.blame] == ["vm1/CPUUtilization", "vm2/NetworkOut"], "most blamed first"
    assert a3.blame[0]["rows"] == 3 and a3.blame[1]["rows"] == 1
    assert a3.rows[0]["values"] == [90.0, None] and a3.rows[0]["columns"][0] == ["u1", "vm1", "CPUUtilization", "%"]
    a4, opened = store.record(anomaly(20))
    assert opened and a4.id != a1.id
    other, opened = store.record(anomaly(21, detector="other"))
    assert opened, "each detector has its own alarms"
    assert store.counts() == {"open": 3, "malicious": 0, "closed": 0}


def test_verdicts_and_audit_trail_survive_a_restart(tmp_path):
    path = tmp_path / "a.sqlite"
    store = AlarmStore(path)
    a, _ = store.record(anomaly(1))
    b, _ = store.record(anomaly(50))
    store.verdict(a.id, "normal", "alice", {"reason": "backup job"})
    store.verdict(b.id, "malicious", "bob")
    store.add_findings(b.id, "introspect", {"kind": "introspection", "summary": "cryptominer pid 42"})
    with pytest.raises(AlarmStateError, match=f"alarm {a.id} is closed: a verdict is given only on an open alarm"):
        store.verdict(a.id, "malicious", "alice")
    with pytest.raises(AlarmError, match="verdict 'maybe' is not one of normal, malicious"):
        store.verdict(b.id, "maybe", "alice")
    with pytest.raises(AlarmNotFound, match="no alarm 999"):
        store.verdict(999, "normal", "alice")
    store.shutdown()

    again = AlarmStore(path)  # a controller restart
    a2, b2 = again.get(a.id), again.get(b.id)
    assert (a2.state, a2.verdict, a2.resolution) == ("closed", "normal", "workload-change")
    assert (b2.state, b2.verdict) == ("malicious", "malicious")
    assert b2.findings[0]["summary"] == "cryptominer pid 42" and b2.findings[0]["by"] == "introspect"
    trail = [(e["actor"], e["action"]) for e in again.audit(b.id)]
    assert trail == [("d", "opened"), ("bob", "verdict malicious"), ("introspect", "findings")]
    assert again.audit(a.id)[1]["details"] == {"reason": "backup job"}
    # after the restart: a malicious alarm (being acted on) is still extended within the merge gap,
    # a closed one never is
    b3, opened = again.record(anomaly(52))
    assert not opened and b3.id == b.id and b3.level == 2 and b3.state == "malicious"
    c, opened = again.record(anomaly(53, detector="other"))
    assert opened
    again.close(b.id, "orchestrate", "terminated")
    d, opened = again.record(anomaly(54))
    assert opened and d.id not in (a.id, b.id, c.id), "b is closed: a new alarm opens"
    e, opened = again.record(anomaly(55))
    assert not opened and e.id == d.id and e.level == 2


class Spiky:
    """Flags rows whose vm2 value exceeds a limit; learns 'normal' rows by raising the limit."""

    name = "spiky"

    def __init__(self):
        self.limit = 50.0
        self.folded = []

    def update(self, row):
        vals = dict(zip(row.columns, row.values))
        v = max((x for k, x in vals.items() if k.vm_name == "vm2"), default=0.0)
        if v > self.limit:
            col = next(k for k in row.columns if k.vm_name == "vm2")
            return atomwatch.Anomaly(
                self.name, row.scope, row.index, row.ts, v, self.limit, [atomwatch.Blame(col, "up", v)]
            )
        return None

    def accept_normal(self, rows):
        self.folded.extend(rows)
        self.limit = max(max(r.values) for r in rows) + 1
        return len(rows)

    def status(self):
        return {"score": 0.0, "threshold": self.limit}


class SpikyFactory:
    name = "spiky"
    description = "test detector"

    def create(self, scope, options):
        return Spiky()


class SpikyPlugin:
    @atomwatch.hookimpl
    def register_detectors(self):
        return [SpikyFactory()]


#: the API token of the operator of these tests (named ops-alice in the tokens file)
TOKEN = "ops-alice-" + "t" * 32


def get(url):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def post(url, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.asyncio
async def test_http_api_cli_metrics_and_normal_verdict_refits(mosquitto, site, tmp_path):
    from atomwatch.traces import write_trace

    values = np.full((400, 2), 10.0)
    values[30:, 1] = 80.0  # vm2 jumps at row 30 and stays: a workload change
    trace = tmp_path / "t.csv"
    write_trace(trace, ["vm1/CPUUtilization", "vm2/CPUUtilization"], values)
    pipe = make_pipeline(mosquitto.url, site, trace, agent_tick=0.05, controller_tick=0.05, delta_rel=0.0)
    pipe.controller.pm.register(SpikyPlugin(), name="spiky")
    from atomwatch.controller.detection import DetectorSet
    from atomwatch.detectors import detector_factories

    pipe.controller.detectors = DetectorSet(detector_factories(pipe.controller.pm), {})
    port = free_port()
    pipe.controller.config.http = f"127.0.0.1:{port}"
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"ops-alice {TOKEN}\n")
    tokens.chmod(0o600)
    pipe.controller.config.http_tokens = str(tokens)
    env = {**os.environ, "ATOMWATCH_API_TOKEN": TOKEN}
    base = f"http://127.0.0.1:{port}"
    await pipe.start()
    try:
        await pipe.wait_for(lambda: pipe.controller.alarms.counts()["open"] >= 1, 30, "an alarm")
        alarms = json.loads(await asyncio.to_thread(get, base + "/api/alarms?state=open"))["alarms"]
        assert (
            len(alarms) == 1
            and alarms[0]["detector"] == "spiky"
            and alarms[0]["blame"][0]["column"] == "vm2/CPUUtilization"
        )
        alarm_id = alarms[0]["id"]
        await pipe.wait_for(lambda: pipe.controller.alarms.get(alarm_id).level >= 3, 10, "the alarm to grow")

        # the operator's CLI against the live API
        cli = ["atomwatch", "alarms", "--controller", base]
        out = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, check=True, env=env)
        assert f"#{alarm_id}" in out.stdout and "vm2/CPUUtilization up" in out.stdout
        pipe.controller.add_findings(
            alarm_id,
            "introspect",
            {
                "kind": "introspection",
                "summary": "1 new process",
                "rows": {
                    "linux.pslist": [
                        {"PID": 1, "COMM": "init", "PPID": 0},
                        {"PID": 42, "COMM": "cryptominer", "PPID": 1},
                    ]
                },
                "suspects": [{"pid": 42, "name": "cryptominer", "score": 9.5, "evidence": ["new since the baseline"]}],
            },
        )
        out = await asyncio.to_thread(
            subprocess.run,
            ["atomwatch", "alarm", str(alarm_id), "--rows", "--controller", base],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        assert "opened" in out.stdout and "audit:" in out.stdout
        assert "suspect pid 42 cryptominer" in out.stdout and "new since the baseline" in out.stdout
        assert "linux.pslist (2 rows)" in out.stdout and "COMM" in out.stdout
        api = json.loads(await asyncio.to_thread(get, f"{base}/api/alarms/{alarm_id}"))
        assert api["findings"][0]["rows"]["linux.pslist"][1]["COMM"] == "cryptominer"
        bad = await asyncio.to_thread(
            subprocess.run, ["atomwatch", "alarm", "999", "--controller", base], capture_output=True, text=True, env=env
        )
        assert bad.returncode == 1 and "no alarm 999" in bad.stderr

        status, body = await asyncio.to_thread(post, f"{base}/api/alarms/{alarm_id}/verdict", {"verdict": "sure"})
        assert status == 400 and "verdict" in body["error"]
        out = await asyncio.to_thread(
            subprocess.run,
            ["atomwatch", "verdict", str(alarm_id), "normal", "--actor", "ops-alice", "--controller", base],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        assert "closed (workload-change)" in out.stdout
        status, body = await asyncio.to_thread(
            post, f"{base}/api/alarms/{alarm_id}/verdict", {"verdict": "malicious", "actor": "x"}
        )
        assert status == 400 and "'ops-alice'" in body["error"], "the actor is the token's name, not the body's"
        status, body = await asyncio.to_thread(post, f"{base}/api/alarms/{alarm_id}/verdict", {"verdict": "malicious"})
        assert status == 409

        det = pipe.controller.detectors.instances[(f"{site}/hv1", "spiky")]
        assert det.folded and det.limit > 80, "the alarm's rows were folded into the model"
        trail = [e["action"] for e in pipe.controller.alarms.audit(alarm_id)]
        assert trail[0] == "opened" and "verdict normal" in trail and "model refit" in trail
        actors = [e["actor"] for e in pipe.controller.alarms.audit(alarm_id) if e["action"] == "verdict normal"]
        assert actors == ["ops-alice"], "the token's name is the actor"
        n_alarms = len(pipe.controller.alarms.list())
        await asyncio.sleep(1.0)
        assert len(pipe.controller.alarms.list()) == n_alarms, "the same workload no longer alarms"

        metrics = (await asyncio.to_thread(get, base + "/metrics")).decode()
        assert f'atomwatch_detector_threshold{{detector="spiky",host="hv1",site="{site}"}}' in metrics
        assert 'atomwatch_alarms{state="closed"} 1.0' in metrics
        assert 'atomwatch_messages_ingested_total{kind="data"}' in metrics
        scopes = json.loads(await asyncio.to_thread(get, base + "/api/scopes"))["scopes"]
        assert scopes[0]["scope"] == f"{site}/hv1" and scopes[0]["detectors"]["spiky"]["threshold"] > 80
    finally:
        await pipe.stop()
