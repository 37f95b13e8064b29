"""Issue 22's unattended target on the quality benchmark's generated trace, with pca-spe's default
options: after the workload shift's first episode (re-baselined, nobody answered) at most 1 % of
the benign rows are flagged, the short attacks after the shift are still caught, and the slow ramp
is not learnt row by row (the fixed reference; the paper's sliding window flags under 1 % of it);
the same with the seeded, smoothed setting; and how a public file's targets are judged."""

from __future__ import annotations

import numpy as np

from atomwatch import evaluation as ev
from benchmarks.quality import run_pca_spe, synthetic_host, targets, unattended


def test_defaults_meet_the_unattended_target_and_keep_watching_the_ramp():
    data = synthetic_host()
    default = run_pca_spe(data, {})
    got = unattended(data, default["flags"])
    assert got["first_episode_rows"] == 360  # rebaseline_after
    assert got["benign_flagged_after_first_episode"] <= 0.01  # (labelled share 0 % + 1 %)
    test = slice(data.train, None)
    hit = ev.evaluate(data.y[test], default["flags"][test])
    assert hit["segments_detected"] == hit["segments"] == 3  # CPU burn, exfiltration, ramp
    assert np.all(default["flags"][7000:7010]) and np.all(default["flags"][8500:8510])
    assert got["ramp_flagged_share"] > 0.15  # measured 0.213
    sliding = unattended(data, run_pca_spe(data, {"reference": "sliding"})["flags"])
    assert sliding["ramp_flagged_share"] < 0.01  # measured 0.0037: learnt as it rose


def test_the_seeded_smoothed_setting_meets_the_unattended_target_too():
    """M seeded from the train part, threshold=pot, smooth=0.2 (the setting that meets issue 22's
    targets on the public files): the shift is still re-baselined after its episode, the attacks
    after it are caught, and the ramp is still reported (later than row by row)."""
    data = synthetic_host()
    opts = {"t": data.train, "min_rows": data.train, "threshold": "pot", "smooth": 0.2}
    flags = run_pca_spe(data, opts)["flags"]
    got = unattended(data, flags)
    assert got["first_episode_from_row"] <= 5 and got["first_episode_rows"] >= 300
    assert got["benign_flagged_after_first_episode"] <= 0.01  # measured 0.0038
    assert np.any(flags[7000:7120]) and np.any(flags[8500:8560])
    assert 0.05 < got["ramp_flagged_share"]  # measured 0.132


def test_targets_compare_with_both_baselines_and_the_published_pca():
    row = {"point_wise": {"f1": 0.5}, "auc_pr": 0.3, "vus_pr": 0.2}
    dets = {
        "pca-spe/a": row,
        "pca-spe/b": {**row, "auc_pr": 0.29},
        "pca-error": {"point_wise": {"f1": 0.4}, "auc_pr": 0.3, "vus_pr": 0.1},
        "iforest": {"point_wise": {"f1": 0.5}, "auc_pr": 0.1, "vus_pr": 0.1},
    }
    got = targets(dets, {"PCA": 0.2, "IForest": 0.9})
    assert got["a"] == {"f1": True, "auc_pr": True, "vus_pr": True, "all": True}  # ties count as met
    assert got["b"]["auc_pr"] is False and got["b"]["all"] is False
    assert targets(dets, {"PCA": 0.21, "IForest": 0.0})["a"]["vus_pr"] is False


def test_a_shift_nobody_flags_has_an_empty_first_episode():
    """No flag within SHIFT_SEEN rows of the shift: the first episode is empty and starts at the
    shift (not a negative length from the rows searched)."""
    data = synthetic_host()
    got = unattended(data, np.zeros(len(data.y), dtype=np.int64))
    assert got["first_episode_rows"] == 0 and got["first_episode_from_row"] == 0
    late = np.zeros(len(data.y), dtype=np.int64)
    late[5003:5010] = 1  # flagged from the shift's 4th row: that run is the first episode
    got = unattended(data, late)
    assert got["first_episode_from_row"] == 3 and got["first_episode_rows"] == 7
