"""Precog's ``state_dir``: each column's history, model and online series kept on disk across
restarts. A new detector of the same scope takes them back at its first row and decides every
later row as the detector that never stopped; a leak under way when the controller restarts is
reported at once where a cold start would first learn two days of history; a file that is not a
usable state (another scope's, too old, damaged, pickled, inconsistent) is said with its path and
the detector starts cold; a folder it cannot write to is counted and said, and the rows go on."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from atomwatch.plugins.precog import state
from atomwatch.types import Row
from tests.test_precog import VM1, factory

DAY = 86400.0


def _series(days: float = 8.0, leak_from: float = 6.5, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Points every 100 s (three to a 5-minute bin): a daily rhythm with noise, then a leak."""
    rng = np.random.default_rng(seed)
    t = 1.7e9 + np.arange(int(days * DAY / 100)) * 100.0
    rel = t - t[0]
    v = 55 + 3 * np.sin(2 * np.pi * rel / DAY) + rng.normal(0, 0.4, t.size)
    v += np.clip((rel - leak_from * DAY) * (35.0 / DAY), 0, None)
    return t, np.clip(v, 0, 100)


def _detector(tmp_path, name="precog", **more):
    return factory(name).create("host", {"state_dir": str(tmp_path / "state"), "save_every": 50, **more})


def _run(det, t, v, start=0, stop=None):
    """Feed rows start..stop; the rows that raised an alarm and the decision's reason at each."""
    hits, reasons = [], []
    for i in range(start, len(t) if stop is None else stop):
        if det.update(Row("host", i, float(t[i]), (VM1,), np.array([v[i]]))):
            hits.append(i)
        last = det.columns[VM1].last if VM1 in det.columns else None
        reasons.append(last.reason if last else "")
    return hits, reasons


@pytest.mark.parametrize("name", ["precog", "precog-reference"])
@pytest.mark.parametrize("restart_day", [1.0, 6.75])  # in the history; during the leak
def test_a_restarted_detector_decides_every_later_row_as_the_one_that_never_stopped(tmp_path, name, restart_day):
    t, v = _series()
    k = int(restart_day * DAY / 100) // 50 * 50  # (a save falls on the row before)
    steady = factory(name).create("host", {})
    want_hits, want_reasons = _run(steady, t, v)
    first = _detector(tmp_path, name)
    _run(first, t, v, stop=k)
    again = _detector(tmp_path, name)
    hits, reasons = _run(again, t, v, start=k)
    assert again.restored is not None and again.restored["columns"] == 1
    assert again.restored["predicting"] == (restart_day > 2)
    assert hits == [i for i in want_hits if i >= k] and reasons == want_reasons[k:]
    assert again.columns[VM1].model.to_dict() == steady.columns[VM1].model.to_dict()
    assert again.columns[VM1].rows == steady.columns[VM1].rows
    if restart_day > 2:
        assert hits, "the leak is reported"


def test_a_leak_under_way_is_reported_after_a_restart_where_a_cold_start_is_blind(tmp_path):
    t, v = _series()
    k = int(6.75 * DAY / 100) // 50 * 50  # six hours into the leak
    _run(_detector(tmp_path), t, v, stop=k)
    restarted, _ = _run(_detector(tmp_path), t, v, start=k)
    cold_detector = factory("precog").create("host", {})
    cold, _ = _run(cold_detector, t, v, start=k)
    assert restarted and (t[restarted[0]] - t[k]) < 0.5 * DAY
    assert cold == [] and cold_detector.status()["columns"][VM1.column]["phase"] == "history"


def test_the_history_is_kept_as_bin_medians_and_its_last_bin_as_points():
    t = [0.0, 100.0, 200.0, 300.0, 400.0, 650.0, 700.0]  # bins 0, 0, 0, 1, 1, 2, 2
    v = [5.0, 1.0, 3.0, 8.0, 6.0, 2.0, 9.0]
    kt, kv = state.compress_history(t, v, 300.0)
    assert kt.tolist() == [0.0, 300.0, 650.0, 700.0] and kv.tolist() == [3.0, 7.0, 2.0, 9.0]


def _saved_file(tmp_path):
    t, v = _series(days=3)
    det = _detector(tmp_path)
    _run(det, t, v, stop=2550)
    assert det.state_path.exists() and det.state_path.name.startswith("precog-host-")
    return det.state_path


FAR_OPEN_BIN, HISTORY_AFTER = object(), object()  # (made from the saved file by the test)


def _rewrite(path, **fields):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(fields)
    with path.open("wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"scope": np.str_("other")}, "it holds scope 'other', not 'host'"),
        ({"saved_at": np.float64(time.time() - 8 * DAY)}, "older than state_max_age = 604800 s"),
        ({"format": np.int64(7)}, "this version reads 1"),
        ({"meta": np.full((1, 9), np.nan)}, "counters are not whole numbers"),
        ({"meta": np.zeros((2, 9))}, "meta of shape (2, 9) (float64) for 1 columns"),
        ({"r_len": np.array([-1])}, "r_len is not 1 counts"),
        ({"hist_v": np.array([np.inf])}, "hist_v is not"),
        ({"cur": np.array([object()], dtype=object)}, "not a readable state file"),
        ({"columns": np.str_('[["a", "b"]]')}, "not a list of [uuid, name, metric, unit] strings"),
        ({"mode": np.array([1.0, -5.0])}, "seconds per Row.ts unit -5.0"),
        ({"cur_len": np.array([0]), "cur": np.zeros(0)}, "its online series"),  # no open bin
        ({"meta": FAR_OPEN_BIN}, "its online series"),
        ({"hist_t": HISTORY_AFTER}, "its history ends after the column was last seen"),
        (None, "not a readable state file"),
    ],
)
def test_a_state_file_that_cannot_be_used_is_named_and_the_detector_starts_cold(tmp_path, caplog, fields, says):
    path = _saved_file(tmp_path)
    if fields is None:
        path.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        with np.load(path) as z:
            meta, hist_t = z["meta"].copy(), z["hist_t"].copy()
        if fields.get("meta") is FAR_OPEN_BIN:  # a year and a day of bins to fill in
            meta[0, 2] += 366 * 288
            meta[0, 8] += 366 * DAY
            fields["meta"] = meta
        elif fields.get("hist_t") is HISTORY_AFTER:
            hist_t[-1] = meta[0, 8] + 1000
            fields["hist_t"] = hist_t
        _rewrite(path, **fields)
    det = _detector(tmp_path)
    t, v = _series(days=3)
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.precog.detector"):
        _run(det, t, v, start=2550, stop=2560)
    assert det.restored is None and det.status()["columns"][VM1.column]["history_points"] == 10
    assert str(path) in caplog.text and says in caplog.text and "starting cold" in caplog.text


def test_a_state_saved_with_another_step_is_not_used(tmp_path, caplog):
    rows = [Row("host", i, float(i), (VM1,), np.array([50.0])) for i in range(120)]
    det = _detector(tmp_path, step="10min")
    for row in rows[:100]:
        det.update(row)
    other = _detector(tmp_path, step="5min")
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.precog.detector"):
        other.update(rows[100])
    assert other.restored is None and "saved with step = 600 s, this detector has 300" in caplog.text


def test_a_folder_it_cannot_write_is_counted_said_and_the_rows_go_on(tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the folder should be")
    t, v = _series()
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.precog.detector"):
        det = _detector(tmp_path)
        hits, _ = _run(det, t, v)
    assert hits and det.save_failures >= 100 and det.status()["state"]["save_failures"] == det.save_failures
    assert caplog.text.count("cannot save the state") == det.save_failures // 100 + 1


def _detect(path, state_dir=None):
    import json
    import subprocess
    import sys

    more = ["--set", f"precog.state_dir={state_dir}", "--set", "precog.save_every=50"] if state_dir else []
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomwatch",
            "detect",
            str(path),
            "--detector",
            "precog",
            "--scope",
            "hv1",
            *more,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_detect_runs_sharing_a_state_dir_report_what_one_run_reports(tmp_path):
    """Two processes: ``atomwatch detect`` on a trace's first part, then on the rest with the same
    ``state_dir``, reports the leak's alarms with the times and scores a single run gives."""
    from atomwatch.traces import write_trace

    t, v = _series()
    k = int(6.75 * DAY / 100) // 50 * 50
    column = [VM1.column]
    for name, rows in (("whole", slice(None)), ("before", slice(None, k)), ("after", slice(k, None))):
        write_trace(tmp_path / f"{name}.csv", column, v[rows, None], t[rows])
    whole = _detect(tmp_path / "whole.csv")
    assert _detect(tmp_path / "before.csv", tmp_path / "state")["anomalies"] == []
    after = _detect(tmp_path / "after.csv", tmp_path / "state")
    want = [(a["row"], a["score"], a["blame"][0]["window_end"]) for a in whole["anomalies"] if a["row"] >= k]
    assert want and [(a["row"] + k, a["score"], a["blame"][0]["window_end"]) for a in after["anomalies"]] == want
    alone = _detect(tmp_path / "after.csv")
    assert alone["anomalies"] == [], "without the state the second part is only history"


def test_columns_saved_after_the_rows_time_start_cold(tmp_path, caplog):
    """A state written by a later run (or before the clock was set back): its columns would take
    every new point as out of order, so they start cold, said with the file."""
    t, v = _series(days=3)
    _run(_detector(tmp_path), t, v, start=1000, stop=1100)
    det = _detector(tmp_path)
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.precog.detector"):
        _run(det, t, v, stop=10)
    assert det.restored is not None and det.status()["columns"][VM1.column]["history_points"] == 10
    assert "1 columns of" in caplog.text and "were last seen after this row's time" in caplog.text


def test_a_state_file_that_unpacks_past_the_bound_is_not_read(tmp_path, caplog):
    """A small compressed file that would unpack to more than a state file may hold (64 MiB)."""
    path = _saved_file(tmp_path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["hist_t"] = np.zeros(9 * 1024 * 1024)  # 72 MiB of zeros, a few hundred kB packed
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    assert path.stat().st_size < 1024 * 1024
    det = _detector(tmp_path)
    t, v = _series(days=3)
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.precog.detector"):
        _run(det, t, v, start=2550, stop=2551)
    assert det.restored is None and "bytes unpacked, more than the 67108864" in caplog.text
