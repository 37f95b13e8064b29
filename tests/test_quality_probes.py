"""The quality benchmark's score probes (issue 22's AUC-PR experiments): the parts they rebuild
pca-spe's ranking score from are the detector's own (SPE over its threshold, the quiet excess),
so the ``spe`` probe ranks exactly as ``last_score`` does, and T² sees a move along the model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from atomwatch import SeriesKey
from atomwatch import evaluation as ev
from benchmarks.quality import run_pca_spe, score_probes, synthetic_host


def test_probes_rebuild_the_detector_score_and_measure_t2():
    data = synthetic_host(rows=7_400, shift=False)  # train 2,880 rows, then the CPU burn at 7,000
    flag = np.zeros((len(data.x), 1))  # a 0/1 flag silent over the train part: a quiet column
    flag[[5_000, 6_000]] = 1.0
    data = replace(data, x=np.hstack([data.x, flag]), columns=(*data.columns, SeriesKey.from_column("vm1/flag")))
    run = run_pca_spe(data, {}, probes=True)
    parts = run["parts"]
    assert parts[5_000, 2] > 1 and run["score"][5_000] == parts[5_000, 2]  # its pulse ranks by the quiet part
    ready = parts[:, 0] > 0
    assert ready[100:].all()  # scored from the end of the warm-up on
    rebuilt = np.maximum(parts[:, 0], parts[:, 2])
    assert np.allclose(rebuilt[ready], run["score"][ready], rtol=1e-12)
    probes = score_probes(data, parts)
    test = slice(data.train, None)
    assert probes["spe"] == round(ev.auc_pr(data.y[test], run["score"][test]), 4)
    assert set(probes) >= {"t2", "phi", "max", "ewma-0.1", "train-fit spe", "train-fit phi"}
    assert all(0 <= v <= 1 for v in probes.values())
    # normal rows sit inside the T² limit (α = 0.2 %) as they do inside Q_α
    normal = (data.y == 0) & ready
    normal[: data.train] = False
    assert np.mean(parts[normal, 1] > 1) < 0.02
