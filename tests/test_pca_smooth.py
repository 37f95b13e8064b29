"""pca-spe's ``smooth`` option: SPE over its threshold judged by its EWMA in log units. A lone
row over the threshold is kept out of M but not reported, a sustained change is reported and
blamed, a large spike still is at once, an unanswered episode is still re-baselined after
``rebaseline_after`` abnormal rows (reported or not), and ``smooth = 0`` is the paper's rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

import atomwatch
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from tests.test_pca_spe import QUIET, _shifted_workload, feed, keys, workload


def _rows(rows=600, d=9, seed=5):
    x, _ = workload(np.random.default_rng(seed), rows, d, factors=2)
    return x, keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])


def _spike(det, x, row, times):
    """``x[row]`` pushed along one column until its SPE is roughly ``times`` × the threshold (SPE
    grows as the square of a large push; the tests check the ratio they got)."""
    y = x[row].copy()
    m = det.win.model()
    unit = np.zeros(len(y))
    unit[4] = 1.0
    spe0, q, _ = m.spe(y)
    per_unit = m.spe(y + unit)[0] - spe0
    return y + unit * math.sqrt(max(times * q - spe0, 0.0) / max(per_unit, 1e-12))


@pytest.mark.parametrize("smooth", [0.0, 0.2])
def test_a_lone_row_over_the_threshold_is_reported_only_without_smoothing_and_never_learnt(smooth):
    x, cols = _rows()
    det = PcaSpeDetector("s", {"t": 400, "alpha": QUIET, "smooth": smooth, "reference": "sliding"})
    assert feed(det, cols, x[:300]) == []
    n = det.win.stats.n
    row = _spike(det, x, 300, 3.0)
    got = feed(det, cols, [row], start=300)
    assert 2.0 < det.last_spe / det.last_threshold < 4.5  # the row is over its threshold on its own
    assert len(got) == (1 if smooth == 0 else 0)
    assert det.win.stats.n == n  # kept out of M either way
    if smooth:
        assert 0 < det.status()["smoothed_ratio"] < 1
    assert feed(det, cols, x[301:320], start=301) == []
    assert det.win.stats.n > n  # the normal rows after it are learnt again


def test_a_large_spike_is_reported_at_once_with_smoothing():
    x, cols = _rows()
    det = PcaSpeDetector("s", {"t": 400, "alpha": QUIET, "smooth": 0.2})
    feed(det, cols, x[:300])
    got = feed(det, cols, [_spike(det, x, 300, 1e4)], start=300)
    assert len(got) == 1 and got[0].details["trigger"] == "spe" and got[0].details["smoothed_ratio"] > 1


def _before_the_shift(**options):
    """A detector fed the 400 rows before ``_shifted_workload``'s change (none flagged), its
    columns and all the rows."""
    t, d, x = _shifted_workload()
    cols = keys([f"vm{j // 3}/m{j % 3}" for j in range(d)])
    det = PcaSpeDetector("s", {"t": t, "alpha": QUIET, **options})
    assert feed(det, cols, x[:400]) == []
    return det, cols, x


def test_a_sustained_change_is_reported_and_blamed_and_its_tail_too():
    det, cols, x = _before_the_shift(smooth=0.3)
    got = feed(det, cols, x[400:460], start=400)
    assert got and got[0].index <= 402 and [a.index for a in got] == list(range(got[0].index, 460))
    # named as the paper's rule names it (identification runs over A, the same rows)
    plain, _, _ = _before_the_shift()
    want = feed(plain, cols, x[400:460], start=400)[-1]
    assert got[-1].details["candidates"][0]["column"] == cols[4].column
    assert got[-1].details["candidates"] == want.details["candidates"] and got[-1].blame == want.blame
    # the change stops: rows whose own SPE is back under the threshold are reported while the
    # smoothed ratio is still over 1 ("smoothed"), then nothing
    back = x[460:520].copy()
    back[:, 4] -= 40.0
    tail = feed(det, cols, back, start=460)
    assert tail and all(a.details["trigger"] == "smoothed" for a in tail)
    assert [a.index for a in tail] == list(range(460, 460 + len(tail))) and len(tail) < 20
    assert det.status()["smoothed_ratio"] < 1


def test_an_unanswered_episode_is_rebaselined_with_smoothing_and_the_level_restarts():
    det, cols, x = _before_the_shift(rebaseline_after=100, smooth=0.3)
    got = feed(det, cols, x[400:900], start=400)
    assert got[-1].index == 499 and got[-1].details["audit"]["action"] == "model re-baselined"
    assert det.status()["rebaselines"] == 1 and det.status()["smoothed_ratio"] < 1


def test_smooth_out_of_range_is_refused_naming_the_option():
    with pytest.raises(atomwatch.OptionError, match="smooth"):
        PcaSpeDetector("s", {"smooth": 1.0})
    with pytest.raises(atomwatch.OptionError, match="smooth"):
        PcaSpeDetector("s", {"smooth": -0.1})
