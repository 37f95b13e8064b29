"""Tests of the online lower bounds of benchmarks.tracking_bound: the iid floor and the range
formula against brute-force simulation, the optimum's stationary rate against long simulations,
the random-walk DP against hand-worked cases and its own policy simulated, no copy of any shape
outlasting the constant one on a walk, the Markov-chain DP (by hand, its policy simulated and
learnt, its fitting), and every rule's measured rate at or above the bound it is held to (a rule
below a lower bound would be a bug)."""

from __future__ import annotations

import numpy as np
import pytest

from atomwatch.tracking import RULES, Deadband, make_tracker, optimal_messages, simulate
from benchmarks.tracking_bound import (
    _iid_chain_rate,
    chain_dp,
    chain_learnt_online,
    chain_policy_messages,
    chain_sample,
    fresh_segment_length,
    grid_chain,
    iid_noise,
    iid_online_floor,
    iid_optimum_rate,
    random_walk,
    range_cdf,
    walk_any_copy,
    walk_dp,
    walk_survival,
)


def test_range_formula_and_fresh_segment_length_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    r = 5 / 6
    for n in (2, 3, 5, 8):
        x = rng.uniform(0, 1, (200_000, n))
        hit = np.mean(x.max(axis=1) - x.min(axis=1) <= r)
        assert hit == pytest.approx(range_cdf(n, r), abs=0.005)
    assert fresh_segment_length(r) == pytest.approx(sum(range_cdf(n, r) for n in range(1, 2000)))
    # a segment started at a fresh sample: the greedy cover's first segment of many series
    x = rng.uniform(0, 1, (200, 20_000))
    first = np.argmax(np.maximum.accumulate(x) - np.minimum.accumulate(x) > r, axis=0)
    assert first.mean() == pytest.approx(fresh_segment_length(r), rel=0.05)


def test_iid_floor_is_the_least_send_probability_of_any_fixed_copy() -> None:
    assert iid_online_floor(1.2) == pytest.approx(1 / 6)
    assert iid_online_floor(0.5) == 0.0  # noise within ±Δ/2: a copy at the level never breaks
    x = np.random.default_rng(4).uniform(-1.2, 1.2, 400_000)
    for c in np.linspace(-1.5, 1.5, 31):  # any constant copy fixed before the sample
        assert np.mean(np.abs(x - c) > 1) >= iid_online_floor(1.2) - 0.003
    assert np.mean(np.abs(x - 0.1) > 1) == pytest.approx(1 / 6, abs=0.003)  # reached within 0.2Δ


def test_optimum_rate_chain_by_hand_and_against_simulation() -> None:
    # two values, segments hold while max − min ≤ 0: a segment per change of value, and a new
    # sample differs from the last with probability 1/2
    assert _iid_chain_rate(2, 0) == pytest.approx(0.5)
    # three values, segments of range ≤ 1: checked against the greedy cover of that process
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (50_000, 40)).astype(float)
    assert _iid_chain_rate(3, 1) == pytest.approx(optimal_messages(x, 0.5).sum() / x.size, rel=0.01)
    exact = iid_optimum_rate(1.2, cells=120)
    with pytest.raises(ValueError, match="must be a whole number"):
        iid_optimum_rate(1.2, cells=100)
    simulated = optimal_messages(iid_noise(rng, 1.2, 20_000, 50), 1.0).sum() / 1e6
    assert exact == pytest.approx(simulated, rel=0.01)
    assert exact > 1 / fresh_segment_length(1 / 1.2) * 1.2  # segments start near the edges


def test_optimum_on_noise_of_at_most_twice_delta_is_two_over_e_of_the_floor() -> None:
    """Observed, not proven (docs/tracking.md): for 1 < a ≤ 2 the optimum sends 2(1 − 1/a)/e a
    tick, so the least online ratio is e/2 whatever the width."""
    for a in (1.2, 1.5, 2.0):
        assert iid_optimum_rate(a, cells=240) == pytest.approx(2 * iid_online_floor(a) / np.e, rel=2e-4)
    assert iid_online_floor(3.0) / iid_optimum_rate(3.0, cells=240) < 1.31  # wider: the ratio falls


def test_walk_dp_by_hand_and_against_its_own_policy() -> None:
    # tiny steps against Δ: the walk never leaves [−Δ, Δ] in practice, no message
    assert walk_dp(1e-3, cells=21)["messages_per_tick"] < 1e-12
    # huge steps: every tick breaks whatever the copy
    assert walk_dp(100.0, cells=21)["messages_per_tick"] == pytest.approx(1.0, abs=0.01)
    dp = walk_dp(0.5, cells=101)
    assert (dp["reset_offset"], dp["reset_slope"], dp["sends_before_forced"]) == (0.0, 0.0, False)
    # its policy (reset to the value, never send early) is the deadband: simulated
    w = random_walk(np.random.default_rng(6), 0.5, 50_000, 20)
    rate = simulate(Deadband(np.ones(20)), w).messages.sum() / w.size
    assert dp["messages_per_tick"] == pytest.approx(rate, rel=0.01)


def test_walk_dp_lines_pay_only_on_a_drift() -> None:
    constant, line = walk_dp(0.5, cells=51), walk_dp(0.5, cells=51, max_slope=0.5)
    assert line["messages_per_tick"] == pytest.approx(constant["messages_per_tick"], rel=1e-9)
    drift_constant = walk_dp(0.5, cells=51, drift=0.2)
    drift_line = walk_dp(0.5, cells=51, max_slope=0.5, drift=0.2)
    assert drift_constant["reset_offset"] < 0  # the copy leads the drift (SegmentTracker's carry)
    assert drift_line["reset_slope"] == pytest.approx(0.2, abs=0.02)
    assert drift_line["messages_per_tick"] < 0.9 * drift_constant["messages_per_tick"]


def test_on_a_walk_no_copy_of_any_shape_outlasts_the_constant_at_the_sent_value() -> None:
    """Anderson's theorem, checked: whatever a message's copy does next, the chance that it still
    holds after k ticks is at most the constant copy's, for every k; so no online rule beats the
    deadband on a random walk (docs/tracking.md)."""
    rng = np.random.default_rng(11)
    for sigma in (0.25, 0.5, 1.0):
        constant = walk_survival(sigma, np.zeros(60))
        assert walk_survival(sigma, np.full(60, 0.05))[-1] < constant[-1]  # the check can fail
        for scale in (0.02, 0.1, 0.5):
            shifts = np.cumsum(rng.normal(0, scale, 60)) + rng.uniform(-0.3, 0.3)
            assert np.all(walk_survival(sigma, shifts) <= constant * (1 + 1e-12))
    lasts = walk_any_copy(0.5, ticks=60)
    assert max(lasts, key=lasts.get) == "constant at the sent value"
    # the same chain as the DP's on the same cells: the mean time to a break is 1 / its rate
    assert lasts["constant at the sent value"] == pytest.approx(1 / walk_dp(0.5, 101)["messages_per_tick"], rel=1e-4)


@pytest.mark.parametrize("rule", list(RULES))
def test_no_rule_sends_below_the_bounds(rule: str) -> None:
    rng = np.random.default_rng(8)
    noise = iid_noise(rng, 1.2, 20_000, 8)
    rate = simulate(make_tracker(rule, np.ones(8)), noise).messages.sum() / noise.size
    assert rate >= iid_online_floor(1.2) * 0.98  # 160,000 samples: sd of the rate < 0.001
    walk = random_walk(rng, 0.5, 20_000, 8)
    rate = simulate(make_tracker(rule, np.ones(8)), walk).messages.sum() / walk.size
    assert rate >= walk_dp(0.5, cells=51, max_slope=0.5)["messages_per_tick"] * 0.98


def test_chain_dp_by_hand_and_no_rule_below_it_on_its_chain() -> None:
    # iid values, uniform over 10: a window of 4 holds the next sample with probability 0.4
    dp = chain_dp(np.full((10, 10), 0.1), 3)
    assert dp["messages_per_tick"] == pytest.approx(0.6)
    # a lazy ±1 walk reflected within 0..20, windows of 5 values (Δ = 2.4)
    size = 21
    chain = np.zeros((size, size))
    for v in range(size):
        chain[v, v] += 0.4
        chain[v, max(v - 1, 0)] += 0.3
        chain[v, min(v + 1, size - 1)] += 0.3
    dp = chain_dp(chain, 4)
    paths = chain_sample(np.random.default_rng(9), chain, 10, 20_000, 8)
    rate = np.mean([chain_policy_messages(paths[:, k], dp) for k in range(8)]) / 20_000
    assert rate == pytest.approx(dp["messages_per_tick"], rel=0.03)  # the policy does what it says
    values = paths.astype(float)
    for rule in RULES:  # and no rule does better (their windows hold at most 5 whole numbers)
        sent = simulate(make_tracker(rule, np.full(8, 2.4)), values).messages.sum() / values.size
        assert sent >= dp["messages_per_tick"] * 0.97, rule
    # and it can be learnt as the series goes (a smaller walk, within 0..8, windows of 3 values)
    small = chain[:9, :9] + np.diag([0] * 8 + [0.3])  # reflected at 8 too
    dp = chain_dp(small, 2)
    paths = chain_sample(np.random.default_rng(10), small, 4, 10_000, 4)
    learnt = np.mean([chain_learnt_online(paths[:, k], 2) for k in range(4)]) / 10_000
    assert dp["messages_per_tick"] * 0.97 <= learnt <= dp["messages_per_tick"] * 1.05


def test_grid_chain_counts_transitions_and_refuses_off_grid_series() -> None:
    chain, states = grid_chain(np.array([5.0, 6.0, 5.0, 7.0, np.nan, 7.0]))
    assert states.tolist() == [0, 1, 0, 2, 2]
    assert chain == pytest.approx(np.array([[0, 0.5, 0.5], [1, 0, 0], [0, 0, 1]]), abs=1e-3)
    assert chain[2, 0] > 0  # a value never left can still go back to the first: one class
    last = grid_chain(np.array([1.0, 2.0]))[0]
    assert last == pytest.approx(np.array([[0, 1], [1, 0]]), abs=1e-3)  # the last value: to the first
    # a series that ends sitting on a new value: the DP still has one gain to find
    ends = grid_chain(np.array([5.0, 6.0, 7.0, 6.0, 5.0, 9.0, 9.0, 9.0]))[0]
    assert chain_dp(ends, 1)["messages_per_tick"] < 0.01  # it sits on 9, leaving it only by the restart
    assert grid_chain(np.array([1.0, 1.5])) is None
    assert chain_dp(np.array([[0.5, 0.5], [0.5, 0.5]]), 1)["messages_per_tick"] == 0.0  # one window holds all
