"""``atomwatch train``, ``atomwatch evaluate`` (with ``--compare``) and ``atomwatch retrain`` on a
small generated recording (see ``test_deep_models.make_recording``), run in-process through the
real command-line entry (``atomwatch.cli.main``), with a real SQLite alarm store for retraining.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONTROLLER_KEY, SIGNING_KEY

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("keras")

from test_deep_models import make_recording  # noqa: E402

from atomwatch.cli import main  # noqa: E402
from atomwatch.controller.alarms import AlarmStore  # noqa: E402
from atomwatch.trace_rows import trace_rows  # noqa: E402
from atomwatch.traces import read_trace  # noqa: E402
from atomwatch.types import Anomaly  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deepcli")


@pytest.fixture(scope="module")
def recording(work: Path) -> Path:
    return make_recording(work / "rec", seed=3)


@pytest.fixture(scope="module")
def cnn_model(work: Path, recording: Path) -> Path:
    out = work / "cnn.model"
    assert (
        main(
            [
                "train",
                str(recording),
                "--model",
                "cnn",
                "--out",
                str(out),
                "--window",
                "8",
                "--epochs",
                "15",
                "--batch-size",
                "32",
                "--filters",
                "8",
                "--latent",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    return out


def test_train_writes_a_model_folder_and_evaluate_reports_both_views(cnn_model: Path, recording: Path, capsys) -> None:
    meta = json.loads((cnn_model / "model.json").read_text())
    assert meta["kind"] == "cnn" and meta["window"] == 8 and (cnn_model / "model.weights.h5").exists()
    assert meta["info"]["split"] == "70/15/15 by time per recording"
    capsys.readouterr()
    assert main(["evaluate", str(cnn_model), str(recording), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for view in ("point_wise", "point_adjusted"):
        s = r["all"][view]
        assert set(s) >= {"precision", "recall", "f1", "confusion_matrix"}
    assert r["all"]["point_adjusted"]["recall"] >= 0.99 and r["all"]["point_wise"]["f1"] >= 0.8
    assert set(r["classes"]) == {"cpu-burn", "net-flood", "disk-storm"}
    assert main(["evaluate", str(cnn_model), str(recording)]) == 0
    text = capsys.readouterr().out
    assert "point-wise" in text and "point-adjusted" in text and "[[tn fp] [fn tp]]" in text


def test_delta_trains_and_evaluates_on_the_tracked_copies(work: Path, recording: Path, capsys) -> None:
    """--delta: the windows hold the controller's copies under ATOM's tracking (within Δ of the
    recorded values, changing less often), the model file keeps the Δ it was trained at, and
    evaluate reports the Δ it tracked at."""
    from atomwatch.plugins.deep.windows import load_recording

    raw = load_recording(recording)
    tracked = load_recording(recording, deltas={"*": 2.0})
    assert np.nanmax(np.abs(tracked.values - raw.values)) <= 2.0
    assert (np.diff(tracked.values, axis=0) != 0).sum() < (np.diff(raw.values, axis=0) != 0).sum()
    out = work / "cnn-delta.model"
    assert (
        main(
            [
                "train",
                str(recording),
                "--model",
                "cnn",
                "--out",
                str(out),
                "--window",
                "8",
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--filters",
                "8",
                "--latent",
                "4",
                "--quiet",
                "--delta",
                "2",
            ]
        )
        == 0
    )
    assert json.loads((out / "model.json").read_text())["info"]["deltas"] == {"*": 2.0}
    capsys.readouterr()
    assert main(["evaluate", str(out), str(recording), "--delta", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["deltas"] == {"*": 2.0} and r["trained_deltas"] == {"*": 2.0}
    assert main(["train", str(recording), "--model", "cnn", "--out", str(work / "x"), "--delta", "cpu=abc"]) == 2
    assert "--delta 'cpu=abc': 'abc' is not a number" in capsys.readouterr().err


def test_holdout_class_is_reported_apart(work: Path, recording: Path, capsys) -> None:
    out = work / "ae.model"
    assert (
        main(
            [
                "train",
                str(recording),
                "--model",
                "ae",
                "--out",
                str(out),
                "--window",
                "8",
                "--epochs",
                "3",
                "--filters",
                "8",
                "--latent",
                "4",
                "--holdout-class",
                "net-flood",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert trained["holdout"] == ["net-flood"]
    assert main(["evaluate", str(out), str(recording), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["holdout"] == ["net-flood"]  # taken from the model
    assert r["classes"]["net-flood"]["held_out"] and not r["classes"]["cpu-burn"]["held_out"]
    assert r["held_out"]["positives"] == r["classes"]["net-flood"]["positives"] > 0
    assert "point_adjusted" in r["seen"] and "point_adjusted" in r["held_out"]


def test_bad_input_is_a_clear_error(work: Path, recording: Path, capsys) -> None:
    assert main(["train", str(work / "nope"), "--model", "cnn", "--out", str(work / "x")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", str(recording), "--model", "cnn", "--out", str(work / "x"), "--holdout-class", "zzz"]) == 2
    assert "zzz" in capsys.readouterr().err
    assert main(["train", str(recording), "--model", "cnn", "--out", str(work / "x"), "--window", "0"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main(["evaluate", str(work / "nope-model"), str(recording)]) == 2
    assert "nope-model" in capsys.readouterr().err
    assert not (work / "x").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="tensorflow is installed: --tensorboard works"
)
def test_tensorboard_without_tensorflow_is_a_clear_error(work: Path, recording: Path, capsys) -> None:
    assert (
        main(
            [
                "train",
                str(recording),
                "--model",
                "cnn",
                "--out",
                str(work / "tb.model"),
                "--tensorboard",
                str(work / "tb"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--tensorboard needs the 'tensorflow' package" in err
    assert not (work / "tb.model").exists()


def test_compare_runs_models_and_online_detectors_on_the_same_rows(
    cnn_model: Path, recording: Path, work: Path, capsys
) -> None:
    table = work / "compare.md"
    assert (
        main(
            [
                "evaluate",
                "--compare",
                str(cnn_model),
                str(recording),
                "--set",
                "pca-spe.t=200",
                "--out",
                str(table),
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    dets = r["detectors"]
    assert set(dets) == {"cnn (cnn.model)", "pca-spe", "precog"}
    cnn, pca = dets["cnn (cnn.model)"], dets["pca-spe"]
    assert cnn["all"]["points"] == pca["all"]["points"] == 135  # the last 15 % of 900 rows, for every detector
    assert cnn["all"]["point_adjusted"]["recall"] >= 0.99
    text = table.read_text()
    assert (
        text.startswith("| detector |") and "| cnn (cnn.model) | all evaluated rows |" in text and "| pca-spe |" in text
    )


def test_whole_scores_another_recording_without_a_split(cnn_model: Path, work: Path, capsys) -> None:
    other = make_recording(work / "other", seed=11)  # a run the model never trained on
    capsys.readouterr()
    assert main(["evaluate", "--whole", str(cnn_model), str(other), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["whole"] and r["test_windows"] == 900 - 8 + 1
    assert r["all"]["segments"] == 20 and r["all"]["point_adjusted"]["recall"] >= 0.9
    assert (
        main(["evaluate", "--whole", "--compare", str(cnn_model), str(other), "--detector", "pca-spe", "--json"]) == 0
    )
    c = json.loads(capsys.readouterr().out)
    assert c["detectors"]["pca-spe"]["all"]["points"] == 900 and set(c["detectors"]) == {"cnn (cnn.model)", "pca-spe"}


def test_search_prints_its_results_table(work: Path, recording: Path, capsys) -> None:
    out = work / "searched.model"
    assert (
        main(
            [
                "train",
                str(recording),
                "--model",
                "cnn",
                "--out",
                str(out),
                "--epochs",
                "2",
                "--search",
                "--max-trials",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "hyperparameter search" in text and "val F1" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "window"])
    rows = [line for line in lines[header + 1 : header + 3] if line.strip()[:1].isdigit()]
    assert len(rows) == 2
    meta = json.loads((out / "model.json").read_text())
    best = rows[0].split()
    assert [meta["window"], meta["filters"], meta["latent"]] == [int(best[1]), int(best[2]), int(best[3])]


def _alarm_db(path: Path, recording: Path) -> Path:
    """A real alarm store: one alarm per anomalous stretch of the recording (verdict malicious)
    and a few alarms over normal stretches (verdict normal), rows kept with columns and values."""
    store = AlarmStore(str(path))
    labels = np.loadtxt(recording / "labels.csv", delimiter=",", skiprows=1, usecols=2).astype(int)
    rows = list(trace_rows(read_trace(recording), "site/host"))
    ids = []
    for lo in range(0, len(rows), 40):
        chunk = rows[lo : lo + 12]
        verdict = "malicious" if labels[chunk[-1].index] else "normal"
        alarm_id = None
        for r in chunk:
            a = Anomaly(detector=f"pca-spe-{lo}", scope="site/host", index=r.index, ts=r.ts, score=1.0, threshold=0.5)
            alarm, _ = store.record(a, r.columns, r.values)
            alarm_id = alarm.id
        ids.append((alarm_id, verdict))
    for alarm_id, verdict in ids:
        store.verdict(alarm_id, verdict, "operator")
    store.shutdown()
    return path


def test_retrain_from_verdicts_replaces_only_when_as_good(cnn_model: Path, recording: Path, work: Path, capsys) -> None:
    import shutil

    model = work / "retrain.model"
    shutil.copytree(cnn_model, model)
    db = _alarm_db(work / "alarms.sqlite", recording)
    before = (model / "model.weights.h5").read_bytes()
    capsys.readouterr()
    assert main(["retrain", str(model), str(recording), "--db", str(db), "--epochs", "2", "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict_alarms"]["malicious"] > 0 and r["verdict_alarms"]["normal"] > 0 and r["operator_windows"] > 0
    assert r["replaced"] == (r["new_quality"] >= r["old_quality"])
    after = (model / "model.weights.h5").read_bytes()
    if r["replaced"]:
        assert after != before and (work / "retrain.model.previous" / "model.weights.h5").read_bytes() == before
    else:
        assert after == before
    # the model folder is always loadable afterwards
    assert main(["evaluate", str(model), str(recording), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "cnn"


def test_retrain_without_verdicts_says_so(cnn_model: Path, work: Path, capsys) -> None:
    empty = work / "empty.sqlite"
    AlarmStore(str(empty)).shutdown()
    assert main(["retrain", str(cnn_model), "--db", str(empty)]) == 2
    assert "nothing to retrain from" in capsys.readouterr().err
    assert main(["retrain", str(cnn_model), "--db", str(work / "missing.sqlite")]) == 2
    assert "no such alarms file" in capsys.readouterr().err


async def test_live_cnn_flags_injected_anomalies_through_the_real_pipeline(
    mosquitto, site, cnn_model: Path, recording: Path, tmp_path: Path
) -> None:
    """Agent (replay collector, tracking) → real Mosquitto → controller (ingest, rebuilt rows,
    detection tick in its worker thread) → the ``cnn`` plugin. The replayed stretch holds a
    ``disk-storm`` (vm1/DiskWriteOps) and a ``cpu-burn`` (vm1/CPUUtilization)."""
    import asyncio

    import atomwatch.plugins.deep as deep_plugin
    from atomwatch.agent.config import AgentConfig
    from atomwatch.agent.runtime import Agent
    from atomwatch.config import BrokerAddress
    from atomwatch.controller.app import Controller
    from atomwatch.controller.config import ControllerConfig
    from atomwatch.pluginmanager import PluginManager
    from atomwatch.traces import write_trace

    trace = read_trace(recording)
    part = slice(600, 720)
    live = tmp_path / "live.csv"
    write_trace(live, trace.columns, trace.values[part], trace.timestamps[part])
    pm = PluginManager()
    pm.load_entry_points(allow="replay")
    pm.register_plugin(deep_plugin, "deep", "atomwatch.plugins.deep")  # not (yet) an entry point of the distribution
    opts = {"replay": {"trace": str(live), "delta_rel": 0.01}, "cnn": {"model": str(cnn_model)}}
    broker = BrokerAddress.parse(mosquitto.url)
    agent = Agent(
        AgentConfig(broker=broker, controller_key=CONTROLLER_KEY, site=site, host="hv1", tick=0.05, options=opts), pm
    )
    controller = Controller(
        ControllerConfig(
            broker=broker, signing_key=SIGNING_KEY, sites=[site], tick=0.05, detectors=["cnn"], options=opts
        ),
        pm,
    )
    found: list[Anomaly] = []
    controller.anomaly_listeners.append(found.append)
    tasks = [asyncio.create_task(controller.run()), asyncio.create_task(agent.run())]
    try:
        await asyncio.wait_for(controller.connected.wait(), 10)
        await asyncio.wait_for(agent.connected.wait(), 10)
        deadline = asyncio.get_running_loop().time() + 40
        while controller.rows_handled < 130 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
    finally:
        agent.stop()
        controller.stop()
        await asyncio.gather(*tasks)
    assert controller.rows_handled >= 100, "the controller did not see the replay"
    assert found, "the cnn plugin flagged nothing during a disk-storm and a cpu-burn"
    assert all(a.detector == "cnn" and a.score >= a.threshold and a.scope.endswith("hv1") for a in found)
    top = {a.blame[0].column.column for a in found}
    assert top & {"vm1/DiskWriteOps", "vm1/CPUUtilization"}, top
    assert len(found) <= 60  # two anomalies of 12 rows in 120, not every row


def test_progress_is_a_plain_line_per_epoch_when_stdout_is_not_a_terminal(monkeypatch) -> None:
    import io

    from atomwatch.plugins.deep.train import progress_verbosity

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file or a pipe
    assert progress_verbosity(quiet=False) == 2  # Keras: one line per epoch, no bar escape codes
    assert progress_verbosity(quiet=True) == 0
