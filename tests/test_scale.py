"""What keeps the controller's cost per row flat at scale (docs/scale.md), on real objects: the tick
timing histograms, a scope's column order kept until its series table changes, one scope's
detector status without the others', BLAS held to --blas-threads while the controller runs, and the
tick figures on /metrics through a real Mosquitto."""

from __future__ import annotations

import asyncio
import math
import time

import aiomqtt
import numpy as np
import pytest
from conftest import SIGNING_KEY
from threadpoolctl import threadpool_info

from atomwatch import protocol
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.app import Controller
from atomwatch.controller.config import ControllerConfig
from atomwatch.controller.detection import DetectorSet
from atomwatch.controller.ingest import Ingest
from atomwatch.controller.metrics import render_metrics
from atomwatch.controller.scopes import ScopeRows
from atomwatch.controller.timing import Histogram
from atomwatch.pluginmanager import PluginManager
from atomwatch.series import METRIC_UNITS, SeriesKey

METRICS = list(METRIC_UNITS.items())


def keys(vms: int, start: int = 0) -> list[SeriesKey]:
    return [SeriesKey(f"uuid-{v:04d}", f"vm{v:04d}", m, u) for v in range(start, start + vms) for m, u in METRICS]


def birth(series: list[SeriesKey], session: int = 1, tick: float = 1.0) -> bytes:
    # aliases in reverse: the row's column order is the keys' order, not the aliases'
    table = [protocol.SeriesInfo(len(series) - 1 - i, k, 0.5 + i, 10.0 + i) for i, k in enumerate(series)]
    return protocol.encode(protocol.Birth(session, "test", tick, time.time(), table))


def data(seq: int, values: list[tuple[int, float]], session: int = 1, gone: list[int] | None = None) -> bytes:
    return protocol.encode(protocol.Data(session, seq, time.time(), values, gone=gone or []))


def test_histogram_counts_by_upper_bound_and_ignores_nan():
    h = Histogram((0.1, 1.0))
    h.observe([0.05, 0.1, 0.5, 2.0, math.nan])
    h.observe(1.0)
    assert h.cumulative() == [("0.1", 2), ("1", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(3.65)


def test_a_scope_keeps_its_column_order_until_its_series_table_changes():
    ing, rows = Ingest(), ScopeRows()
    bt, dt = protocol.birth_topic("s", "h"), protocol.data_topic("s", "h")
    ing.handle(bt, birth(keys(2)))
    h = ing.host("s", "h")
    first = rows.row(h, 1.0)
    ordered = tuple(sorted(keys(2), key=lambda k: (k.vm_name, k.vm_uuid, k.metric, k.unit)))
    assert first.columns == ordered
    # each column reads its own alias: values and Δ follow the keys, whatever the aliases
    by_key = {k: a for a, k in h.keys.items()}
    assert first.values.tolist() == [h.values[by_key[c]] for c in ordered]
    assert first.deltas.tolist() == [h.deltas[by_key[c]] for c in ordered]
    ing.handle(dt, data(0, [(by_key[ordered[3]], 99.0)]))
    second = rows.row(h, 2.0)
    assert second.columns is first.columns, "the same tuple, row after row"
    assert second.values[3] == 99.0 and first.values[3] != 99.0, "each row has its own values"
    # a series gone (the table shrinks in place): the order is made again without it
    ing.handle(dt, data(1, [], gone=[by_key[ordered[0]]]))
    third = rows.row(h, 3.0)
    assert third.columns == ordered[1:] and third.values[2] == 99.0
    # a new birth (a new table): a VM more
    ing.handle(bt, birth(keys(3), session=2))
    fourth = rows.row(h, 4.0)
    assert len(fourth.columns) == 24 and fourth.index == 3
    # values unknown after a sequence gap: every cell NaN, the columns kept
    ing.handle(dt, data(5, [], session=2))
    assert not h.synced
    gap = rows.row(h, 5.0)
    assert gap.columns is fourth.columns and np.isnan(gap.values).all()


def test_a_row_reads_nan_for_a_value_the_host_does_not_know_and_takes_a_lone_column():
    ing, rows = Ingest(), ScopeRows()
    ing.handle(protocol.birth_topic("s", "h"), birth(keys(1)))
    h = ing.host("s", "h")
    full = rows.row(h, 1.0)
    stale = min(h.values)
    del h.values[stale]  # (a stale or unreadable series has no value)
    row = rows.row(h, 2.0)
    where = [i for i, c in enumerate(row.columns) if c == h.keys[stale]]
    assert np.isnan(row.values[where]).all()
    assert np.isnan(row.values).sum() == 1
    assert np.array_equal(np.delete(row.values, where), np.delete(full.values, where))
    one = keys(1)[:1]
    ing.handle(protocol.birth_topic("s", "h1"), birth(one))
    lone = rows.row(ing.host("s", "h1"), 1.0)
    assert lone.columns == tuple(one) and lone.values.tolist() == [10.0]


class Status:
    name = "st"

    def __init__(self) -> None:
        self.asked = 0

    def create(self, scope, options):
        owner = self

        class Det:
            def update(self, row):
                return None

            def status(self):
                owner.asked += 1
                return {"scope": scope}

        return Det()


def test_a_scopes_status_reads_only_its_own_detectors():
    factory = Status()
    dets = DetectorSet({"st": factory}, {})
    for i in range(50):
        dets.instance(f"s/h{i}", "st")
    assert dets.status("s/h7") == {"st": {"scope": "s/h7"}}
    assert factory.asked == 1, "one status call, not one per scope"
    assert dets.status("s/none") == {}


def test_blas_threads_is_checked():
    with pytest.raises(ConfigError, match="--blas-threads"):
        ControllerConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1:1"), blas_threads=0)


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


async def test_tick_figures_on_metrics_and_blas_held_while_running(mosquitto, site):
    before = blas_threads()
    config = ControllerConfig(
        broker=BrokerAddress.parse(mosquitto.url), signing_key=SIGNING_KEY, sites=[site], tick=0.1, http=None
    )
    c = Controller(config, PluginManager())
    rows = []
    c.row_listeners.append(rows.append)
    run = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.connected.wait(), 10)
        assert all(n == 1 for n in blas_threads()), "BLAS on one thread while the controller runs"
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"{site}-agent") as agent:
            await agent.publish(protocol.birth_topic(site, "hv"), birth(keys(1), tick=0.1), qos=1)
            for seq in range(15):
                await agent.publish(protocol.data_topic(site, "hv"), data(seq, [(0, float(seq))]), qos=1)
                await asyncio.sleep(0.1)
        assert len(rows) >= 5
        text = render_metrics(c).decode()
        samples = {
            line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")
        }
        assert samples["atomwatch_detection_ticks_total"] >= 10
        assert samples["atomwatch_row_delay_seconds_count"] >= len(rows) - 2
        # a row's delay is from its newest sample's publish: under a few ticks here, never negative
        assert 0 <= samples["atomwatch_row_delay_seconds_sum"] / samples["atomwatch_row_delay_seconds_count"] < 1.0
        assert (
            samples['atomwatch_detection_tick_lateness_seconds_bucket{le="+Inf"}']
            == samples["atomwatch_detection_ticks_total"]
        )
        assert "atomwatch_detection_ticks_skipped_total" in samples
    finally:
        c.stop()
        await run
    assert blas_threads() == before, "the limit is lifted when the controller stops"


TRICKY = [
    b'\xef\xbb\xbf{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[]}',  # a BOM
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,NaN]]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,1e400]]}',
    b'{"v":1,"type":"data","session":18446744073709551616,"seq":0,"ts":1.0,"values":[]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,"\\ud800"]]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[true,1.0]]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,1.5],[2,3]],"stale":[1]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,1.5]]',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,\xff]]}',
    b'{"v":1,"type":"data","session":1,"seq":0,"ts":1.0,"values":[[0,1]],"x":"\\ud83d\\ude00"}',
]


@pytest.mark.parametrize("payload", TRICKY)
def test_decoding_with_orjson_or_json_gives_the_same_message_or_refusal(payload, monkeypatch):
    from atomwatch import protocol as p

    pytest.importorskip("orjson")
    topic = p.data_topic("s", "h")

    def outcome():
        try:
            return repr(p.decode(topic, payload))
        except p.ProtocolError as e:
            return f"{e.reason}: {e}"

    fast = outcome()
    monkeypatch.setattr(p, "orjson", None)
    assert outcome() == fast
