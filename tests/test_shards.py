"""Shards with hot standbys on a real three-node NATS cluster, with real processes: three agents
replaying the bundled cryptominer recording, spread over the nodes; two shards (sites) of two
controllers each. Broker node 0 is killed -9, then the active controller of shard s1 right after
it wrote the alarm of hv-a; the standby takes over within two ticks, every host's attack is one
alarm in its shard's file (hv-a's extended by the controller that took over, hv-b's opened by
it), and no controller's row holds a value off by more than Δ from what its agent read.
(The election's rules and the takeover with one Mosquitto: tests/test_standby.py.)"""

from __future__ import annotations

from conftest import require

from atomwatch.lab.broker_cluster import find_nats_server
from benchmarks.shard_scenarios import AGENT_TICK, run_failover


def test_a_node_and_an_active_controller_killed_lose_no_alarm_open_none_twice_and_keep_delta(tmp_path):
    require(find_nats_server() is not None, "nats-server is not installed (apt-get install nats-server)")
    figures = run_failover(tmp_path)
    assert figures["alarms_per_host"] == {"s1/hv-a": 1, "s1/hv-b": 1, "s2/hv-c": 1}, figures
    assert figures["alarms_elsewhere"] == 0, figures
    assert figures["values_off_by_more_than_delta"] == {n: 0 for n in ("s1-a", "s1-b", "s2-a", "s2-b")}, figures
    assert figures["controller_kill_to_standby_active_s"] <= 2 * AGENT_TICK, figures
    assert figures["killed"]["took_over"] != figures["killed"]["controller"]
