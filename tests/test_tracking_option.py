"""The agent's ``tracking`` option: declared with the rules atomwatch.tracking has, refused with the
option's name when unknown, read from the flag, the environment and the file, and used by the agent."""

from __future__ import annotations

import typing

import pytest

from atomwatch.agent.config import AgentConfig
from atomwatch.cli.agent import KEYS
from atomwatch.config import BrokerAddress, ConfigError
from atomwatch.settings import resolve
from atomwatch.tracking import RULES, AdaptiveTracker, AtomTracker, SegmentTracker

BROKER = BrokerAddress.parse("mqtt://127.0.0.1:1")


def test_the_option_offers_exactly_the_rules() -> None:
    (key,) = [k for k in KEYS if k.name == "tracking"]
    assert typing.get_args(key.type) == tuple(RULES)


def test_flag_wins_over_environment_over_file() -> None:
    import argparse

    keys = [k for k in KEYS if k.name == "tracking"]
    args = argparse.Namespace(tracking=None)
    assert resolve(keys, args, {"tracking": "segment"}, environ={}) == {"tracking": "segment"}
    assert resolve(keys, args, {"tracking": "segment"}, environ={"ATOMWATCH_TRACKING": "adaptive"}) == {
        "tracking": "adaptive"
    }
    args.tracking = "deadband"
    assert resolve(keys, args, {}, environ={"ATOMWATCH_TRACKING": "adaptive"}) == {"tracking": "deadband"}


def test_an_unknown_rule_is_refused_naming_the_option_and_the_choices() -> None:
    keys = [k for k in KEYS if k.name == "tracking"]
    with pytest.raises(ConfigError, match=r"c.toml: tracking='midpoint' is not one of 'atom', 'deadband'"):
        resolve(keys, None, {"tracking": "midpoint"}, "c.toml", environ={})
    with pytest.raises(ConfigError, match=r"--tracking 'midpoint' is unknown; choose one of atom, deadband, segment"):
        AgentConfig(broker=BROKER, tracking="midpoint")


@pytest.mark.parametrize(
    "rule, cls", [("atom", AtomTracker), ("segment", SegmentTracker), ("adaptive", AdaptiveTracker)]
)
def test_the_agent_tracks_with_the_rule(rule, cls) -> None:
    from atomwatch.agent.runtime import Agent
    from atomwatch.pluginmanager import get_plugin_manager

    agent = Agent(AgentConfig(broker=BROKER, host="hv1", tracking=rule), get_plugin_manager(load_entry_points=False))
    assert type(agent.tracker) is cls
    assert AgentConfig(broker=BROKER).tracking == "atom"  # the default
