"""The two /metrics in themselves: bounded blame series, one broken part never failing a scrape,
collector failures counted by kind, and the option that bounds the blame (a clear refusal)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

import atomwatch
from atomwatch.agent.sampling import Sampler
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.controller.config import ControllerConfig
from atomwatch.controller.metrics import render_metrics
from atomwatch.series import SeriesKey
from benchmarks.observe import controller_state


def samples(text: bytes, name: str) -> list:
    return [s for f in text_string_to_metric_families(text.decode()) for s in f.samples if s.name == name]


def test_blame_series_are_bounded_most_blamed_first_and_the_rest_counted():
    state = controller_state(hosts=4, alarms=4)  # 4 live alarms, 3 blamed columns each
    try:
        cpu = SeriesKey("u0-0", "vm0", "CPUUtilization", "")
        for i in range(11, 14):  # alarm of eu1/hv0 extended: its CPU column blamed 4 times
            state.alarms.record(
                atomwatch.Anomaly("pca-spe", "eu1/hv0", i, 0.0, 20.0, 9.0, [atomwatch.Blame(cpu, "up", 5.0)])
            )
        state.config.metrics_blame_limit = 5
        text = render_metrics(state)
        blamed = samples(text, "atomwatch_alarm_blamed_rows")
        assert len(blamed) == 5
        assert blamed[0].labels == {
            "site": "eu1",
            "host": "hv0",
            "detector": "pca-spe",
            "vm": "vm0",
            "metric": "CPUUtilization",
        }
        assert blamed[0].value == 4
        assert samples(text, "atomwatch_alarm_blamed_columns_left_out")[0].value == 12 - 5
        live = samples(text, "atomwatch_alarm_live_rows")
        assert len(live) == 4 and {s.labels["state"] for s in live} == {"open"}
        assert all("alarm" not in s.labels and "id" not in s.labels for s in blamed + live)
        up = samples(text, "atomwatch_scope_up")
        assert len(up) == 4 and all(s.value == 1 for s in up) and set(up[0].labels) == {"site", "host"}
        assert samples(text, "atomwatch_spe") and samples(text, "atomwatch_q_alpha")
        assert samples(text, "atomwatch_build_info")[0].labels["role"] == "controller"
        assert samples(text, "process_resident_memory_bytes")
    finally:
        state.alarms.shutdown()


def test_a_broken_part_is_left_out_of_the_scrape_and_logged_once(caplog):
    state = controller_state(hosts=2, alarms=1)
    try:
        del state.history  # e.g. a bug in one part of the controller's state
        with caplog.at_level(logging.ERROR, "atomwatch.exposition"):
            first, second = render_metrics(state), render_metrics(state)
        assert first.count(b"atomwatch_alarms{") == 3 and samples(second, "atomwatch_scope_up")
        assert not samples(first, "atomwatch_rows_total"), "the broken section is left out"
        said = [r for r in caplog.records if "metrics section _ingest failed" in r.getMessage()]
        assert len(said) == 1 and said[0].exc_info
    finally:
        state.alarms.shutdown()


class Raises:
    name = "raises"

    def collect(self):
        raise OSError("libvirt went away")

    def close(self):
        pass


class Wrong:
    name = "wrong"

    def collect(self):
        return {"not": "a reading"}

    def close(self):
        pass


def test_collector_failures_are_counted_by_collector_and_kind():
    sampler = Sampler([Raises(), Wrong()], budget=1.0)

    async def two_ticks():
        await sampler.sample()
        await sampler.sample()

    try:
        assert sampler.failures[("raises", "raised")] == 0 and len(sampler.failures) == 6, "every series from 0"
        asyncio.run(two_ticks())
        assert sampler.failures[("raises", "raised")] == 2
        assert sampler.failures[("wrong", "not-a-reading")] == 2
        assert sampler.failures[("raises", "over-budget")] == 0
    finally:
        sampler.close()


def test_hung_vm_ticks_of_a_collector_are_exported_by_collector():
    from types import SimpleNamespace

    from atomwatch.agent.metrics import _AgentCollector

    class Counts:
        name = "counts"
        hung_ticks = 3

        def collect(self):
            raise OSError("unused")

        def close(self):
            pass

    sampler = Sampler([Counts(), Wrong()], budget=1.0)
    agent = SimpleNamespace(config=SimpleNamespace(site="s", host="h"), sampler=sampler)
    try:
        families = {f.name: f for f in _AgentCollector(agent).counts_of_collectors()}
        samples = families["atomwatch_hung_vm_ticks"].samples
        assert [(s.labels["collector"], s.value) for s in samples if s.name.endswith("_total")] == [("counts", 3)]
    finally:
        sampler.close()


@pytest.mark.parametrize("bad", [-1, 10_001, "many", True])
def test_metrics_blame_limit_refuses_a_bad_value_naming_the_option(bad):
    with pytest.raises(ConfigError, match="--metrics-blame-limit"):
        ControllerConfig(broker=BrokerAddress.parse("mqtt://127.0.0.1"), metrics_blame_limit=bad)
