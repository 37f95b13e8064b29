"""Online tracking of many series at once: which values the agent sends to the controller.

What lives here: ATOM's Algorithm 1 (:class:`AtomTracker`), the deadband and send-all baselines,
rules that send fewer messages on drifts and noise (:class:`SegmentTracker`, :class:`TrendTracker`,
:class:`CenterTracker`, :class:`LatticeTracker`, :class:`AdaptiveTracker`),
the agent's rule names (:data:`RULES`, :func:`make_tracker`), the offline optimum
(:func:`optimal_messages`) and :func:`simulate`, all vectorised over the series with O(1) work per
series and sample. Invariant after every ``step``: ``|f − g| ≤ Δ``
exactly in float64 for every finite ``f``. What does not: the agent's tick loop and what it
publishes (:mod:`atomwatch.agent.runtime`). Conventions and reasoning: ``docs/tracking.md``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "RULES",
    "AdaptiveTracker",
    "AtomTracker",
    "CenterTracker",
    "Deadband",
    "LatticeTracker",
    "Policy",
    "SegmentTracker",
    "SendAll",
    "Simulation",
    "TrendTracker",
    "optimal_line_messages",
    "optimal_max_error",
    "optimal_messages",
    "make_tracker",
    "simulate",
]


def _check_delta(delta: ArrayLike | float, what: str = "delta") -> np.ndarray:
    d = np.array(delta, dtype=np.float64)  # a copy: callers keep their arrays
    if d.ndim > 1:
        raise ValueError(f"{what} must be a number or a 1-d array, got shape {d.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        bad = d[~(np.isfinite(d) & (d >= 0))] if d.ndim else d
        raise ValueError(f"{what} must be finite and ≥ 0, got {np.ravel(bad)[:5].tolist()}")
    return d


class _Policy:
    """State and bookkeeping common to every policy: ``n``, ``g``, ``delta``, resize, invalidate."""

    def __init__(self, delta: ArrayLike = ()) -> None:
        d = _check_delta(delta)
        self.delta: np.ndarray = np.atleast_1d(d).copy()
        self.n: int = int(self.delta.shape[0])
        self.g: np.ndarray = np.full(self.n, np.nan)

    def resize(self, n: int, delta: ArrayLike | float) -> None:
        """Grow to ``n`` series; the new ones are uninitialised (their first finite value is sent).

        ``delta`` is one Δ for every new series, an array of one Δ per new series, or an array
        of length ``n`` of which the new tail is used. Never shrinks: ``n ≤ self.n`` does
        nothing (a series that is gone is invalidated, its slot is kept).
        """
        n = int(n)
        if n <= self.n:
            return
        new = n - self.n
        d = _check_delta(delta)
        if d.ndim == 1 and d.shape[0] == n and n != new:
            d = d[self.n :]
        elif d.ndim == 1 and d.shape[0] not in (1, new):
            raise ValueError(f"resize to {n}: delta has {d.shape[0]} entries, expected 1, {new} or {n}")
        self._grow(new, np.broadcast_to(d, (new,)).astype(np.float64))
        self.n = n

    def _grow(self, new: int, delta: np.ndarray) -> None:
        self.delta = np.concatenate([self.delta, delta])
        self.g = np.concatenate([self.g, np.full(new, np.nan)])

    def set_delta(self, idx: ArrayLike, delta: ArrayLike | float) -> None:
        """Set Δ of the series ``idx`` (indices or a bool mask); it applies at once."""
        self.delta[np.asarray(idx)] = _check_delta(delta)

    def invalidate(self, idx: ArrayLike) -> None:
        """The series ``idx`` are stale or gone: forget ``g``; the next finite value is sent."""
        self.g[np.asarray(idx)] = np.nan

    def step(self, f: ArrayLike) -> np.ndarray:
        """Take the current values ``f``; return the mask of series to send (values: ``g[mask]``)."""
        raise NotImplementedError

    def line(self, idx: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The copy of the series ``idx`` as lines: (value, slope, age). The copy at the last
        step is ``value + slope * age`` evaluated in float64 in that order, and ``age`` more
        steps on it is ``value + slope * (age + age')``; a constant copy is (``g``, 0, 0)."""
        idx = np.asarray(idx)
        g = self.g[idx]
        return g, np.zeros_like(g), np.zeros(g.shape, dtype=np.int64)

    def _readable(self, f: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(f as float64, mask of finite values); invalidates the unreadable series."""
        f = np.asarray(f, dtype=np.float64)
        if f.shape != (self.n,):
            raise ValueError(f"step: expected {self.n} values, got an array of shape {f.shape}")
        readable = np.isfinite(f)
        self.g[~readable] = np.nan
        return f, readable


class AtomTracker(_Policy):
    """ATOM's Algorithm 1, one independent tracker per series.

    Per series, a *round* starts from the current value ``f``: ``S = [f − Δ, f + Δ]`` and
    ``g = f`` is sent. At each later sample:

    - ``|f − g| ≤ Δ``: nothing is sent;
    - otherwise ``S = S ∩ [f − Δ, f + Δ]`` (the values that were within Δ of every sample that
      broke the bound this round, the first one included); if ``S`` can still be halved,
      ``g = midpoint(S)`` is sent, else a new round starts from ``f``.

    *Can still be halved* means: ``upper(S) − lower(S) > γ`` and the float midpoint
    ``m = lower + (upper − lower)/2`` lies strictly inside ``S``. With ``γ = 0`` (the default)
    this is the float resolution: a round ends when ``S`` is empty or no float lies strictly
    between its bounds (at most one halving fewer than exact arithmetic would allow). With
    Δ = 0, ``S`` is a single point, so every change of ``f`` starts a new round and is sent.

    Why the invariant ``abs(f − g) ≤ Δ`` holds exactly in float64: a new round sends ``g = f``.
    A midpoint ``m`` is sent only with ``m < upper ≤ fl(f + Δ)``, so ``m`` is at most the float
    just below ``fl(f + Δ)``, which cannot exceed the exact ``f + Δ`` (else it, not
    ``fl(f + Δ)``, would be the nearest float to ``f + Δ``); so ``m − f ≤ Δ`` exactly and the
    rounded ``fl(m − f) ≤ Δ`` too (Δ is a float and rounding is monotone). The lower side is
    symmetric. Overflow (``f + Δ = inf``) gives no interior midpoint, hence a new round.

    ``set_delta`` on a series inside a round is *pending*: the Δ in force (``delta``) changes when
    that series' next round starts, as ATOM's agents apply a new Δ from the next round; until
    then the old bound holds. Call :meth:`invalidate` as well to apply it at the next sample.
    """

    def __init__(self, delta: ArrayLike = (), gamma: float = 0.0) -> None:
        super().__init__(delta)
        gamma = float(gamma)
        if not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be finite and ≥ 0, got {gamma}")
        self.gamma = gamma
        self.lower = np.full(self.n, np.nan)  # S of the current round
        self.upper = np.full(self.n, np.nan)
        self._next_delta = self.delta.copy()  # Δ of each series' next round

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        self._next_delta = np.concatenate([self._next_delta, delta])
        self.lower = np.concatenate([self.lower, np.full(new, np.nan)])
        self.upper = np.concatenate([self.upper, np.full(new, np.nan)])

    def set_delta(self, idx: ArrayLike, delta: ArrayLike | float) -> None:
        """Pending Δ for the series ``idx``: in force from their next round (at once if none runs)."""
        self._next_delta[np.asarray(idx)] = _check_delta(delta)
        idle = np.isnan(self.g)
        self.delta[idle] = self._next_delta[idle]

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        in_round = readable & ~np.isnan(self.g)
        with np.errstate(invalid="ignore"):
            moved = in_round & ~(np.abs(f - self.g) <= self.delta)

        # S = S ∩ [f − Δ, f + Δ] where f broke the bound
        np.maximum(self.lower, f - self.delta, out=self.lower, where=moved)
        np.minimum(self.upper, f + self.delta, out=self.upper, where=moved)
        width = self.upper - self.lower
        mid = self.lower + width / 2
        with np.errstate(invalid="ignore"):
            halvable = (width > self.gamma) & (self.lower < mid) & (mid < self.upper)
        send_mid = moved & halvable
        np.copyto(self.g, mid, where=send_mid)

        # new round from f: uninitialised / invalidated series, or S exhausted
        new_round = (readable & ~in_round) | (moved & ~halvable)
        np.copyto(self.delta, self._next_delta, where=new_round)
        np.copyto(self.lower, f - self.delta, where=new_round)
        np.copyto(self.upper, f + self.delta, where=new_round)
        np.copyto(self.g, f, where=new_round)
        return send_mid | new_round


class Deadband(_Policy):
    """Send ``f`` when ``|f − g| > Δ`` (Sparkplug's deadband); ``set_delta`` applies at once."""

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        with np.errstate(invalid="ignore"):
            send = readable & ~(np.abs(f - self.g) <= self.delta)  # NaN g: never sent yet
        np.copyto(self.g, f, where=send)
        return send


class SegmentTracker(_Policy):
    """A round is a greedy segment; the value sent leans the way the series has been moving.

    Per series, ``S`` holds the values within Δ of *every* readable sample since the round
    started (ATOM intersects only the samples that broke the bound), so a round ends exactly
    where the offline optimum's segment ends: when ``S`` is empty. In between, a sample with
    ``|f − g| > Δ`` (a *break*, upwards or downwards) sends a point of ``S``:
    ``lower + w · (upper − lower)`` with ``w = ½ + ½ · lean · direction`` once ``patience + 1``
    breaks in a row went the same way, else the midpoint (``w = ½``). A new round after an
    exhausted ``S`` sends ``f + carry · direction · Δ`` once ``patience`` breaks in a row went the
    same way, else ``f``: on a steady drift the copy then lasts the whole next segment.
    ``lean = carry = 0`` is the midpoint rule on greedy segments.

    Exactness: every value sent is checked in float64 against the current ``f``
    (``|f − g| ≤ Δ``); a candidate that fails (rounding at the edge of ``S``, overflow) is
    replaced by ``f`` and a new round. ``set_delta`` applies at once (a smaller Δ may end the
    round at the next break).
    """

    def __init__(self, delta: ArrayLike = (), lean: float = 1.0, carry: float = 0.0, patience: int = 0) -> None:
        super().__init__(delta)
        for name, x in (("lean", lean), ("carry", carry)):
            if not 0 <= float(x) <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {x}")
        if int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be a whole number ≥ 0, got {patience}")
        self.lean, self.carry, self.patience = float(lean), float(carry), int(patience)
        self.lower = np.full(self.n, np.nan)
        self.upper = np.full(self.n, np.nan)
        self.direction = np.zeros(self.n)  # sign of the last break: +1 up, −1 down, 0 none yet
        self.streak = np.zeros(self.n)  # breaks in a row in that direction

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        self.lower = np.concatenate([self.lower, np.full(new, np.nan)])
        self.upper = np.concatenate([self.upper, np.full(new, np.nan)])
        self.direction = np.concatenate([self.direction, np.zeros(new)])
        self.streak = np.concatenate([self.streak, np.zeros(new)])

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        d = self.delta
        in_round = readable & ~np.isnan(self.g)
        fresh = readable & ~in_round
        self.direction[fresh] = 0.0
        self.streak[fresh] = 0.0
        with np.errstate(invalid="ignore"):
            diff = f - self.g
            broke = in_round & ~(np.abs(diff) <= d)
            lo = np.maximum(self.lower, f - d)
            hi = np.minimum(self.upper, f + d)
            way = np.sign(diff)
            self.streak = np.where(broke, np.where(way == self.direction, self.streak + 1, 1.0), self.streak)
            np.copyto(self.direction, way, where=broke)
            lean = np.where(self.streak > self.patience, self.lean, 0.0) * self.direction
            candidate = lo + (hi - lo) * (0.5 + 0.5 * lean)
            inside = broke & (lo <= hi) & (np.abs(f - candidate) <= d)
            new_round = fresh | (broke & ~inside)
            carry = np.where(self.streak >= self.patience, self.carry, 0.0) * self.direction
            start = f + carry * d
            start = np.where(np.abs(f - start) <= d, start, f)
        np.copyto(self.lower, lo, where=readable)
        np.copyto(self.upper, hi, where=readable)
        np.copyto(self.lower, f - d, where=new_round)
        np.copyto(self.upper, f + d, where=new_round)
        np.copyto(self.g, candidate, where=inside)
        np.copyto(self.g, start, where=new_round)
        return inside | new_round


class CenterTracker(_Policy):
    """When a message is forced, send the point of ``[f − Δ, f + Δ]`` nearest the series' level.

    The level is an exponentially weighted mean of the readable samples (weight ``alpha`` on the
    newest; the first sample of a series, or the first after a gap, starts it). On noise around a
    level wider than 2Δ, the copy then sits near the level, where no fixed copy breaks less
    often: the least send probability of any online rule (``docs/tracking.md``, *How close can an
    online rule get*). On a random walk the mean lags and the copy sits at the edge the walk came
    from: the deadband is the better rule there.

    Exactness: the value sent is checked in float64 against the current ``f``
    (``|f − g| ≤ Δ``); one that fails (rounding at the edge, overflow) is replaced by ``f``.
    ``set_delta`` applies at once.
    """

    def __init__(self, delta: ArrayLike = (), alpha: float = 0.3) -> None:
        super().__init__(delta)
        if not 0 < float(alpha) <= 1:
            raise ValueError(f"alpha must be within (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.level = np.full(self.n, np.nan)

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        self.level = np.concatenate([self.level, np.full(new, np.nan)])

    def invalidate(self, idx: ArrayLike) -> None:
        super().invalidate(idx)
        self.level[np.asarray(idx)] = np.nan

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        d = self.delta
        self.level[~readable] = np.nan
        with np.errstate(invalid="ignore", over="ignore"):
            np.copyto(self.level, f, where=readable & ~np.isfinite(self.level))
            send = readable & ~(np.abs(f - self.g) <= d)  # NaN g: never sent yet
            near = np.minimum(np.maximum(self.level, f - d), f + d)
            near = np.where(np.abs(f - near) <= d, near, f)  # False for a NaN level too
            np.copyto(self.g, near, where=send)
            self.level += self.alpha * (f - self.level)
        return send


class LatticeTracker(_Policy):
    """A constant-copy rule made to use the grid its series' values lie on (whole numbers, or
    multiples of 0.5, 0.25, 0.1, 0.05, 0.01: :data:`STEPS`, learnt per series from the values
    it sends).

    On a grid of step q the copy only matters through the grid points within Δ of it: ``m + 1``
    of them at most (``m = ⌊2Δ/q⌋``), and ``2⌊Δ/q⌋ + 1`` for a copy that is itself a grid
    point, one fewer when Δ/q has a fractional part of ½ or more (whole numbers at Δ = 0.9: one
    value for a copy at 52, two for a copy at 52.5). When its copy breaks, this rule takes the
    value its ``inner`` rule holds and moves it to the middle of the run of ``m + 1`` grid points
    nearest it that holds the current value. A series with a value off every grid (to 1e-9) is
    not moved, nor is the first value of a series (sent as is). The move is kept only if
    ``|f − g| ≤ Δ`` holds for it in float64, so the invariant never depends on the grid guess.
    ``inner`` must keep a constant copy (not :class:`TrendTracker`). With ``step_inner=False``
    the caller steps ``inner`` before this rule each tick (the adaptive rule, whose own center and
    segment experts are the inner rules of its lattice experts, so each runs once a tick).
    """

    #: the grid steps tried, coarsest first: a series takes the first one all its values lie on
    STEPS = np.array([1.0, 0.5, 0.25, 0.1, 0.05, 0.01])

    def __init__(self, inner: _Policy, step_inner: bool = True) -> None:
        super().__init__(inner.delta)
        self.inner, self.step_inner = inner, step_inner
        self.on_grid = np.ones((self.n, self.STEPS.size), dtype=bool)

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        self.inner.resize(self.n + new, delta)
        self.on_grid = np.concatenate([self.on_grid, np.ones((new, self.STEPS.size), dtype=bool)])

    def set_delta(self, idx: ArrayLike, delta: ArrayLike | float) -> None:
        self.inner.set_delta(idx, delta)
        self.delta = self.inner.delta.copy()

    def invalidate(self, idx: ArrayLike) -> None:
        super().invalidate(idx)
        self.inner.invalidate(idx)

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        if self.step_inner:
            self.inner.step(f)
        self.delta = self.inner.delta.copy()  # (a pending Δ of ATOM's takes over with its round)
        with np.errstate(invalid="ignore", over="ignore"):
            send = readable & ~(np.abs(f - self.g) <= self.delta)
            if send.any():
                at = np.flatnonzero(send)
                value, x, d = self.inner.g[at], f[at], self.delta[at]
                k = x[:, None] / self.STEPS  # the grid is learnt from the values sent (O(1) a send)
                self.on_grid[at] &= np.abs(k - np.round(k)) <= 1e-9 * np.maximum(1.0, np.abs(k))
                grid = self.on_grid[at]
                q = self.STEPS[np.argmax(grid, axis=1)]
                m = np.floor(2 * d / q)
                half = m * q / 2
                start = np.clip(np.round((value - half) / q) * q, x - m * q, x)
                moved = start + half
                keep = grid.any(axis=1) & np.isfinite(moved) & (np.abs(x - moved) <= d) & np.isfinite(self.g[at])
                self.g[at] = np.where(keep, moved, value)
        return send


class TrendTracker(_Policy):
    """A line copy: the controller's copy at step ``k`` is ``base + slope * (k − k0)``.

    Per series, a *segment* starts from the current value ``f``: it is the *anchor* (``ka``,
    ``f``) and the slope sent is 0, so a series that does not move costs what a constant copy
    costs. The agent keeps, over the readable samples since the anchor, the interval of constants
    within Δ of all of them (``flat_lo``, ``flat_hi``, as :class:`SegmentTracker` does) and the
    *cone* of slopes whose lines through the anchor are (``lo``, ``hi``, narrowed by each sample
    as the swing filter does). When the copy leaves the truth by more than Δ at the current step
    (a *break*):

    - while the copy is flat (``flat``) and a constant still fits the segment, the constant at
      the edge of that interval the way the series broke is sent (slope 0): on noise and levels
      this rule is the segment rule (``lean = 1``);
    - else if the anchor is at least ``settle`` steps old, fewer than ``corrections`` slopes were
      sent in this segment and the cone is not empty, the line through the anchor with the cone's
      middle slope is sent (its value at this step, and the slope);
    - else a new segment starts from ``f``.

    ``settle`` keeps a few noisy samples from setting a slope; ``corrections`` bounds what a
    series that is a level with noise, not a trend, pays for lines (each is a message). The
    copy must hold live, at every step: the slope cannot wait for the segment's end as the
    offline slide filter and O'Rourke's fitting do (their optimum: :func:`optimal_line_messages`).

    Exactness: the copy at a step is evaluated as ``base + slope * float(k − k0)`` here and by
    the controller, and ``|f − copy| ≤ Δ`` is checked on that float; a value that fails the check
    (rounding, overflow) starts a new segment from ``f`` instead. ``g`` is the copy at the last
    step; :meth:`line` gives (value, slope, age) to send.
    """

    def __init__(self, delta: ArrayLike = (), settle: int = 4, corrections: int = 2, flat: bool = True) -> None:
        super().__init__(delta)
        for name, x in (("settle", settle), ("corrections", corrections)):
            if int(x) != x or x < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {x}")
        self.settle, self.corrections, self.flat = int(settle), int(corrections), bool(flat)
        self.k = 0  # steps taken
        n = self.n
        self.base = np.full(n, np.nan)
        self.slope = np.zeros(n)
        self.k0 = np.zeros(n, dtype=np.int64)
        self.anchor = np.full(n, np.nan)  # the segment's first value, at step ka
        self.ka = np.zeros(n, dtype=np.int64)
        self.lo = np.full(n, -np.inf)  # the cone of slopes through the anchor
        self.hi = np.full(n, np.inf)
        self.fixes = np.zeros(n, dtype=np.int64)  # slopes sent in this segment
        self.flat_lo = np.full(n, np.nan)  # the constants within Δ of every sample of the segment
        self.flat_hi = np.full(n, np.nan)

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        cat = np.concatenate
        self.base = cat([self.base, np.full(new, np.nan)])
        self.slope = cat([self.slope, np.zeros(new)])
        self.k0 = cat([self.k0, np.zeros(new, dtype=np.int64)])
        self.anchor = cat([self.anchor, np.full(new, np.nan)])
        self.ka = cat([self.ka, np.zeros(new, dtype=np.int64)])
        self.lo = cat([self.lo, np.full(new, -np.inf)])
        self.hi = cat([self.hi, np.full(new, np.inf)])
        self.fixes = cat([self.fixes, np.zeros(new, dtype=np.int64)])
        self.flat_lo = cat([self.flat_lo, np.full(new, np.nan)])
        self.flat_hi = cat([self.flat_hi, np.full(new, np.nan)])

    def invalidate(self, idx: ArrayLike) -> None:
        super().invalidate(idx)
        self.slope[np.asarray(idx)] = 0.0

    def line(self, idx: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(idx)
        return self.base[idx], self.slope[idx], self.k - self.k0[idx]

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        self.slope[~readable] = 0.0
        self.k += 1
        k, d = self.k, self.delta
        live = readable & ~np.isnan(self.g)
        fresh = readable & ~live
        with np.errstate(all="ignore"):
            copy = self.base + self.slope * (k - self.k0).astype(np.float64)
            held = live & (np.abs(f - copy) <= d)
            j = (k - self.ka).astype(np.float64)
            lo = np.maximum(self.lo, (f - d - self.anchor) / j)
            hi = np.minimum(self.hi, (f + d - self.anchor) / j)
            slope = lo + (hi - lo) / 2
            value = self.anchor + slope * j
            flat_lo = np.maximum(self.flat_lo, f - d)
            flat_hi = np.minimum(self.flat_hi, f + d)
            # while the copy is flat and a constant still fits the segment: the constant nearest
            # the way the series broke (the edge of the interval, as SegmentTracker's lean), else
            # its midpoint (when rounding puts the edge beyond Δ)
            edge = np.where(f > copy, flat_hi, flat_lo)
            mid = np.where(np.abs(f - edge) <= d, edge, flat_lo + (flat_hi - flat_lo) / 2)
            flat = live & ~held & self.flat & (flat_lo <= flat_hi) & (np.abs(f - mid) <= d)
            fix = (
                live
                & ~held
                & ~flat
                & (j >= self.settle)
                & (self.fixes < self.corrections)
                & (lo <= hi)
                & np.isfinite(slope)
                & (np.abs(f - value) <= d)  # False for a value that is not finite
            )
        new = fresh | (live & ~held & ~fix & ~flat)
        np.copyto(self.lo, lo, where=live)
        np.copyto(self.hi, hi, where=live)
        np.copyto(self.flat_lo, flat_lo, where=live)
        np.copyto(self.flat_hi, flat_hi, where=live)
        np.copyto(self.base, mid, where=flat)
        np.copyto(self.g, mid, where=flat)
        np.copyto(self.k0, k, where=flat)
        np.copyto(self.g, copy, where=held)
        np.copyto(self.base, value, where=fix)
        np.copyto(self.slope, slope, where=fix)
        np.copyto(self.k0, k, where=fix)
        np.copyto(self.g, value, where=fix)
        self.fixes += fix
        # a new segment: anchored at f, slope 0, an open cone
        np.copyto(self.anchor, f, where=new)
        np.copyto(self.base, f, where=new)
        np.copyto(self.g, f, where=new)
        self.slope[new] = 0.0
        self.k0[new] = self.ka[new] = k
        self.lo[new], self.hi[new], self.fixes[new] = -np.inf, np.inf, 0
        np.copyto(self.flat_lo, f - d, where=new)
        np.copyto(self.flat_hi, f + d, where=new)
        return fix | new | flat


class AdaptiveTracker(_Policy):
    """Per series, follow whichever of several rules has been sending the fewest messages lately.

    Every *expert* (ATOM, the deadband, four :class:`SegmentTracker` settings, the trend and the
    center rule, and the center and segment rules on their series' grid, :class:`LatticeTracker`)
    runs on every series; its score is its message count, decayed by ``decay`` a tick. The
    leader of a series changes when another expert's score is lower by more than ``hysteresis``
    messages (ATOM leads at first and wins ties). The copy ``g`` is sent only when it breaks the leader's Δ in force,
    and then the leader's own ``g`` is sent: while nothing switches, this sends exactly what the
    leader sends. The invariant holds because every expert keeps it: ``delta`` is the leader's Δ
    in force (ATOM's pending Δ takes over at its next round).

    ``budget`` (1.05; ``None``: off) bounds what following others may cost: with Δ fixed, a
    series never sends more than ``budget`` times what ATOM alone would have sent it, at every
    tick. A series stops following another expert when its next message and one more (the one
    that takes ATOM's copy back) could exceed that: it sends ATOM's line instead, and from then
    on breaks when ATOM does until it has saved enough to try another rule again (proof:
    ``docs/tracking.md``). The price is on sparse series: the first try needs ATOM to have sent
    (2 − budget)/(budget − 1) messages (19 at 1.05).

    :meth:`set_rule` pins series to one rule of :data:`RULES` (its expert always leads, unguarded),
    so one tracker serves series of different rules: the agent's per-metric ``tracking``.
    """

    #: rule name → the expert that leads a series pinned to it (−1: not pinned, the adaptive rule)
    PINS = {"atom": 0, "deadband": 1, "segment": 2, "adaptive": -1, "trend": 5, "center": 6, "lattice": 8}

    def __init__(
        self,
        delta: ArrayLike = (),
        gamma: float = 0.0,
        decay: float = 0.995,
        hysteresis: float = 1.0,
        budget: float | None = 1.05,
    ) -> None:
        super().__init__(delta)
        if not 0 < float(decay) <= 1:
            raise ValueError(f"decay must be within (0, 1], got {decay}")
        if not float(hysteresis) >= 0:
            raise ValueError(f"hysteresis must be ≥ 0, got {hysteresis}")
        if budget is not None and not 1 <= float(budget) < np.inf:
            raise ValueError(f"budget must be ≥ 1 and finite (or None), got {budget}")
        self.decay, self.hysteresis = float(decay), float(hysteresis)
        self.budget = None if budget is None else float(budget)
        segment, center = SegmentTracker(self.delta, lean=1.0), CenterTracker(self.delta)
        self.experts: list[_Policy] = [
            AtomTracker(self.delta, gamma=gamma),
            Deadband(self.delta),
            segment,
            SegmentTracker(self.delta, lean=0.5),
            SegmentTracker(self.delta, lean=1.0, carry=1.0, patience=1),
            TrendTracker(self.delta),
            center,
            SegmentTracker(self.delta, lean=0.0, carry=0.5),
            # the same two on the grid: stepped above (experts run in this order), not again
            LatticeTracker(center, step_inner=False),
            LatticeTracker(segment, step_inner=False),
        ]
        self.k = 0
        self.base = np.full(self.n, np.nan)  # the copy as a line (the leader's when it was sent)
        self.slope = np.zeros(self.n)
        self.k0 = np.zeros(self.n, dtype=np.int64)
        self.score = np.zeros((len(self.experts), self.n))
        self.leader = np.zeros(self.n, dtype=np.intp)
        self.pin = np.full(self.n, -1, dtype=np.intp)
        self.sent = np.zeros(self.n)  # messages so far: this tracker's, and ATOM's expert's
        self.atom_sent = np.zeros(self.n)

    def set_rule(self, idx: ArrayLike, rule: str | list[str]) -> None:
        """Pin the series ``idx`` to ``rule`` (one name, or one per index); ``"adaptive"`` unpins.
        The next send of a pinned series is its rule's value."""
        rules = [rule] if isinstance(rule, str) else list(rule)
        unknown = sorted(set(rules) - set(self.PINS))
        if unknown:
            raise ValueError(f"tracking rule {unknown[0]!r} is unknown; choose one of {', '.join(RULES)}")
        pins = np.array([self.PINS[r] for r in rules], dtype=np.intp)
        idx = np.asarray(idx)
        self.pin[idx] = pins if pins.shape[0] > 1 else pins[0]
        pinned = self.pin >= 0
        self.leader[pinned] = self.pin[pinned]
        self.delta = self._in_force()

    def _grow(self, new: int, delta: np.ndarray) -> None:
        super()._grow(new, delta)
        for e in self.experts:
            e.resize(self.n + new, delta)
        self.score = np.concatenate([self.score, np.zeros((len(self.experts), new))], axis=1)
        self.leader = np.concatenate([self.leader, np.zeros(new, dtype=np.intp)])
        self.pin = np.concatenate([self.pin, np.full(new, -1, dtype=np.intp)])
        self.base = np.concatenate([self.base, np.full(new, np.nan)])
        self.slope = np.concatenate([self.slope, np.zeros(new)])
        self.k0 = np.concatenate([self.k0, np.zeros(new, dtype=np.int64)])
        self.sent = np.concatenate([self.sent, np.zeros(new)])
        self.atom_sent = np.concatenate([self.atom_sent, np.zeros(new)])

    def set_delta(self, idx: ArrayLike, delta: ArrayLike | float) -> None:
        for e in self.experts:
            e.set_delta(idx, delta)
        self.delta = self._in_force()

    def invalidate(self, idx: ArrayLike) -> None:
        super().invalidate(idx)
        self.base[np.asarray(idx)] = np.nan
        self.slope[np.asarray(idx)] = 0.0
        for e in self.experts:
            e.invalidate(idx)

    def _in_force(self) -> np.ndarray:
        return np.stack([e.delta for e in self.experts])[self.leader, np.arange(self.n)]

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        self.k += 1
        self.base[~readable] = np.nan
        self.score *= self.decay
        for k, e in enumerate(self.experts):
            sent = e.step(f)
            self.score[k] += sent
            if k == 0:
                self.atom_sent += sent
        series = np.arange(self.n)
        best = np.argmin(self.score, axis=0)
        switch = self.score[best, series] + self.hysteresis < self.score[self.leader, series]
        np.copyto(self.leader, best, where=switch)
        np.copyto(self.leader, self.pin, where=self.pin >= 0)
        self.delta = self._in_force()
        with np.errstate(invalid="ignore"):
            copy = self.base + self.slope * (self.k - self.k0).astype(np.float64)
            send = readable & ~(np.abs(f - copy) <= self.delta)
        np.copyto(self.g, copy, where=readable)
        if send.any():
            at = np.flatnonzero(send)
            if self.budget is not None:
                # this message and the one that would take ATOM's copy back must fit the budget
                risky = (self.leader[at] != 0) & (self.pin[at] < 0)
                risky &= self.sent[at] + 2 > self.budget * self.atom_sent[at]
                if risky.any():
                    self.leader[at[risky]] = 0
                    self.delta = self._in_force()
            self.sent[at] += 1
            # the leader's line, as it is (its anchor too): the copy is the leader's, bit for bit
            lead = self.leader[at]
            for k, e in enumerate(self.experts):
                mine = at[lead == k]
                if mine.size:
                    value, slope, age = e.line(mine)
                    self.base[mine], self.slope[mine], self.k0[mine] = value, slope, self.k - age
            self.g[at] = self.base[at] + self.slope[at] * (self.k - self.k0[at]).astype(np.float64)
        return send

    def line(self, idx: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(idx)
        return self.base[idx], self.slope[idx], self.k - self.k0[idx]


#: the agent's ``tracking`` option: rule name → how to build it (Δ, γ)
RULES = {
    "atom": lambda delta, gamma: AtomTracker(delta, gamma=gamma),
    "deadband": lambda delta, gamma: Deadband(delta),
    "segment": lambda delta, gamma: SegmentTracker(delta),
    "adaptive": lambda delta, gamma: AdaptiveTracker(delta, gamma=gamma),
    "trend": lambda delta, gamma: TrendTracker(delta),
    "center": lambda delta, gamma: CenterTracker(delta),
    "lattice": lambda delta, gamma: LatticeTracker(CenterTracker(delta)),
}


def make_tracker(rule: str, delta: ArrayLike = (), gamma: float = 0.0) -> _Policy:
    """The tracker of rule ``rule`` (a name of :data:`RULES`)."""
    if rule not in RULES:
        raise ValueError(f"tracking rule {rule!r} is unknown; choose one of {', '.join(RULES)}")
    return RULES[rule](delta, gamma)


class SendAll(_Policy):
    """Send every readable sample (Δ is kept only for a uniform interface)."""

    def step(self, f: ArrayLike) -> np.ndarray:
        f, readable = self._readable(f)
        np.copyto(self.g, f, where=readable)
        return readable


class Policy(Protocol):
    n: int
    g: np.ndarray

    def step(self, f: np.ndarray) -> np.ndarray: ...


class Simulation:
    """What :func:`simulate` measured, per series: ``messages`` sent and ``max_error`` seen
    (the largest ``|f − g|`` over ticks with a finite ``f``; 0 for a series never readable)."""

    def __init__(self, messages: np.ndarray, max_error: np.ndarray) -> None:
        self.messages = messages
        self.max_error = max_error

    def __repr__(self) -> str:
        return f"Simulation(messages={int(self.messages.sum())}, max_error={float(self.max_error.max(initial=0.0))})"


def _as_matrix(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"values must be a ticks × series matrix, got shape {v.shape}")
    return v


def simulate(policy: Policy, values: ArrayLike) -> Simulation:
    """Run ``policy`` over ``values`` (ticks × series, NaN = unreadable), one ``step`` a row."""
    v = _as_matrix(values)
    if v.shape[1] != policy.n:
        raise ValueError(f"simulate: the policy tracks {policy.n} series, values have {v.shape[1]} columns")
    messages = np.zeros(policy.n, dtype=np.int64)
    max_error = np.zeros(policy.n)
    for row in v:
        messages += policy.step(row)
        err = np.abs(row - policy.g)
        np.fmax(max_error, err, out=max_error)  # NaN (unreadable) is ignored
    return Simulation(messages, max_error)


def _greedy_segments(values: ArrayLike, delta: ArrayLike | float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy cover of each series by segments of range ≤ 2Δ: (segment count, max range / 2).

    A segment ends where the next value would widen its range beyond 2Δ, or at an unreadable
    value: the online policies must resend after a gap, so the optimum they are held to must too.
    Greedy is optimal: extending the current segment as far as it goes never hurts later ones.
    """
    v = _as_matrix(values)
    n = v.shape[1]
    two_delta = 2 * np.broadcast_to(_check_delta(delta), (n,))
    count = np.zeros(n, dtype=np.int64)
    half_range = np.zeros(n)
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    for row in v:
        readable = np.isfinite(row)
        open_ = ~np.isnan(lo)
        new_lo = np.minimum(lo, row)
        new_hi = np.maximum(hi, row)
        with np.errstate(invalid="ignore"):
            fits = readable & open_ & (new_hi - new_lo <= two_delta)
        start = readable & ~fits
        # a segment closes where a new one starts or a gap begins
        closing = (start | ~readable) & open_
        np.fmax(half_range, (hi - lo) / 2, out=half_range, where=closing)
        count += start
        lo = np.where(fits, new_lo, np.where(start, row, np.nan))
        hi = np.where(fits, new_hi, np.where(start, row, np.nan))
    open_ = ~np.isnan(lo)
    np.fmax(half_range, (hi - lo) / 2, out=half_range, where=open_)
    return count, half_range


def optimal_messages(values: ArrayLike, delta: ArrayLike | float) -> np.ndarray:
    """The offline optimum per series: the fewest messages that keep the tracker within Δ.

    ``values`` is ticks × series (a 1-d array is one series); ``delta`` one Δ or one per series.
    """
    return _greedy_segments(values, delta)[0]


def optimal_max_error(values: ArrayLike, delta: ArrayLike | float) -> np.ndarray:
    """The largest error of the optimum per series, sending each segment's midrange."""
    return _greedy_segments(values, delta)[1]


def _line_segments(column: np.ndarray, delta: float) -> int:
    """The fewest lines, each within Δ of every sample of its run of ticks, that cover one series
    (a gap ends a run). Greedy: a run goes on while some line fits all of its samples.

    A line ``a + b·t`` fits the samples ``(t, f)`` of a run iff ``b`` lies in
    ``[max (f_j − f_i − 2Δ)/(j − i), min (f_j − f_i + 2Δ)/(j − i)]`` over the pairs ``i < j`` (the
    spread of ``f − b·t`` is at most 2Δ). A new sample ``j`` adds the pairs that end at it, whose
    extremes lie on the lower and the upper convex hull of the run's samples (O'Rourke's
    observation), so each sample costs a walk along the hulls, which stay short.
    """
    count = 0
    lower: list[tuple[int, float]] = []
    upper: list[tuple[int, float]] = []
    lo = hi = 0.0
    for j, f in enumerate(column.tolist()):
        if f != f or f in (np.inf, -np.inf):
            lower, upper = [], []
            continue
        if lower:
            new_lo = max(lo, max((f - 2 * delta - y) / (j - x) for x, y in lower))
            new_hi = min(hi, min((f + 2 * delta - y) / (j - x) for x, y in upper))
            if new_lo <= new_hi:
                lo, hi = new_lo, new_hi
                while len(lower) >= 2 and _turn(lower[-2], lower[-1], (j, f)) <= 0:
                    lower.pop()
                while len(upper) >= 2 and _turn(upper[-2], upper[-1], (j, f)) >= 0:
                    upper.pop()
                lower.append((j, f))
                upper.append((j, f))
                continue
        count += 1
        lower, upper = [(j, f)], [(j, f)]
        lo, hi = -np.inf, np.inf
    return count


def _turn(a: tuple[int, float], b: tuple[int, float], c: tuple[int, float]) -> float:
    """> 0 when a → b → c turns left (counter-clockwise)."""
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def optimal_line_messages(values: ArrayLike, delta: ArrayLike | float) -> np.ndarray:
    """The offline optimum of a line copy per series: the fewest (value, slope) messages that keep
    a piecewise-linear copy within Δ, each message starting a new line (disjoint segments), a gap
    ending one. A lower bound for :class:`TrendTracker` and for every constant-copy rule too.

    ``values`` is ticks × series (a 1-d array is one series); ``delta`` one Δ or one per series.
    """
    v = _as_matrix(values)
    d = np.broadcast_to(_check_delta(delta), (v.shape[1],))
    return np.array([_line_segments(v[:, j], float(d[j])) for j in range(v.shape[1])], dtype=np.int64)
