"""Tests of atomwatch.tracking: ATOM's Algorithm 1, the deadband and send-all baselines, the offline
optimum. The central property: after every tick the controller's copy ``g`` is within Δ of the
true value, exactly as evaluated in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomwatch.traces import read_trace
from atomwatch.tracking import (
    RULES,
    AdaptiveTracker,
    AtomTracker,
    CenterTracker,
    Deadband,
    LatticeTracker,
    SegmentTracker,
    SendAll,
    TrendTracker,
    make_tracker,
    optimal_line_messages,
    optimal_max_error,
    optimal_messages,
    simulate,
)
from tests.conftest import DATA

# ----------------------------------------------------------------------------- strategies

# Values on a dyadic grid (multiples of 1/8 below 2^20): sums, differences and the halvings of a
# round stay exact in float64, so the offline optimum (range ≤ 2Δ in exact arithmetic) is a true
# lower bound of the online counts. The invariant tests also use arbitrary floats.
GRID = 8


@st.composite
def series_values(draw: st.DrawFn, ticks: int, exact: bool = True) -> list[float]:
    kind = draw(st.sampled_from(["walk", "steps", "constant", "noise", "drift"]))
    if exact:
        small = st.integers(-40, 40).map(lambda k: k / GRID)
        start = draw(st.integers(-(2**20), 2**20)) / GRID
    else:
        small = st.floats(-1e3, 1e3, allow_nan=False)
        start = draw(st.floats(-1e12, 1e12, allow_nan=False))
    if kind == "constant":
        out = [start] * ticks
    elif kind == "walk":
        out, x = [], start
        for _ in range(ticks):
            x += draw(small)
            out.append(x)
    elif kind == "steps":
        out, x = [], start
        for _ in range(ticks):
            if draw(st.integers(0, 9)) == 0:
                x += 10 * draw(small)
            out.append(x)
    elif kind == "noise":
        out = [start + draw(small) for _ in range(ticks)]
    else:  # slow drift
        slope = draw(small) / 16
        out = [start + i * slope for i in range(ticks)]
    gaps = draw(st.sets(st.integers(0, max(ticks - 1, 0)), max_size=ticks // 5))
    return [np.nan if i in gaps else v for i, v in enumerate(out)]


@st.composite
def matrices(draw: st.DrawFn, exact: bool = True, max_series: int = 4) -> np.ndarray:
    ticks = draw(st.integers(1, 60))
    n = draw(st.integers(1, max_series))
    cols = [draw(series_values(ticks, exact)) for _ in range(n)]
    return np.array(cols, dtype=np.float64).T.reshape(ticks, n)


def deltas(n: int, exact: bool = True) -> st.SearchStrategy[list[float]]:
    if exact:
        one = st.one_of(st.just(0.0), st.integers(0, 80).map(lambda k: k / GRID))
    else:
        one = st.one_of(st.just(0.0), st.floats(0, 1e4, allow_nan=False), st.floats(1e-300, 1e-6))
    return st.lists(one, min_size=n, max_size=n)


def assert_tracked(policy, f: np.ndarray, sent: np.ndarray, g_before: np.ndarray, line_before=None) -> None:
    """The invariant after a step; ``line_before``: the lines (value, slope, age) before it, for a
    rule whose copy is a line (a copy not sent is its line one step on)."""
    finite = np.isfinite(f)
    assert np.all(np.abs(f[finite] - policy.g[finite]) <= policy.delta[finite]), (f, policy.g, policy.delta)
    assert np.all(np.isnan(policy.g[~finite])), "an unreadable series must be invalidated"
    assert not np.any(sent[~finite]), "nothing is sent for an unreadable series"
    kept = ~sent & finite
    expected = g_before
    if line_before is not None:
        value, slope, age = line_before
        with np.errstate(invalid="ignore"):
            expected = value + slope * (age + 1).astype(np.float64)
        # what line() says now is the copy, bit for bit
        v, s, a = policy.line(np.arange(policy.n))
        assert np.array_equal((v + s * a.astype(np.float64))[finite], policy.g[finite])
        assert np.all(s[sent] == s[sent]) and np.all(np.isfinite(s))
    assert np.array_equal(policy.g[kept], expected[kept]), "g changed without a send"
    fresh = sent & np.isnan(g_before)
    assert np.array_equal(policy.g[fresh], f[fresh]), "the first value of a round is sent as is"


# ----------------------------------------------------------------------------- the invariant


@settings(max_examples=300, deadline=None)
@given(data=st.data(), exact=st.booleans(), gamma=st.sampled_from([0.0, 0.125, 1.0, 3.0]))
def test_every_rule_stays_within_delta_every_tick(data: st.DataObject, exact: bool, gamma: float) -> None:
    values = data.draw(matrices(exact))
    delta = data.draw(deltas(values.shape[1], exact))
    policies = [make_tracker(rule, delta, gamma) for rule in RULES]
    policies += [SegmentTracker(delta, lean=0.0), SegmentTracker(delta, lean=1.0, carry=1.0, patience=1)]
    for policy in policies:
        for f in values:
            g_before = policy.g.copy()
            line_before = policy.line(np.arange(policy.n))
            sent = policy.step(f)
            assert_tracked(policy, f, sent, g_before, line_before)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_invariant_holds_across_set_delta_resize_and_invalidate(data: st.DataObject) -> None:
    """Mid-stream changes: the bound that holds is the Δ in force (``delta``), a pending Δ
    takes over exactly when its series starts a new round, and new series start uninitialised."""
    values = data.draw(matrices(exact=False, max_series=6))
    n = values.shape[1]
    n0 = data.draw(st.integers(1, n))
    policies = [make_tracker(rule, data.draw(deltas(n0, False))) for rule in RULES]
    for row in values:
        for p in policies:
            action = data.draw(st.sampled_from(["none", "none", "set_delta", "resize", "invalidate"]))
            if action == "set_delta":
                idx = data.draw(st.lists(st.integers(0, p.n - 1), min_size=1, max_size=p.n, unique=True))
                p.set_delta(idx, data.draw(deltas(len(idx), False)))
            elif action == "resize" and p.n < n:
                old = p.n
                p.resize(data.draw(st.integers(old + 1, n)), data.draw(st.floats(0, 100)))
                assert np.all(np.isnan(p.g[old:])), "new series start uninitialised"
            elif action == "invalidate":
                gone = data.draw(st.integers(0, p.n - 1))
                p.invalidate([gone])
                assert np.isnan(p.g[gone])
            f = row[: p.n]
            g_before, delta_before = p.g.copy(), p.delta.copy()
            line_before = p.line(np.arange(p.n))
            sent = p.step(f)
            assert_tracked(p, f, sent, g_before, line_before)
            if isinstance(p, AtomTracker):
                changed = p.delta != delta_before
                assert not np.any(changed & ~sent), "Δ changed outside a new round"
                assert np.array_equal(p.delta[changed], p._next_delta[changed])
                assert np.array_equal(p.g[changed], f[changed]), "a new round starts from f"


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(1e-300, 1e300),
    delta_ulps=st.floats(0, 12),
    steps=st.lists(st.integers(-16, 16), min_size=2, max_size=60),
)
def test_invariant_is_exact_at_ulp_scale(base: float, delta_ulps: float, steps: list[int]) -> None:
    """Δ and the moves of f a few ulps wide: where S is a handful of floats, rounding of
    f ± Δ and of the midpoint could break |f − g| ≤ Δ; the tracker must not let it."""
    ulp = float(np.spacing(base))
    delta = delta_ulps * ulp
    values = base + np.array(steps, dtype=np.float64) * ulp
    policies = [make_tracker(rule, [delta]) for rule in RULES]
    policies.append(SegmentTracker([delta], lean=1.0, carry=1.0, patience=1))
    for policy in policies:
        for f in values:
            g_before = policy.g.copy()
            line_before = policy.line([0])
            sent = policy.step(np.array([f]))
            assert_tracked(policy, np.array([f]), sent, g_before, line_before)


def test_pending_delta_applies_from_the_next_round() -> None:
    t = AtomTracker([4.0])
    t.step(np.array([10.0]))
    t.set_delta([0], 1.0)
    assert t.delta[0] == 4.0  # the round in course keeps its Δ
    assert not t.step(np.array([13.0]))[0]  # within the old Δ = 4: not sent
    t.step(np.array([20.0]))  # S = [6,14] ∩ [16,24] is empty: a new round, with Δ = 1
    assert t.delta[0] == 1.0 and t.g[0] == 20.0
    assert t.step(np.array([21.5]))[0]  # beyond the new Δ


def test_set_delta_applies_at_once_to_a_series_not_in_a_round() -> None:
    t = AtomTracker([4.0, 4.0])
    t.step(np.array([10.0, np.nan]))
    t.set_delta([0, 1], 2.0)
    assert t.delta.tolist() == [4.0, 2.0]


# ----------------------------------------------------------------------------- the algorithm


def test_hand_worked_rounds_halve_s() -> None:
    """Δ = 4, γ = 0. Each line: f, sent?, g, S after the step."""
    t = AtomTracker([4.0])
    expected = [
        (10, True, 10.0, (6, 14)),  # round 1 starts: g = f, S = [f−Δ, f+Δ]
        (13, False, 10.0, (6, 14)),  # |13 − 10| ≤ 4
        (15, True, 12.5, (11, 14)),  # S ∩ [11, 19] = [11, 14], midpoint 12.5
        (16, False, 12.5, (11, 14)),
        (17, True, 13.5, (13, 14)),  # S ∩ [13, 21] = [13, 14], midpoint 13.5
        (9, True, 9.0, (5, 13)),  # S ∩ [5, 13] = [13, 13] cannot be halved: round 2 from 9
        (14, True, 11.5, (10, 13)),  # S ∩ [10, 18] = [10, 13]
        (3, True, 3.0, (-1, 7)),  # S ∩ [−1, 7] is empty: round 3 from 3
    ]
    for f, sent, g, (lo, hi) in expected:
        mask = t.step(np.array([float(f)]))
        assert (bool(mask[0]), t.g[0], t.lower[0], t.upper[0]) == (sent, g, lo, hi), f


def test_gamma_ends_a_round_when_s_is_narrower() -> None:
    t = AtomTracker([4.0], gamma=1.5)
    for f in (10.0, 15.0):
        t.step(np.array([f]))
    assert t.g[0] == 12.5
    t.step(np.array([17.0]))  # S = [13, 14], width 1 ≤ γ: new round from 17, not 13.5
    assert (t.g[0], t.lower[0], t.upper[0]) == (17.0, 13.0, 21.0)


def test_delta_zero_sends_on_every_change_only() -> None:
    f = np.array([1.0, 1.0, 2.0, 2.0, 2.0, -3.5, 1.0, 1.0])
    for policy in (AtomTracker([0.0]), Deadband([0.0])):
        sent = [bool(policy.step(np.array([x]))[0]) for x in f]
        assert sent == [True, False, True, False, False, True, True, False]


def test_first_value_after_a_gap_is_sent_as_is() -> None:
    t = AtomTracker([2.0, 2.0])
    t.step(np.array([0.0, 0.0]))
    t.step(np.array([3.0, 0.0]))  # series 0 now holds a midpoint
    assert t.g[0] == 1.5
    sent = t.step(np.array([np.nan, np.inf]))
    assert not sent.any() and np.isnan(t.g).all()
    sent = t.step(np.array([1.75, 7.25]))
    assert sent.all() and t.g.tolist() == [1.75, 7.25]


def test_atom_beats_deadband_on_oscillation_and_loses_on_slow_drift() -> None:
    """The paper's example (f alternating 0 and Δ + 1) and its opposite case, a slow drift."""
    delta = 4.0
    oscillation = np.tile([0.0, 5.0], 200)
    atom = simulate(AtomTracker([delta]), oscillation).messages[0]
    deadband = simulate(Deadband([delta]), oscillation).messages[0]
    assert (atom, deadband, optimal_messages(oscillation, delta)[0]) == (2, 400, 1)

    drift = np.arange(4000) * 0.01
    atom = simulate(AtomTracker([delta]), drift).messages[0]
    deadband = simulate(Deadband([delta]), drift).messages[0]
    optimum = optimal_messages(drift, delta)[0]
    assert optimum < deadband < atom


def test_segment_rounds_end_where_the_optimum_segments_end() -> None:
    """With the midpoint (lean = carry = 0) every new round is a segment of the greedy optimum:
    a ramp up and down, Δ = 2, each new round's start is where greedy starts a segment."""
    values = np.array([0.0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 0.5, 9, 9])
    t = SegmentTracker([2.0], lean=0.0)
    starts = []
    for i, f in enumerate(values):
        before = (t.lower[0], t.upper[0])
        t.step(np.array([f]))
        if t.lower[0] == f - 2.0 and t.upper[0] == f + 2.0 and before != (f - 2.0, f + 2.0):
            starts.append(i)
    # greedy, range ≤ 4: [0..4] [5, 6, 5, 4, 3, 2] [1, 0, 0.5] [9, 9]
    assert starts == [0, 5, 11, 14]
    assert optimal_messages(values, 2.0)[0] == len(starts)


def test_segment_leans_with_a_drift_and_beats_atom() -> None:
    delta = 4.0
    drift = np.arange(4000) * 0.2  # Δ/20 a tick
    optimum = optimal_messages(drift, delta)[0]
    counts = {
        "atom": simulate(AtomTracker([delta]), drift).messages[0],
        "deadband": simulate(Deadband([delta]), drift).messages[0],
        "segment": simulate(SegmentTracker([delta]), drift).messages[0],
        "carry": simulate(SegmentTracker([delta], lean=1.0, carry=1.0, patience=1), drift).messages[0],
    }
    # lean: one send at the top of S lasts to the segment's end (2 per segment, like the deadband's
    # Δ a message); carry: the first value of a round is already f + Δ (1 per segment)
    assert counts["carry"] <= optimum + 2
    assert optimum + 2 < counts["segment"] <= 2 * optimum and counts["deadband"] <= 2 * optimum
    assert 2 * optimum < counts["atom"]


def test_segment_hand_worked() -> None:
    """Δ = 4, lean 1: a break upwards sends the top of S, downwards the bottom."""
    t = SegmentTracker([4.0])
    expected = [
        (10, True, 10.0, (6, 14)),  # a new round: g = f
        (12, False, 10.0, (8, 14)),  # every sample narrows S, also without a send
        (15, True, 14.0, (11, 14)),  # a break upwards: the top of S
        (11, False, 14.0, (11, 14)),
        (9, True, 11.0, (11, 13)),  # a break downwards: the bottom of S
        (16, True, 13.0, (12, 13)),  # upwards again: the top of S ∩ [12, 20]
        (18, True, 18.0, (14, 22)),  # S ∩ [14, 22] is empty: a new round from f
    ]
    for f, sent, g, (lo, hi) in expected:
        mask = t.step(np.array([float(f)]))
        assert (bool(mask[0]), t.g[0], t.lower[0], t.upper[0]) == (sent, g, lo, hi), f


def test_adaptive_sends_what_atom_sends_until_another_rule_does_better() -> None:
    oscillation = np.tile([0.0, 5.0], 200)  # ATOM's best case: 2 messages, the deadband 400
    assert simulate(AdaptiveTracker([4.0]), oscillation).messages[0] == 2
    drift = np.arange(4000) * 0.2
    adaptive = AdaptiveTracker([4.0])
    sim = simulate(adaptive, drift)
    assert sim.messages[0] < simulate(AtomTracker([4.0]), drift).messages[0] / 2
    assert adaptive.leader[0] == 5, "the trend expert leads on a drift"


@settings(max_examples=300, deadline=None)
@given(data=st.data(), budget=st.sampled_from([1.0, 1.05, 1.5]), gamma=st.sampled_from([0.0, 0.5]))
def test_adaptive_never_sends_more_than_its_budget_times_what_atom_sends(
    data: st.DataObject, budget: float, gamma: float
) -> None:
    values = data.draw(matrices(exact=True))
    delta = data.draw(deltas(values.shape[1], exact=True))
    adaptive, atom = AdaptiveTracker(delta, gamma=gamma, budget=budget), AtomTracker(delta, gamma=gamma)
    ours, theirs = np.zeros(values.shape[1]), np.zeros(values.shape[1])
    for row in values:
        sent, atom_sent = adaptive.step(row), atom.step(row)
        ours += sent
        theirs += atom_sent
        assert np.all(ours <= budget * theirs), (ours, theirs)
        if budget == 1.0:  # no room to try another rule: ATOM's messages exactly
            assert np.array_equal(sent, atom_sent) and np.array_equal(adaptive.g[sent], atom.g[sent])


def test_the_budget_keeps_sparse_series_within_5_percent_of_atom_where_following_others_did_not() -> None:
    rng = np.random.default_rng(5)
    walk = np.cumsum(rng.normal(0, 0.08, (2000, 100)), axis=0)  # about 35 ATOM messages a series
    spikes = rng.uniform(-3.0, 3.0, walk.shape) * (rng.random(walk.shape) < 0.01)
    values = np.concatenate([walk, walk + spikes], axis=1)
    delta = np.ones(values.shape[1])
    atom = simulate(AtomTracker(delta), values).messages
    free = simulate(AdaptiveTracker(delta, budget=None), values).messages
    kept = simulate(AdaptiveTracker(delta), values).messages
    assert np.sum(free > 1.05 * atom) >= 1, "without the budget some series cost more than 5 % over ATOM"
    assert np.all(kept <= 1.05 * atom)
    assert kept.sum() < atom.sum(), "and with it the rule still saves messages overall"


def test_on_whole_numbers_the_lattice_rule_covers_two_values_where_a_copy_at_one_covers_one() -> None:
    """Whole-number values at Δ = 0.9: a copy at 52.5 holds for 52 and 53, one at 52 only for 52."""
    rng = np.random.default_rng(2)
    steps = np.cumsum(rng.integers(-1, 2, 3000) * (rng.random(3000) < 0.2))
    walk = (50 + steps).astype(np.float64)[:, None]
    on_grid = LatticeTracker(Deadband([0.9]))
    assert simulate(on_grid, walk).messages[0] < 0.6 * simulate(Deadband([0.9]), walk).messages[0]
    assert on_grid.g[0] % 1 == 0.5 and on_grid.on_grid[0, 0]
    # Alibaba's memory utilisation, whole percents, at Δ = 1 % of its mean: the agent's rule
    memory = read_trace(DATA / "precog" / "m_100_test.csv.gz").values
    delta = [0.01 * float(np.nanmean(memory))]
    lattice = simulate(make_tracker("lattice", delta), memory).messages[0]
    assert lattice < 0.75 * simulate(CenterTracker(delta), memory).messages[0]
    # a value off every grid: the inner rule's values, sent as they are
    off = walk + 0.123456789
    assert (
        simulate(LatticeTracker(CenterTracker([0.9])), off).messages[0]
        == simulate(CenterTracker([0.9]), off).messages[0]
    )
    tracker = LatticeTracker(CenterTracker([0.45]))
    simulate(tracker, walk / 2)  # multiples of 0.5: the grid is 0.5, not 1
    assert tracker.on_grid[0].tolist() == [False, True, True, True, True, True]


def test_adaptive_invalidate_resize_and_set_delta_reach_every_expert() -> None:
    t = AdaptiveTracker([1.0])
    t.step(np.array([3.0]))
    t.resize(2, 2.0)
    t.invalidate([0])
    assert all(np.isnan(e.g[0]) for e in t.experts) and all(e.n == 2 for e in t.experts)
    t.set_delta([1], 5.0)
    assert t.delta[1] == 5.0 and all(e.delta[1] == 5.0 for e in t.experts)
    assert t.step(np.array([1.0, 7.0])).tolist() == [True, True]


def test_trend_follows_a_drift_with_a_few_messages_and_a_level_with_slope_zero() -> None:
    drift = 100.0 + np.arange(2000) * 0.25  # Δ/20 a tick: a constant copy pays a message per 40 ticks
    trend = TrendTracker([5.0])
    sim = simulate(trend, drift)
    assert sim.messages[0] <= 8 and optimal_messages(drift, 5.0)[0] == 49
    assert trend.slope[0] == pytest.approx(0.25, rel=0.1)
    # a level with noise: no slope is ever sent before ``settle`` samples of a segment
    rng = np.random.default_rng(5)
    noise = 50.0 + rng.uniform(-1.0, 1.0, 400)
    level = TrendTracker([1.5], settle=4, corrections=2)
    slopes = []
    for f in noise:
        if level.step(np.array([f]))[0]:
            slopes.append((level.k - level.ka[0], level.slope[0]))
    assert all(s == 0.0 or age >= 4 for age, s in slopes)
    # a new segment starts at f, as the deadband does (ATOM's midpoints do better on noise: 2 here)
    assert simulate(TrendTracker([1.5]), noise).messages[0] <= simulate(Deadband([1.5]), noise).messages[0]


def test_trend_hand_worked() -> None:
    """Δ = 1, settle = 2: a segment from 0 at slope 0; at step 3 (f = 3) the line breaks, the anchor
    is 2 steps old and the cone of slopes through (1, 0) within 1 of f = 1 and 3 is [1, 2]: the
    line of slope 1.5 through the anchor is sent, value 3.0 at step 3."""
    t = TrendTracker([1.0], settle=2)
    assert t.step(np.array([0.0])).tolist() == [True] and t.slope[0] == 0.0
    assert not t.step(np.array([1.0]))[0]
    assert t.step(np.array([3.0]))[0]
    assert (t.g[0], t.slope[0], t.line([0])[2][0]) == (3.0, 1.5, 0)
    assert not t.step(np.array([4.0]))[0] and t.g[0] == 4.5  # the line moves on without a message
    assert t.line([0])[2][0] == 1
    t.invalidate([0])
    assert np.isnan(t.g[0]) and t.slope[0] == 0.0
    assert t.step(np.array([7.0]))[0] and t.g[0] == 7.0 and t.slope[0] == 0.0


def test_center_hand_worked() -> None:
    """Δ = 1, alpha = 0.5: the first value is sent as is and starts the mean; a break sends the
    point of [f − 1, f + 1] nearest the mean (the mean itself when it is within 1 of f)."""
    t = CenterTracker([1.0], alpha=0.5)
    assert t.step(np.array([0.0]))[0] and (t.g[0], t.level[0]) == (0.0, 0.0)
    assert not t.step(np.array([1.0]))[0] and t.level[0] == 0.5
    assert t.step(np.array([-1.5]))[0] and t.g[0] == -0.5  # the mean 0.5 is beyond f + 1
    assert t.level[0] == -0.5
    assert t.step(np.array([1.0]))[0] and t.g[0] == 0.0  # f − 1 = 0, nearest the mean −0.5
    assert t.level[0] == 0.25
    assert t.step(np.array([-1.25]))[0] and t.g[0] == -0.25  # the mean 0.25 is beyond f + 1
    assert not t.step(np.array([0.5]))[0]  # within Δ of the copy: nothing sent
    t.invalidate([0])
    assert np.isnan(t.g[0]) and np.isnan(t.level[0])
    assert t.step(np.array([7.0]))[0] and t.g[0] == 7.0 and t.level[0] == 7.0


def test_center_reaches_the_least_send_rate_on_noise_around_a_level() -> None:
    """Noise uniform in ±1.2Δ: no online copy breaks less often than 1/6 of the ticks
    (docs/tracking.md); the center rule's copy stays near the level and comes within 5 %."""
    noise = 100 + np.random.default_rng(9).uniform(-1.2, 1.2, (20_000, 4))
    rate = simulate(CenterTracker(np.ones(4)), noise).messages.sum() / noise.size
    assert 1 / 6 * 0.98 <= rate <= 1 / 6 * 1.05
    assert rate < 0.75 * simulate(SegmentTracker(np.ones(4)), noise).messages.sum() / noise.size


def test_unknown_rule_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="tracking rule 'midpoint' is unknown; choose one of atom, deadband"):
        make_tracker("midpoint", [1.0])
    with pytest.raises(ValueError, match="lean must be within"):
        SegmentTracker([1.0], lean=2.0)
    with pytest.raises(ValueError, match="decay must be within"):
        AdaptiveTracker([1.0], decay=0.0)
    for budget in (0.99, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="budget must be ≥ 1 and finite"):
            AdaptiveTracker([1.0], budget=budget)
    with pytest.raises(ValueError, match="settle must be a whole number ≥ 1"):
        TrendTracker([1.0], settle=0)
    with pytest.raises(ValueError, match="corrections must be a whole number ≥ 1"):
        TrendTracker([1.0], corrections=1.5)
    with pytest.raises(ValueError, match="alpha must be within"):
        CenterTracker([1.0], alpha=0.0)


# ----------------------------------------------------------------------------- the optimum


@settings(max_examples=300, deadline=None)
@given(data=st.data(), gamma=st.sampled_from([0.0, 0.5]))
def test_optimum_never_exceeds_any_online_policy(data: st.DataObject, gamma: float) -> None:
    values = data.draw(matrices(exact=True))
    delta = data.draw(deltas(values.shape[1], exact=True))
    optimum = optimal_messages(values, delta)
    counts = {
        name: simulate(policy, values).messages
        for name, policy in (
            ("atom", AtomTracker(delta, gamma=gamma)),
            ("deadband", Deadband(delta)),
            ("segment", SegmentTracker(delta)),
            ("drift", SegmentTracker(delta, lean=1.0, carry=1.0, patience=1)),
            ("trend", TrendTracker(delta)),
            ("center", CenterTracker(delta)),
            ("all", SendAll(delta)),
        )
    }
    # the adaptive rule is a line copy where the trend rule leads: held to the constant optimum
    # on the series it sent no slope for
    adaptive, sloped = AdaptiveTracker(delta, gamma=gamma), np.zeros(values.shape[1], dtype=bool)
    counts["adaptive"] = np.zeros(values.shape[1], dtype=np.int64)
    for row in values:
        sent = adaptive.step(row)
        counts["adaptive"] += sent
        sloped[sent] |= adaptive.line(np.flatnonzero(sent))[1] != 0
    lines = optimal_line_messages(values, delta)
    assert np.all(lines <= optimum), "a constant is a line"
    for name, c in counts.items():
        assert np.all(lines <= c), (name, lines, c)
        constant = ~sloped if name == "adaptive" else np.full(c.shape, name != "trend")
        assert np.all(optimum[constant] <= c[constant]), (name, optimum, c)
    assert np.all(counts["deadband"] <= counts["all"]) and np.all(counts["atom"] <= counts["all"])
    assert np.all(optimal_max_error(values, delta) <= np.asarray(delta))


def _fewest_lines_by_brute_force(column: np.ndarray, delta: float) -> int:
    """Greedy runs, each checked against every pair of its samples (O(n²) a run)."""
    count, run = 0, []
    for j, f in enumerate(column):
        if not np.isfinite(f):
            run = []
            continue
        candidate = [*run, (j, f)]
        lo = max(((y2 - y1 - 2 * delta) / (x2 - x1) for (x1, y1), (x2, y2) in _pairs(candidate)), default=-np.inf)
        hi = min(((y2 - y1 + 2 * delta) / (x2 - x1) for (x1, y1), (x2, y2) in _pairs(candidate)), default=np.inf)
        if run and lo <= hi:
            run = candidate
        else:
            count, run = count + 1, [(j, f)]
    return count


def _pairs(points):
    return ((p, q) for i, p in enumerate(points) for q in points[i + 1 :])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_line_optimum_is_the_greedy_cover_by_lines(data: st.DataObject) -> None:
    values = data.draw(matrices(exact=True))
    delta = data.draw(deltas(values.shape[1], exact=True))
    got = optimal_line_messages(values, delta)
    assert got.tolist() == [_fewest_lines_by_brute_force(values[:, j], delta[j]) for j in range(values.shape[1])]


def test_line_optimum_by_hand() -> None:
    ramp = np.concatenate([np.arange(10.0), 9.0 - np.arange(10.0)])  # up 0..9, down 9..0
    assert optimal_line_messages(ramp, 0.25).tolist() == [2]
    assert optimal_messages(ramp, 0.25).tolist() == [19]  # (9, 9 at the top in one)
    zigzag = np.array([0.0, 2.0, 0.0, 2.0])  # any line within 1 of all four: the constant 1
    assert optimal_line_messages(zigzag, 1.0).tolist() == [1]
    assert optimal_line_messages(zigzag, 0.99).tolist() == [2]


def test_optimum_by_hand() -> None:
    values = np.array([[0.0], [1.0], [2.0], [2.5], [np.nan], [2.5], [0.0], [-1.0]])
    # Δ = 1: [0, 1, 2] | gap | [2.5] | [0, −1]  (2.5 after the gap starts a segment of its own)
    assert optimal_messages(values, 1.0).tolist() == [4]
    assert optimal_max_error(values, 1.0).tolist() == [1.0]


# ----------------------------------------------------------------------------- interface


def test_simulate_reports_messages_and_error() -> None:
    values = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, np.nan], [4.5, 5.0]])
    sim = simulate(Deadband([1.5, 0.0]), values)
    assert sim.messages.tolist() == [2, 2]
    assert sim.max_error.tolist() == [1.0, 0.0]
    assert simulate(SendAll([0.0, 0.0]), values).messages.tolist() == [4, 3]


def test_resize_grows_only_and_takes_deltas_for_new_series() -> None:
    t = AtomTracker([1.0])
    t.step(np.array([3.0]))
    t.resize(3, [2.0, 5.0])
    assert t.n == 3 and t.delta.tolist() == [1.0, 2.0, 5.0]
    assert t.g[0] == 3.0 and np.isnan(t.g[1:]).all()
    t.resize(4, np.array([9.0, 9.0, 9.0, 7.0]))  # full length: the new tail is used
    assert t.delta.tolist() == [1.0, 2.0, 5.0, 7.0]
    t.resize(2, 1.0)  # never shrinks
    assert t.n == 4
    assert t.step(np.array([3.0, 1.0, 2.0, 3.0])).tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="delta has 2 entries"):
        t.resize(7, [1.0, 2.0])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_delta_and_gamma_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="delta must be finite and ≥ 0"):
        AtomTracker([1.0, bad])
    with pytest.raises(ValueError, match="delta must be finite"):
        Deadband([1.0]).set_delta([0], bad)
    with pytest.raises(ValueError, match="gamma must be finite"):
        AtomTracker([1.0], gamma=bad)


def test_step_refuses_a_wrong_number_of_values() -> None:
    with pytest.raises(ValueError, match="expected 2 values"):
        AtomTracker([1.0, 1.0]).step(np.zeros(3))


def test_empty_tracker_steps() -> None:
    t = AtomTracker()
    assert t.n == 0 and t.step(np.zeros(0)).shape == (0,)
