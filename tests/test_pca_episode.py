"""pca-spe over a long anomaly episode: the running sums of A (identification, quiet columns)
give, row after row, what recomputing everything over A gave (the detector's code before the
sums, kept here as the reference), on real lab rows and on a generated host, through A's cap,
stale cells, a model change mid-episode and ``confirm``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from atomwatch import Anomaly, Blame, Row, SeriesKey
from atomwatch.plugins.pca_spe import kernels
from atomwatch.plugins.pca_spe import model as pm
from atomwatch.plugins.pca_spe.detector import NAME, PcaSpeDetector
from atomwatch.traces import read_trace
from tests.conftest import ROOT

RTOL = 1e-9


# ----------------------------------------------------------------------------- the reference


def identify_recomputed(model: pm.PcaFit, a_raw: np.ndarray, b1: float, b2: float) -> list[pm.ColumnFinding]:
    """ATOM's three steps over the whole of A, as the detector computed them at every row
    before the running sums (its code, unchanged)."""
    a_raw = np.atleast_2d(np.asarray(a_raw, dtype=np.float64))
    b = model.standardise(a_raw)
    b = np.array([model.fill_missing(r) for r in b]) if not np.isfinite(b).all() else b
    br = model.residual(b)
    a = (br * br).mean(axis=0)
    y = (model.n - 1) / model.n * model.resid_diag()
    rd = (a - y) / np.maximum(y, 1e-12)
    out = []
    known = np.isfinite(a_raw).sum(axis=0)
    safe = np.where(np.isfinite(a_raw), a_raw, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        colmean = safe.sum(axis=0) / known
        dev = (np.abs(safe - model.mean) * np.isfinite(a_raw)).sum(axis=0) / known / model.std
    for j in np.flatnonzero(rd >= b1):
        sd = float(dev[j]) if np.isfinite(dev[j]) else None
        diff = float(colmean[j] - model.mean[j]) if np.isfinite(colmean[j]) else 0.0
        md = diff / float(model.mean[j]) if model.mean[j] != 0 and np.isfinite(colmean[j]) else None
        out.append(
            pm.ColumnFinding(int(j), float(rd[j]), sd, md, "up" if diff >= 0 else "down", sd is not None and sd >= b2)
        )
    out.sort(key=lambda f: (not f.abnormal, -(f.stddev or 0.0), -f.rd))
    return out


def excess_recomputed(quiet: pm.QuietColumns, a: np.ndarray) -> np.ndarray:
    """Rows of A × quiet columns: how far out of its band each value is, in noise levels."""
    v = a[:, quiet.index]
    low, high = quiet.band
    with np.errstate(invalid="ignore"):
        out = np.where(v > high, (v - high) / quiet.noise, np.where(v < low, (v - low) / quiet.noise, 0.0))
    return np.nan_to_num(out)


class RecomputingDetector(PcaSpeDetector):
    """pca-spe as it was: identification and the quiet rule recomputed over every row of A at
    each abnormal row (no running sums). The excess over A is computed here in one pass (the
    same formula); ``benchmarks/pca_episode.py`` puts back the call per row of A it cost."""

    def _fold_episode(self, model) -> None:
        pass

    def _excess_over_A(self, quiet: pm.QuietColumns, a: np.ndarray) -> np.ndarray:
        return excess_recomputed(quiet, a)

    def _anomaly(self, row, win, model, x, spe, stale) -> Anomaly:
        a = np.array(self.episode.rows)
        blame: list[Blame] = []
        findings: list[pm.ColumnFinding] = []
        fit = model.fit
        over = fit is not None and spe > fit.q_alpha
        if over:
            findings = identify_recomputed(fit, a[:, model.active], self.opts.b1, self.opts.b2)
            blame = [
                Blame(
                    column=win.columns[model.active[f.index]],
                    direction=f.direction,
                    score=float(f.stddev or 0.0),
                    details={"rd": f.rd, "stddev": f.stddev, "meandiff": f.meandiff},
                )
                for f in findings
                if f.abnormal
            ]
        quiet = model.quiet
        low, high = quiet.band
        excess = self._excess_over_A(quiet, a)
        for i in np.flatnonzero(np.abs(excess).max(axis=0, initial=0.0) > 0):
            j = int(quiet.index[i])
            worst = float(excess[np.argmax(np.abs(excess[:, i])), i])
            blame.append(
                Blame(
                    column=win.columns[j],
                    direction="up" if worst > 0 else "down",
                    score=abs(worst),
                    details={
                        "rule": "quiet column left its band",
                        "band": [float(low[i]), float(high[i])],
                        "noise": float(quiet.noise[i]),
                        "value": float(z_last) if math.isfinite(z_last := a[-1, j]) else None,
                    },
                )
            )
        blame.sort(key=lambda b: -b.score)
        breached = excess[-1] != 0
        details: dict[str, Any] = {
            "trigger": "+".join(w for w, on in (("spe", over), ("quiet", bool(breached.any()))) if on),
            "k": fit.k if fit else 0,
            "d": fit.d if fit else 0,
            "method": fit.method if fit else "none",
            "h0": None if fit is None or math.isnan(fit.h0) else fit.h0,
            "threshold_rule": model.rule,
            "q_alpha": fit.q_alpha if fit is not None and math.isfinite(fit.q_alpha) else None,
            "quiet_columns": len(quiet.index),
            "quiet_breaches": [win.columns[int(j)].column for j in quiet.index[breached]],
            "rows_in_A": len(a),
            "first_row_of_A": self.episode.index[0],
            "run_length": self.episode.run_length,
            "window_rows": win.stats.n,
            "stale_columns": [c.column for c in stale],
            "candidates": [
                {"column": win.columns[model.active[f.index]].column, "rd": f.rd, "stddev": f.stddev}
                for f in findings
                if not f.abnormal
            ][:5],
        }
        if fit is not None and x is not None:
            r = fit.residual(x)
            details["residual_top"] = [
                {"column": win.columns[model.active[j]].column, "share": float(r[j] ** 2 / spe) if spe > 0 else 0.0}
                for j in np.argsort(-(r * r))[:5]
            ]
        return Anomaly(NAME, self.scope, row.index, row.ts, spe, fit.q_alpha if fit else math.inf, blame, details)


# ----------------------------------------------------------------------------- comparing


def close(got: float | None, want: float | None, atol: float = 0.0) -> bool:
    if got is None or want is None:
        return got is want
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=atol)


def assert_same(got: Anomaly | None, want: Anomaly | None, where: str) -> None:
    """The same outcome: blamed columns (the same set, each with its direction and numbers),
    in the same order up to ties (two columns whose scores agree within RTOL may swap: their
    scores differ in the last bits either way), the same details and candidates."""
    assert (got is None) == (want is None), where
    if got is None:
        return
    assert (got.index, got.score, got.threshold) == (want.index, want.score, want.threshold), where
    assert {(b.column, b.direction) for b in got.blame} == {(b.column, b.direction) for b in want.blame}, where
    assert all(close(g.score, w.score) for g, w in zip(got.blame, want.blame)), where  # the order, up to ties
    wanted = {b.column: b for b in want.blame}
    for g in got.blame:
        w = wanted[g.column]
        assert close(g.score, w.score), (where, g, w)
        if "rule" in w.details:  # a quiet column: the same excess, computed the same way per row
            assert g.details == w.details and g.score == w.score, (where, g, w)
        else:
            assert close(g.details["rd"], w.details["rd"]) and close(g.details["stddev"], w.details["stddev"]), where
            # meandiff = (mean of A − avg)/avg: rounding of the mean of A, relative to avg, is absolute here
            assert close(g.details["meandiff"], w.details["meandiff"], atol=1e-12), (where, g, w)
    gd, wd = dict(got.details), dict(want.details)
    gc, wc = gd.pop("candidates"), wd.pop("candidates")
    assert gd == wd, where
    assert len(gc) == len(wc), where
    for g, w in zip(gc, wc):  # (the five closest to abnormal, by stddev: a tie may swap two, or the fifth)
        assert close(g["stddev"], w["stddev"]), (where, g, w)
        assert g["column"] != w["column"] or close(g["rd"], w["rd"]), (where, g, w)


def compare(rows: list[Row], options: dict[str, Any]) -> list[Anomaly]:
    """Both detectors over the same rows, row by row (so both see the same kernels); every
    row's outcome compared. Returns the new detector's anomalies."""
    new, ref = PcaSpeDetector("h", options), RecomputingDetector("h", options)
    out = []
    for row in rows:
        got, want = new.update(row), ref.update(row)
        assert_same(got, want, f"row {row.index}")
        if got is not None:
            out.append(got)
        assert new.status() == ref.status(), f"row {row.index}"
    return out


def episodes(anomalies: list[Anomaly]) -> list[int]:
    """The longest run_length each episode reached."""
    out: list[int] = []
    for a in anomalies:
        n = a.details["run_length"]
        if out and n > out[-1]:
            out[-1] = n
        else:
            out.append(n)
    return out


# ----------------------------------------------------------------------------- the data


def lab_rows(name: str) -> tuple[tuple[SeriesKey, ...], np.ndarray]:
    trace = read_trace(str(ROOT / "tests" / "data" / name / "values.csv"))
    return tuple(SeriesKey.from_column(c) for c in trace.columns), np.asarray(trace.values, dtype=np.float64)


def with_fault(cols: tuple[SeriesKey, ...], x: np.ndarray, ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A long fault on real rows: one guest's CPU and outgoing traffic far up, another's disk
    writes down, a quiet column (memory) out of its band for a stretch, moving back towards it,
    and stale cells here and there."""
    names = [c.column for c in cols]
    std = ref.std(axis=0, ddof=1)
    x = x.copy()
    for name, shift in (
        ("awlab-guest2/CPUUtilization", 9),
        ("awlab-guest2/NetworkOut", 12),
        ("awlab-guest3/DiskWriteBytes", -4),
    ):
        j = names.index(name)
        x[:, j] += shift * max(std[j], 1e-3 * abs(ref[:, j].mean()), 1.0)
    m = names.index("awlab-guest1/MemoryUtilization")
    out = slice(len(x) // 4, len(x) // 2)
    x[out, m] = ref[:, m].max() + np.linspace(25.0, 2.0, out.stop - out.start)  # leaves its band, drifts back
    x[out.start + 40 : out.start + 43, m] = ref[:, m].max() + 25.0  # equal worst values: the first one counts
    cells = rng.choice(x.size, size=x.size // 400, replace=False)
    x.flat[cells] = np.nan
    return x


def generated_host(rng: np.random.Generator, rows: int) -> tuple[tuple[SeriesKey, ...], np.ndarray]:
    """Three VMs of eight metrics (units from 1 to 10⁵), one of them a constant column."""
    metrics = ["cpu", "net_in", "net_out", "disk_r_ops", "disk_w_ops", "disk_r_b", "disk_w_b", "mem"]
    scale = np.array([1.0, 1e5, 2e5, 1.0, 30.0, 4e4, 3e5, 10.0] * 3)
    shared, own = rng.standard_normal(rows), rng.standard_normal((rows, 3))
    x = np.empty((rows, 24))
    for j in range(24):
        drive = 0.5 * shared + own[:, j // 8]
        x[:, j] = scale[j] * (5.0 + (0.3 + 0.1 * (j % 8)) * drive + 0.2 * rng.standard_normal(rows))
    x[:, 3] = 0.0  # vm1's read ops: never any
    return tuple(SeriesKey.from_column(f"vm{j // 8 + 1}/{metrics[j % 8]}") for j in range(24)), x


def as_rows(cols: tuple[SeriesKey, ...], x: np.ndarray, deltas: list[np.ndarray | None] | None = None) -> list[Row]:
    return [Row("h", i, float(i), cols, v, deltas[i] if deltas is not None else None) for i, v in enumerate(x)]


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("kernels_path", ["current", "plain"])
def test_a_long_episode_on_lab_rows_matches_recomputing_over_A(kernels_path, monkeypatch):
    """800 abnormal rows of real lab data after a 300-row window (t = 300: A is capped and its
    oldest rows leave from the 301st on), with the compiled kernels (when numba is installed)
    and the plain numpy ones."""
    if kernels_path == "plain":
        monkeypatch.setattr(kernels, "current", lambda: kernels.plain)
    cols, x = lab_rows("lab-normal-1s")
    _, xb = lab_rows("lab-normal-1s-b")
    rng = np.random.default_rng(5)
    fault = with_fault(cols, np.vstack([x[300:], xb[:200]]), x[:300], rng)
    got = compare(as_rows(cols, np.vstack([x[:300], fault, xb[200:260]])), {"t": 300, "rebaseline_after": 0})
    at = {a.index: a for a in got}
    assert all(i in at for i in range(300, 1100))  # every faulty row abnormal: one episode of 800 rows or more
    long = at[1099]
    assert long.details["run_length"] >= 800 and long.details["rows_in_A"] == 300
    assert long.details["first_row_of_A"] == 1099 - 299
    blamed = {b.column.column: b.direction for b in long.blame}
    assert blamed.get("awlab-guest2/CPUUtilization") == "up" and blamed.get("awlab-guest2/NetworkOut") == "up"
    mid = at[300 + 400]  # the memory column is out of its band (and moving back)
    mem = [b for b in mid.blame if b.column.column == "awlab-guest1/MemoryUtilization"]
    assert mem and mem[0].details.get("rule") == "quiet column left its band" and mem[0].direction == "up"


@pytest.mark.parametrize("confirm", [1, 4])
def test_a_long_episode_on_a_generated_host_matches_recomputing_over_A(confirm):
    """850 abnormal rows at the default t = 720 (A full from its 721st row), stale cells, a
    constant column leaving its band, then normal rows and a second episode."""
    rng = np.random.default_rng(11)
    cols, x = generated_host(rng, 2300)
    std = x[:800].std(axis=0, ddof=1)
    x[800:1650, 0] += 6 * std[0]  # vm1's cpu up and its outgoing traffic down, for 850 rows
    x[800:1650, 2] -= 6 * std[2]
    x[1000:1100, 3] = np.linspace(9.0, 0.5, 100)  # the constant column moves, then settles back
    x[1900:1960, 9] += 6 * std[9]
    # stale cells in 60 rows: 40 that stay in A until it is full and they leave, 20 near the end
    cells = rng.choice(np.r_[820 * 24 : 860 * 24, 1500 * 24 : 1520 * 24], size=90, replace=False)
    x.flat[cells] = np.nan
    got = compare(as_rows(cols, x), {"confirm": confirm, "rebaseline_after": 0})
    at = {a.index: a for a in got}
    assert all(i in at for i in range(800 + confirm - 1, 1650)) and at[1649].details["run_length"] >= 850
    assert at[1649].details["rows_in_A"] == 720 and all(i in at for i in range(1900 + confirm - 1, 1960))
    assert any(b.column.column == "vm1/disk_r_ops" for a in got for b in a.blame)


def test_a_model_change_mid_episode_restarts_the_sums():
    """The columns' tracking errors change while A grows (a column goes quiet, then active
    again): the model changes, and the sums start again from A's rows under the new one."""
    rng = np.random.default_rng(3)
    cols, x = generated_host(rng, 1400)
    x[800:1400, 0] += 4.5
    x[800:1400, 5] += 4e4 * 2.0
    small = np.zeros(24)
    big = small.copy()
    big[12] = 1000.0  # vm2's disk_w_ops: a tracking error far wider than its spread makes it quiet
    deltas = [small] * 1000 + [big] * 200 + [small] * 200
    got = compare(as_rows(cols, x, deltas), {"t": 300, "rebaseline_after": 0})
    assert max(episodes(got)) == 600
    by_run = {a.details["run_length"]: a for a in got}
    assert by_run[250].details["quiet_columns"] == by_run[150].details["quiet_columns"] + 1
    assert by_run[450].details["quiet_columns"] == by_run[150].details["quiet_columns"]


def test_running_identification_matches_identify_through_adds_and_removes():
    """The sums alone: rows in, the oldest out, a sliding A of 50 over 1,000 rows, each step
    against :func:`identify` over the rows it holds."""
    rng = np.random.default_rng(8)
    cols, x = generated_host(rng, 1600)
    x[:, 3] += rng.standard_normal(1600)  # (no constant column here)
    model = pm.fit_window(x[:600])
    a = x[600:].copy()
    a[:, [1, 7, 20]] += np.array([1e5, 3e5, 2.0]) * rng.uniform(0, 4, size=(1000, 1))
    a.flat[rng.choice(a.size, size=a.size // 40, replace=False)] = np.nan
    a[100:160, 4] = np.nan  # a column unknown in every row A holds for a while
    run = pm.RunningIdentification(model)
    for i, r in enumerate(a):
        run.add(r)
        if i >= 50:
            run.remove(a[i - 50])
        got, want = run.findings(), pm.identify(model, a[max(0, i - 49) : i + 1])
        assert [(f.index, f.abnormal, f.direction) for f in got] == [(f.index, f.abnormal, f.direction) for f in want]
        for g, w in zip(got, want):
            assert close(g.rd, w.rd) and close(g.stddev, w.stddev) and close(g.meandiff, w.meandiff, atol=1e-12)
    with pytest.raises(ValueError, match="at least one row"):
        pm.RunningIdentification(model).findings()


def test_running_quiet_excess_keeps_the_worst_row_of_a_sliding_A():
    quiet = pm.QuietColumns(np.array([0, 2]), np.array([0.0, 10.0]), np.array([1.0, 11.0]), np.array([0.5, 0.5]))
    rng = np.random.default_rng(1)
    z = np.zeros((400, 3))
    z[:, 0] = rng.choice([-3.0, 0.5, 2.5, 4.0, 5.0], size=400)  # ties in |excess| (−3 and 4: 3 noise levels out)
    z[:, 2] = np.concatenate([np.linspace(30, 10, 200), rng.uniform(8, 13, 200)])
    z[::17, 2] = np.nan
    run = pm.RunningQuietExcess(quiet)
    for i, r in enumerate(z):
        run.add(i, r)
        if i >= 30:
            run.remove(i - 30)
        held = excess_recomputed(quiet, z[max(0, i - 29) : i + 1])
        want = [(c, float(held[np.argmax(np.abs(held[:, c])), c])) for c in range(2) if np.abs(held[:, c]).max() > 0]
        assert run.worst() == want, i
        assert np.array_equal(run.last, held[-1])
