"""The agent's ``tracking`` option: declared with the rules atomwatch.tracking has, refused with the
option's name when unknown, read from the flag, the environment and the file, and used by the agent."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from atomwatch.agent.config import AgentConfig
from atomwatch.cli.agent import KEYS, TRACKING_RULES
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.settings import resolve
from atomwatch.tracking import RULES, AdaptiveTracker, AtomTracker, Deadband, SegmentTracker, TrendTracker

BROKER = BrokerAddress.parse("mqtt://127.0.0.1:1")


KEY = [k for k in KEYS if k.name == "tracking"]


def test_the_option_offers_exactly_the_rules() -> None:
    assert TRACKING_RULES == tuple(RULES) == tuple(AdaptiveTracker.PINS)


def test_a_rule_a_list_and_a_table_are_read_flag_over_environment_over_file() -> None:
    args = argparse.Namespace(tracking=None)
    assert resolve(KEY, args, {"tracking": "segment"}, environ={}) == {"tracking": {"*": "segment"}}
    table = {"*": "atom", "MemoryUtilization": "adaptive"}
    assert resolve(KEY, args, {"tracking": table}, environ={}) == {"tracking": table}
    env = {"ATOMWATCH_TRACKING": "adaptive, NetworkIn=deadband"}
    assert resolve(KEY, args, {"tracking": "segment"}, environ=env) == {
        "tracking": {"*": "adaptive", "NetworkIn": "deadband"}
    }
    args.tracking = ["deadband", "MemoryUtilization=segment"]  # --tracking is repeatable
    assert resolve(KEY, args, {}, environ=env) == {"tracking": {"*": "deadband", "MemoryUtilization": "segment"}}


def test_an_unknown_rule_is_refused_naming_the_option_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"c.toml: tracking: 'midpoint' is not a tracking rule; choose one of atom,"):
        resolve(KEY, None, {"tracking": "midpoint"}, "c.toml", environ={})
    with pytest.raises(ConfigError, match=r"--tracking: NetworkIn='mid' is not a tracking rule"):
        resolve(KEY, argparse.Namespace(tracking=["NetworkIn=mid"]), {}, environ={})
    with pytest.raises(ConfigError, match=r"c.toml: tracking = 3: expected a rule, a list"):
        resolve(KEY, None, {"tracking": 3}, "c.toml", environ={})
    with pytest.raises(ConfigError, match=r"--tracking 'midpoint' is unknown; choose one of atom, deadband, segment"):
        AgentConfig(broker=BROKER, tracking="midpoint")
    with pytest.raises(ConfigError, match=r"--tracking NetworkIn='x' is unknown"):
        AgentConfig(broker=BROKER, tracking={"NetworkIn": "x"})


@pytest.mark.parametrize(
    "rule, cls",
    [("atom", AtomTracker), ("segment", SegmentTracker), ("adaptive", AdaptiveTracker), ("trend", TrendTracker)],
)
def test_the_agent_tracks_with_the_rule(rule, cls) -> None:
    from atomwatch.agent.runtime import Agent
    from atomwatch.pluginmanager import get_plugin_manager

    agent = Agent(AgentConfig(broker=BROKER, host="hv1", tracking=rule), get_plugin_manager(load_entry_points=False))
    assert type(agent.tracker) is cls
    default = AgentConfig(broker=BROKER)
    assert default.one_tracking_rule == "atom" and default.tracking_rule("CPUUtilization") == "atom"


def test_rules_by_metric_pin_each_series_to_its_rule() -> None:
    config = AgentConfig(broker=BROKER, tracking={"*": "segment", "NetworkIn": "atom", "DiskReadOps": "adaptive"})
    assert config.one_tracking_rule is None
    assert [config.tracking_rule(m) for m in ("NetworkIn", "CPUUtilization", "DiskReadOps")] == [
        "atom",
        "segment",
        "adaptive",
    ]
    assert AgentConfig(broker=BROKER, tracking={"NetworkIn": "atom"}).one_tracking_rule == "atom"
    assert AgentConfig(broker=BROKER, tracking={"NetworkIn": "segment"}).one_tracking_rule is None


def test_a_pinned_series_sends_exactly_what_its_rule_sends() -> None:
    """One adaptive tracker, series pinned to atom, deadband and segment, and one not pinned: each
    pinned copy is, tick by tick, the copy of its rule run alone."""
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(0, 1.0, (400, 1)), axis=0)
    drift = np.arange(400.0)[:, None] * 0.2
    values = np.hstack([walk, walk, drift, drift])
    values = np.hstack([values, drift + walk / 4])
    tracker = AdaptiveTracker([2.0] * 5)
    tracker.set_rule([0, 1, 2, 4], ["atom", "deadband", "segment", "trend"])
    alone = [AtomTracker([2.0]), Deadband([2.0]), SegmentTracker([2.0]), None, TrendTracker([2.0])]
    slopes = 0
    for row in values:
        sent = tracker.step(row)
        slopes += int(tracker.slope[4] != 0)
        for j, policy in enumerate(alone):
            if policy is None:
                continue
            assert bool(policy.step(row[j : j + 1])[0]) == bool(sent[j])
            assert policy.g[0] == tracker.g[j]
            assert policy.line([0])[1][0] == tracker.line([j])[1][0], "the same slope"
    assert slopes > 100, "the trend rule's copy is a sloped line most of the time"
    assert tracker.leader[3] == 5, "the unpinned drift follows the trend expert"
    with pytest.raises(ValueError, match="tracking rule 'x' is unknown"):
        tracker.set_rule([0], "x")
