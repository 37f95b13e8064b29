"""pca-spe's ``state_dir``: the normal window M kept on disk across restarts. A new detector of
the same scope takes M back at its first row and judges that row (no warm-up, no rows taken
unjudged), as the old one would have; a change right after the restart is caught where a cold
start is still warming up; a file that is not a usable state (another scope's, too old,
damaged, pickled, not finite) is said with its path and the detector starts cold; a folder it
cannot write to is counted and said, and the rows go on being judged."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from pipeline import detector_status, live_pipeline

from atomwatch.plugins.pca_spe import state
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector
from atomwatch.traces import read_trace, write_trace
from tests.test_pca_spe import QUIET, _shifted_workload, feed, keys

COLS = keys([f"vm{j // 3}/m{j % 3}" for j in range(9)])
BUNDLED = Path(__file__).resolve().parent.parent / "atomwatch" / "data" / "lab-cryptominer.csv"


def _options(tmp_path, **more):
    return {"t": 200, "alpha": QUIET, "state_dir": str(tmp_path / "state"), "save_every": 10, **more}


def _trained(tmp_path, rows=300, **more):
    _, _, x = _shifted_workload()  # (normal until row 400)
    det = PcaSpeDetector("s", _options(tmp_path, **more))
    assert feed(det, COLS, x[:rows]) == []
    return det, x


def test_a_restarted_detector_takes_m_back_and_scores_its_first_row_as_before(tmp_path):
    old, x = _trained(tmp_path)
    saved = old.state_path
    assert saved is not None and saved.exists() and saved.parent == tmp_path / "state"
    new = PcaSpeDetector("s", _options(tmp_path))
    feed(new, COLS, x[300:301], start=300)
    status = new.status()
    assert status["ready"] and status["state"]["restored"]["rows"] == old.win.stats.n == 200
    assert new.rows_seen == 1 and new.last_spe is not None  # judged at once
    feed(old, COLS, x[300:301], start=300)
    assert new.last_spe == pytest.approx(old.last_spe, rel=1e-6)
    np.testing.assert_array_equal(new.win.stats.rows(), old.win.stats.rows()[: new.win.stats.n])


def test_a_change_right_after_a_restart_is_caught_where_a_cold_start_warms_up(tmp_path):
    _trained(tmp_path, rows=395)
    _, _, x = _shifted_workload()
    restarted = PcaSpeDetector("s", _options(tmp_path))
    cold = PcaSpeDetector("s", {"t": 200, "alpha": QUIET})
    got = feed(restarted, COLS, x[395:420], start=395)
    assert got and got[0].index == 400 and got[0].blame[0].column.column == "vm1/m1"
    assert feed(cold, COLS, x[395:420], start=395) == [] and not cold.win.ready


def test_only_a_changed_m_is_written_again(tmp_path):
    det, x = _trained(tmp_path)  # t = 200 rows, fixed reference: M full since row 200
    written = det.state_path.stat().st_mtime_ns
    time.sleep(0.01)
    feed(det, COLS, x[300:350], start=300)
    assert det.state_path.stat().st_mtime_ns == written


def _write(path, **fields):
    base = {
        "format": np.int64(state.FORMAT),
        "scope": np.str_("s"),
        "columns": np.str_('[["vm0", "vm0", "m0", ""]]'),
        "rows": np.ones((5, 1)),
        "seen_lo": np.full(1, np.nan),
        "seen_hi": np.full(1, np.nan),
        "saved_at": np.float64(time.time()),
    }
    base.update(fields)
    with path.open("wb") as f:
        np.savez(f, **base)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"scope": np.str_("other")}, "it holds scope 'other', not 's'"),
        ({"saved_at": np.float64(time.time() - 3 * 86400)}, "older than state_max_age = 86400 s"),
        ({"rows": np.array([[np.nan]] * 5)}, "not finite"),
        ({"rows": np.ones((5, 2))}, "rows of shape (5, 2)"),
        ({"columns": np.str_("[1, 2]")}, "not a list of [uuid, name, metric, unit] strings"),
        ({"rows": np.array([[object()]] * 5, dtype=object)}, "not a readable state file"),
        ({"format": np.int64(99)}, "this version reads 1"),
        (None, "not a readable state file"),
    ],
)
def test_a_state_file_that_cannot_be_used_is_named_and_the_detector_starts_cold(tmp_path, caplog, fields, says):
    det = PcaSpeDetector("s", _options(tmp_path))
    det.state_path.parent.mkdir(parents=True)
    if fields is None:
        det.state_path.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        _write(det.state_path, **fields)
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.pca_spe.detector"):
        _, _, x = _shifted_workload()
        assert feed(det, COLS, x[:5]) == []
    assert not det.win.ready and det.restored is None
    assert str(det.state_path) in caplog.text and says in caplog.text and "starting cold" in caplog.text


def test_a_folder_it_cannot_write_is_counted_said_and_the_rows_go_on(tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="atomwatch.plugins.pca_spe.detector"):
        det, x = _trained(tmp_path, rows=260)
        got = feed(det, COLS, x[395:420], start=395)
    assert got and det.save_failures >= 1 and det.status()["state"]["save_failures"] == det.save_failures
    assert "cannot save the window" in caplog.text and caplog.text.count("cannot save the window") == 1


@pytest.mark.asyncio
async def test_a_restarted_controller_catches_an_attack_at_its_first_rows(mosquitto, site, tmp_path):
    """Through a real Mosquitto: a controller learns M on the bundled recording's normal rows and
    stops; a new controller with the same ``state_dir`` — detecting in a worker process this time
    — takes M back at its first row of that host and opens the attack's alarm, blaming the
    miner's VM, although the replay resumes only ten rows before the attack: a cold start would
    still be warming up (48 rows) and take attack rows into M."""
    trace = read_trace(BUNDLED)
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    write_trace(before, trace.columns, trace.values[:90])
    write_trace(after, trace.columns, trace.values[80:240])
    pca = {"state_dir": str(tmp_path / "state"), "save_every": 5, "confirm": 3}  # (no pre-attack flag)
    scope = f"{site}/hv1"

    def pipeline(path, **config):
        options = {"replay": {"trace": str(path)}, "pca-spe": pca}  # (Δ as atomwatch up replays it)
        return live_pipeline(
            mosquitto.url, site, ("replay", "pca-spe"), options, ["pca-spe"], 0.02, 0.02, rows="data", **config
        )

    first = pipeline(before)
    await first.start()
    try:
        await first.wait_for(lambda: list((tmp_path / "state").glob("*.npz")), 30, "M saved")
        assert not first.controller.alarms.list(scope=scope)
    finally:
        await first.stop()

    second = pipeline(after, detect_workers=1)
    await second.start()
    try:
        await second.wait_for(lambda: second.controller.alarms.list(scope=scope), 30, "the attack's alarm")
        alarm = second.controller.alarms.list(scope=scope)[0]
        assert ("vm2", "CPUUtilization") in {(b["vm_name"], b["metric"]) for b in alarm.blame}, alarm.blame
        status = detector_status(second.controller, scope, "pca-spe")
        assert status["state"]["restored"]["rows"] >= 48
    finally:
        await second.stop()
