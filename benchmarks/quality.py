"""Detection quality of pca-spe against two baselines fitted in the same run, on labelled files.

Prints one JSON object. Each labelled multivariate file is a train part (the rows before its
train index, free of labelled anomalies) and a test part; every detector learns from the train
part only and is scored on the test part:

* ``pca-spe`` — the detector as it runs live (``PcaSpeDetector.update`` row after row, over the
  train rows first, then the test rows; nobody answers an alarm), with its options as given per
  variant (``default``; ``before``: the defaults before this benchmark chose them, a sliding
  window and the band rule; ``latching``: ``rebaseline_after=0``, the paper's wait for a verdict;
  ``sliding``: ``reference=sliding``; the quiet rules ``band`` and ``off``; the threshold rules
  ``pot`` and ``quantile``; ``confirm-2``; ``train-ref``: ``t`` and ``min_rows`` set to the
  file's train length, so that M is the train part, as the baselines' fit is; ``fill``: M's
  first 720 rows taken unjudged; ``t-1440``, ``t-2880``: a longer M, judged while it fills;
  ``smooth-0.2``: rows reported by the EWMA of their score; ``seeded+smooth-w``: M the train
  part, ``threshold=pot`` and ``smooth=w`` for w from 0.1 to 0.3); its continuous
  score is the detector's ``last_score``: SPE over the threshold the row was judged by (Q_α or
  the window's tail), and where a quiet column left its band 1 + its distance out in noise
  levels (each at least ``rel_std`` × the row's value), if larger;
* ``pca-error`` — scikit-learn's PCA (90 % of the variance) fitted on the standardised train
  part, score = squared reconstruction error;
* ``iforest`` — scikit-learn's IsolationForest (seed 0) fitted on the standardised train part,
  score = −score_samples.

Per public file, ``targets`` says which variants meet issue 22's targets (point-wise F1 and
AUC-PR at or above both baselines, VUS-PR at or above the published PCA figure), and
``variants_meeting_every_target`` lists those meeting them on every public file of the run.

The baselines flag a row when its score is above the 99.8th percentile of their train scores
(pca-spe's own α is 0.2 %). Metrics (``atomwatch.evaluation``): point-wise precision, recall and
F1; point-adjusted F1 beside it (never alone); event-wise recall (share of labelled segments with
a flag); false alarms (flagged runs touching no label) per 1,000 rows and per day at the file's
row period (an assumption where the file says none, named in the output); AUC-PR and VUS-PR from
the scores (VUS-PR's window: TSB-AD's period rule on the first channel, ``tsb_period``), and the
published TSB-AD VUS-PR of PCA and IForest on the same file where known (those are computed over
the whole file, train part included, by unsupervised runs: a reference, not the same experiment).

Data: ``synthetic`` (generated here, deterministic: :func:`synthetic_host`), and the TSB-AD-M
files of ``TSB_FILES`` read from ``--data`` (default ``$ATOMWATCH_TSB_AD_DIR``, else
``$ATOMWATCH_SHARED/data/tsb-ad-m``); a missing file or a file whose SHA-256 differs is reported
as skipped with the reason.

``--probes`` adds, for the ``default`` variant, the AUC-PR of other ways to make its ranking
score from the same run (Hotelling's T², the combined index φ, an EWMA of SPE) and of one PCA
fitted on the whole train part (:func:`score_probes`): what issue 22's AUC-PR gap was tried with.

Run: ``python -m benchmarks.quality [--data DIR] [--only NAME ...] [--variants NAME ...] [--quick]
[--probes]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atomwatch import Row, SeriesKey
from atomwatch import evaluation as ev
from atomwatch.detectors import anomalies_of
from atomwatch.plugins.pca_spe import kernels
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from benchmarks._common import SHARED, emit, machine

#: TSB-AD-M files (TheDatumOrg/TSB-AD; the datasets' own licences: NASA MSL/SMAP telemetry, public
#: domain; Genesis and Daphnet from the UCI repository, CC BY 4.0): SHA-256, assumed row period in
#: seconds (None: the file gives none, false alarms per day are not reported), and TSB-AD's
#: published VUS-PR of PCA and IForest (benchmark_exp/benchmark_eval_results/multi_mergedTable_VUS-PR.csv)
TSB_FILES: dict[str, dict[str, Any]] = {
    "002_MSL_id_1_Sensor_tr_500_1st_900.csv": {
        "sha256": "b875ab93c5f2a76e9cabdb94b8b0742368b4da77175520384eac7f19f0ad3fd2",
        "period_s": 60.0,
        "published_vus_pr": {"PCA": 0.1284, "IForest": 0.1210},
    },
    "107_SMAP_E-9_2075_5550.csv": {
        "sha256": "825515abb274eafcba095efc789eb08885f48eaf38a24bd45914170984d45125",
        "period_s": 60.0,
        "published_vus_pr": {"PCA": 0.0850, "IForest": 0.0498},  # = 161_SMAP_id_18_Sensor_tr_2075_1st_5550
    },
    "001_Genesis_id_1_Sensor_tr_4055_1st_15538.csv": {
        "sha256": "9c9a48eaab91e515ff488e71f392664eb548736e3260fe156a0d461c72199cf7",
        "period_s": None,
        "published_vus_pr": {"PCA": 0.0192, "IForest": 0.0809},
    },
    "018_Daphnet_id_1_HumanActivity_tr_9693_1st_20732.csv": {
        "sha256": "5da568d67c693756cdc934ac9ee3a19967a50b420835620f8dd77b45d01872b6",
        "period_s": 1 / 64,
        "published_vus_pr": {"PCA": 0.1301, "IForest": 0.1326},
    },
}

#: pca-spe variants compared (options as ``--set pca-spe.KEY=VALUE`` would give them)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "before": {"reference": "sliding", "quiet_rule": "band"},  # the defaults before issue 22's measurements
    "latching": {"rebaseline_after": 0},
    "sliding": {"reference": "sliding"},
    "quiet-band": {"quiet_rule": "band"},
    "quiet-off": {"quiet_rule": "off"},
    "pot": {"threshold": "pot"},
    "quantile": {"threshold": "quantile"},
    "confirm-2": {"confirm": 2},
    # the window M as long as the train part and filled by it unjudged (the rows the baselines are
    # fitted on; "train" is each file's train length): the same reference, the detector's own rules
    "train-ref": {"t": "train", "min_rows": "train"},
    "train-ref+pot": {"t": "train", "min_rows": "train", "threshold": "pot"},
    # M filled unjudged: its first t rows (720, the default t) join it whatever they are, as the
    # baselines' train part does, and nothing is flagged before (a deployment's choice: a clean start)
    "fill": {"min_rows": 720},
    # a longer reference, judged while it fills as in the default (issue 22: does length alone help?)
    "t-1440": {"t": 1440},
    "t-2880": {"t": 2880},
    # reported while the EWMA of log(1 + score) is over log 2 (smooth: the newest row's weight);
    # "seeded" = M is the train part (train-ref) with threshold=pot, the weight swept 0.1–0.3
    "smooth-0.2": {"smooth": 0.2},
    "train-ref+smooth-0.2": {"t": "train", "min_rows": "train", "smooth": 0.2},
    **{
        f"seeded+smooth-{w}": {"t": "train", "min_rows": "train", "threshold": "pot", "smooth": w}
        for w in (0.1, 0.15, 0.2, 0.25, 0.3)
    },
}


#: the generated trace's workload shift: its first episode is the first flagged run starting at
#: most this many rows after the shift (a smoothed score reports a change a few rows late)
SHIFT_SEEN = 30


@dataclass
class Labelled:
    name: str
    x: np.ndarray  # rows × columns
    y: np.ndarray  # 0/1 per row
    train: int  # rows before this index are the train part
    columns: tuple[SeriesKey, ...]
    period_s: float | None = None
    published: dict[str, float] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)  # what a generated trace holds where


# --------------------------------------------------------------------------- data


def synthetic_host(rows: int = 13_000, seed: int = 22, shift: bool = True) -> Labelled:
    """Four VMs × five metrics (20 columns), one row a minute, a daily rhythm, and in order:
    the train part (2 days); a workload shift at row 5,000 (vm3 starts a batch job for good: its
    CPU and disk writes rise and no longer follow its traffic; label 0, benign); a CPU burn in
    vm2 (rows 7,000–7,119, label 1); an exfiltration burst from vm4 (8,500–8,559, label 1); and a
    slow ramp from vm1 (outgoing traffic rising linearly over rows 10,000–10,999 to 5 times its
    normal spread, then staying there to the end; label 1 throughout), which a detector that
    learns might take for normal. ``shift=False`` leaves the workload shift out."""
    rng = np.random.default_rng(seed)
    metrics = ("CPUUtilization", "NetworkIn", "NetworkOut", "DiskWriteBytes", "MemoryUtilization")
    scale = np.array([20.0, 4e5, 6e5, 3e5, 10.0])
    base = np.array([30.0, 2e6, 3e6, 1e6, 50.0])
    t = np.arange(rows)
    day = np.sin(2 * np.pi * t / 1440.0)
    shared = np.convolve(rng.standard_normal(rows + 9), np.ones(10) / np.sqrt(10), "valid")
    x = np.empty((rows, 20))
    for v in range(4):
        load = 0.8 * day + 0.4 * shared + 0.6 * rng.standard_normal(rows)
        for m in range(5):
            x[:, 5 * v + m] = base[m] + scale[m] * ((0.5 + 0.15 * m) * load + 0.25 * rng.standard_normal(rows))
    y = np.zeros(rows, dtype=np.int64)
    job = 2.5 * scale[0] + 0.8 * scale[0] * rng.standard_normal(rows - 5000)
    if shift:
        x[5000:, 10] += job  # vm3 CPU: the batch job
        x[5000:, 13] += 3.0 * scale[3]  # vm3 disk writes
    x[7000:7120, 5] += 4.0 * scale[0]  # vm2 CPU burn
    y[7000:7120] = 1
    x[8500:8560, 17] += 6.0 * scale[2]  # vm4 exfiltration
    y[8500:8560] = 1
    spread = 0.5 * scale[2]  # vm1 NetworkOut's normal spread from its own noise and load
    x[10000:, 2] += np.minimum(np.arange(rows - 10000) / 1000.0, 1.0) * 5.0 * spread  # vm1's slow ramp
    y[10000:] = 1
    cols = tuple(SeriesKey.from_column(f"vm{v + 1}/{metrics[m]}") for v in range(4) for m in range(5))
    marks = {"shift_row": 5000 if shift else None, "ramp": [10000, rows], "ramp_column": "vm1/NetworkOut"}
    return Labelled("synthetic" if shift else "synthetic-no-shift", x, y, 2880, cols, 60.0, {}, marks)


def tsb_dir() -> Path:
    """Where the TSB-AD-M files are looked for: ``$ATOMWATCH_TSB_AD_DIR``, else the shared
    folder's ``data/tsb-ad-m`` (fetched data is never committed to this repository)."""
    return Path(os.environ.get("ATOMWATCH_TSB_AD_DIR") or SHARED / "data" / "tsb-ad-m")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_tsb(path: Path) -> Labelled:
    """A TSB-AD-M CSV: a header, one column per channel, ``Label`` last; the train index is in the
    name (``…_tr_<train>_1st_<first anomaly>.csv``, or ``<id>_<name>_<train>_<first>.csv``)."""
    m = re.search(r"_tr_(\d+)_1st_\d+\.csv$", path.name) or re.search(r"_(\d+)_\d+\.csv$", path.name)
    if m is None:
        raise ValueError(f"{path.name}: the name holds no train index (…_tr_<N>_1st_<M>.csv)")
    with path.open() as f:
        header = f.readline().strip().split(",")
    if header[-1] != "Label":
        raise ValueError(f"{path.name}: the last column is {header[-1]!r}, not 'Label'")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    cols = tuple(SeriesKey.from_column(f"{path.stem[:12]}/c{h}") for h in header[:-1])
    meta = TSB_FILES.get(path.name, {})
    return Labelled(
        path.name,
        data[:, :-1],
        data[:, -1].astype(np.int64),
        int(m.group(1)),
        cols,
        meta.get("period_s"),
        meta.get("published_vus_pr", {}),
    )


def tsb_period(x: np.ndarray) -> int:
    """TSB-AD's sliding window for VUS: the lag of the highest local maximum of the first
    channel's autocorrelation over lags 3–400 (of its first 20,000 points); 125 where that lag
    is outside 3–300 or the channel does not vary."""
    s = np.asarray(x[:20_000, 0], dtype=np.float64)
    s = s - s.mean()
    var = float(s @ s)
    if not var > 0:
        return 125
    n = len(s)
    f = np.fft.rfft(s, 2 ** int(np.ceil(np.log2(2 * n))))
    acf = np.fft.irfft(f * np.conj(f))[:401] / var
    ac = acf[3:]
    peaks = np.flatnonzero((ac[1:-1] > ac[:-2]) & (ac[1:-1] > ac[2:])) + 1
    if not len(peaks):
        return 125
    best = int(peaks[np.argmax(ac[peaks])])
    return best + 3 if 3 <= best <= 300 else 125


# --------------------------------------------------------------------------- detectors


def run_pca_spe(data: Labelled, options: dict[str, Any], probes: bool = False) -> dict[str, Any]:
    """pca-spe online over train then test rows: flags, SPE/Q_α scores, re-baselines, seconds;
    with ``probes`` also each row's parts for :func:`score_probes` (not timed then)."""
    det = PcaSpeDetector("bench", options)
    n = len(data.x)
    flags = np.zeros(n, dtype=np.int64)
    score = np.zeros(n)
    parts = np.zeros((n, 3))  # SPE / threshold, T² / T²_α, 1 + quiet excess (0: no breach)
    audits = []
    probing = 0.0
    start = time.perf_counter()
    for i in range(n):
        row = Row("bench", i, float(i), data.columns, data.x[i])
        if probes:
            p0 = time.perf_counter()
            parts[i] = _row_parts(det, data.x[i])
            probing += time.perf_counter() - p0
        found = anomalies_of(det.update(row), "pca-spe", i)
        if det.last_score is not None:
            score[i] = det.last_score
        if found:
            flags[i] = 1
            score[i] = max(score[i], 1.0)
            audits += [a.details["audit"]["details"] for a in found if "audit" in a.details]
        det.last_score = None
    seconds = time.perf_counter() - start - probing
    return {"flags": flags, "score": score, "seconds": seconds, "rebaselines": audits, "parts": parts}


def _row_parts(det: PcaSpeDetector, z: np.ndarray) -> tuple[float, float, float]:
    """The parts a row's score could be made of, under the model ``det`` is about to judge it by
    (the same cached fit ``update`` uses): SPE over its threshold, Hotelling's T² over the
    retained components over its limit for a new row (F-based, at the detector's α), and where a
    quiet column left its band 1 + its excess in noise levels. Zeros while warming up. The data
    sets here keep one column set, so ``z`` is in the window's column order."""
    from scipy import stats

    win = det.win
    if win is None or not win.ready or det.pending is not None:
        return 0.0, 0.0, 0.0
    m = win.model()
    spe, thr, x = m.spe(z)
    s = spe / thr if thr > 0 and np.isfinite(thr) else 0.0
    t = 0.0
    fit = m.fit
    if fit is not None and x is not None and 0 < fit.k < fit.n:
        a = x @ fit.p1
        k, n = fit.k, fit.n
        limit = k * (n - 1) * (n + 1) / (n * (n - k)) * stats.f.ppf(1 - fit.alpha, k, n - k)
        t = float((a * a / fit.lam1).sum()) / limit
    q = 1.0 + m.quiet.ranking_excess(z, det.opts.rel_std) if m.quiet.breaches(z).any() else 0.0
    return s, t, q


def _ewma(v: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(v)
    s = v[0] if len(v) else 0.0
    for i, x in enumerate(v):
        s = weight * x + (1 - weight) * s
        out[i] = s
    return out


def score_probes(data: Labelled, parts: np.ndarray) -> dict[str, float]:
    """AUC-PR on the test part of other ways to make pca-spe's ranking score from the same run
    (the flags, and so the model's life, unchanged): SPE alone, T² alone, Yue and Qin's combined
    index φ = SPE/Q_α + T²/T²_α, their maximum, and an EWMA of SPE/Q_α (weights 0.3, 0.1, 0.05),
    each merged with the quiet-column excess by taking the larger; and, for the ceiling of a PCA
    score with no online life at all, SPE, T² and φ of one PCA fitted on the whole standardised
    train part (90 % of the variance, T² over χ²_α(k), SPE over the θ₁-scaled χ² of Box)."""
    from scipy import stats

    y, tr = data.y[data.train :], data.train
    s, t, q = parts[:, 0], parts[:, 1], parts[:, 2]

    def ap(v: np.ndarray) -> float:
        return round(ev.auc_pr(y, np.maximum(v, q)[tr:]), 4)

    out = {"spe": ap(s), "t2": ap(t), "phi": ap(s + t), "max": ap(np.maximum(s, t))}
    for w in (0.3, 0.1, 0.05):
        out[f"ewma-{w}"] = ap(_ewma(s, w))
    train = data.x[:tr]
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    act = std > 0
    z = (data.x[:, act] - mean[act]) / std[act]
    lam, vec = np.linalg.eigh(np.cov(z[:tr].T))
    lam, vec = lam[::-1], vec[:, ::-1]
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.9) + 1)
    a = z @ vec[:, :k]
    spe = ((z - a @ vec[:, :k].T) ** 2).sum(axis=1)
    t2 = (a * a / lam[:k]).sum(axis=1)
    th1, th2 = lam[k:].sum(), (lam[k:] ** 2).sum()
    q_box = th2 / th1 * stats.chi2.ppf(0.998, th1 * th1 / th2) if th2 > 0 else 1.0
    phi = spe / q_box + t2 / stats.chi2.ppf(0.998, k)
    for name, v in (("spe", spe), ("t2", t2), ("phi", phi)):
        out[f"train-fit {name}"] = round(ev.auc_pr(y, v[tr:]), 4)
    return out


def run_baselines(data: Labelled) -> dict[str, dict[str, Any]]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    train = data.x[: data.train]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (data.x - mean) / std
    out = {}
    start = time.perf_counter()
    pca = PCA(n_components=0.9, svd_solver="full").fit(z[: data.train])
    err = ((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1)
    out["pca-error"] = {"score": err, "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    forest = IsolationForest(random_state=0).fit(z[: data.train])
    out["iforest"] = {"score": -forest.score_samples(z), "seconds": time.perf_counter() - start}
    for r in out.values():
        r["threshold"] = float(np.percentile(r["score"][: data.train], 99.8))
        r["flags"] = (r["score"] > r["threshold"]).astype(np.int64)
    return out


# --------------------------------------------------------------------------- metrics


def metrics(data: Labelled, flags: np.ndarray, score: np.ndarray, window: int) -> dict[str, Any]:
    y, f, s = data.y[data.train :], flags[data.train :], score[data.train :]
    e = ev.evaluate(y, f)
    fa = ev.false_alarms(y, f)
    rows = len(y)
    out = {
        "point_wise": {k: round(e["point_wise"][k], 4) for k in ("precision", "recall", "f1")},
        "point_adjusted_f1": round(e["point_adjusted"]["f1"], 4),
        "event_recall": round(e["segments_detected"] / e["segments"], 4) if e["segments"] else None,
        "false_alarms": fa,
        "false_alarms_per_1000_rows": round(1000 * fa / rows, 3),
        "false_alarms_per_day": round(fa / (rows * data.period_s / 86400), 2) if data.period_s else None,
        "flagged_share": round(float(f.mean()), 4),
        "labelled_share": round(float(y.mean()), 4),
        "auc_pr": round(ev.auc_pr(y, s), 4) if y.any() else None,
        "vus_pr": round(ev.vus_pr(y, s, window), 4) if y.any() else None,
    }
    return out


def unattended(data: Labelled, flags: np.ndarray) -> dict[str, Any]:
    """On the generated trace: the share of benign rows flagged after the shift's first episode
    (the rows the shift flags from its first flagged row, at most ``SHIFT_SEEN`` rows after it
    began, to the first unflagged one), and the ramp's first flagged row and flagged share."""
    out: dict[str, Any] = {}
    shift = data.marks["shift_row"]
    if shift is not None:
        start = shift
        while start < min(len(flags) - 1, shift + SHIFT_SEEN) and not flags[start]:
            start += 1
        if not flags[start]:  # nothing flagged near the shift: no first episode
            start = shift
        end = start
        while end < len(flags) and flags[end]:
            end += 1
        benign = data.y[end:] == 0
        out["first_episode_rows"] = end - start
        out["first_episode_from_row"] = start - shift
        out["benign_rows_after_first_episode"] = int(benign.sum())
        out["benign_flagged_after_first_episode"] = (
            round(float(flags[end:][benign].mean()), 4) if benign.any() else None
        )
    lo, hi = data.marks["ramp"]
    ramp = flags[lo:hi]
    # a flag counts for the ramp once it is 1 % into its rise (earlier ones are chance)
    hits = np.flatnonzero(ramp[10:])
    out["ramp_first_flag_after_rows"] = int(hits[0]) + 10 if len(hits) else None
    out["ramp_flagged_share"] = round(float(ramp.mean()), 4)
    return out


def evaluate_file(data: Labelled, variants: dict[str, dict[str, Any]], probes: bool = False) -> dict[str, Any]:
    window = tsb_period(data.x)
    res: dict[str, Any] = {
        "rows": len(data.x),
        "columns": data.x.shape[1],
        "train_rows": data.train,
        "test_segments": len(ev.segments(data.y[data.train :])),
        "vus_window": window,
        "row_period_s": data.period_s,
        "detectors": {},
    }
    for name, opts in variants.items():
        probe = probes and name == "default"
        run = run_pca_spe(data, {k: data.train if v == "train" else v for k, v in opts.items()}, probe)
        r = metrics(data, run["flags"], run["score"], window)
        r["seconds"] = round(run["seconds"], 2)
        if probe:
            r["score_probes_auc_pr"] = score_probes(data, run["parts"])
        r["rebaselines"] = len(run["rebaselines"])
        if data.marks:
            r["unattended"] = unattended(data, run["flags"])
        res["detectors"][f"pca-spe/{name}"] = r
    for name, run in run_baselines(data).items():
        r = metrics(data, run["flags"], run["score"], window)
        r["seconds"] = round(run["seconds"], 2)
        if data.marks:
            r["unattended"] = unattended(data, run["flags"])
        res["detectors"][name] = r
    if data.published:
        res["published_vus_pr_whole_file"] = data.published
        res["targets"] = targets(res["detectors"], data.published)
    return res


def targets(detectors: dict[str, dict[str, Any]], published: dict[str, float]) -> dict[str, dict[str, bool]]:
    """Issue 22's targets on a public file, per pca-spe variant: point-wise F1 and AUC-PR at or
    above both baselines of the same run, VUS-PR at or above TSB-AD's published PCA figure."""
    base = [detectors[b] for b in ("pca-error", "iforest")]
    out = {}
    for name, r in detectors.items():
        if not name.startswith("pca-spe/"):
            continue
        met = {
            "f1": all(r["point_wise"]["f1"] >= b["point_wise"]["f1"] for b in base),
            "auc_pr": all(r["auc_pr"] >= b["auc_pr"] for b in base),
            "vus_pr": r["vus_pr"] >= published["PCA"],
        }
        out[name.removeprefix("pca-spe/")] = {**met, "all": all(met.values())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=tsb_dir(), help="folder of TSB-AD-M CSV files (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="datasets to run (synthetic and/or file names)")
    ap.add_argument("--quick", action="store_true", help="the synthetic trace only")
    ap.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), help="pca-spe variants to run (default: all)")
    ap.add_argument(
        "--probes", action="store_true", help="AUC-PR of other score shapes of the default run (score_probes)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an option of every variant")
    args = ap.parse_args()
    extra = {}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--set {kv!r}: expected KEY=VALUE (a pca-spe option)")
        extra[key] = value
    variants = {k: {**extra, **v} for k, v in VARIANTS.items() if not args.variants or k in args.variants}
    kernels.warm_up()  # compiled (or loaded from numba's cache) before anything is timed
    result: dict[str, Any] = {"benchmark": "quality", "machine": machine(), "variants": variants, "datasets": {}}
    sets: list[Labelled | tuple[str, str]] = [synthetic_host(), synthetic_host(shift=False)]
    if not args.quick:
        for name, meta in TSB_FILES.items():
            path = args.data / name
            if not path.is_file():
                sets.append((name, f"not found in {args.data}"))
            elif meta["sha256"] and sha256(path) != meta["sha256"]:
                sets.append((name, f"{path}: SHA-256 differs from the one this benchmark was measured on"))
            else:
                sets.append(read_tsb(path))
    for d in sets:
        name = d[0] if isinstance(d, tuple) else d.name
        if args.only and name not in args.only:
            continue
        if isinstance(d, tuple):
            result["datasets"][name] = {"skipped": d[1]}
            continue
        result["datasets"][name] = evaluate_file(d, variants, args.probes)
    public = [r["targets"] for r in result["datasets"].values() if "targets" in r]
    if public:  # the variants meeting every target on every public file run
        result["variants_meeting_every_target"] = [v for v in variants if all(t[v]["all"] for t in public)]
    emit(result)


if __name__ == "__main__":
    main()
