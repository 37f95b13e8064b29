"""The unattended policy through the controller's verdict path: a pca-spe episode nobody answered
is learnt after ``rebaseline_after`` rows, and the operator's later *malicious* verdict on its
alarm (a real alarm store, the controller's ``Verdicts``) takes those rows out of the model again
and says so in the alarm's audit trail."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from atomwatch import Row, SeriesKey
from atomwatch.controller.alarms import AlarmStore
from atomwatch.controller.detection import DetectorSet
from atomwatch.controller.verdicts import Verdicts
from atomwatch.plugins.pca_spe.detector import PcaSpeDetector

SCOPE = "s1/hv1"


async def test_malicious_verdict_on_a_learnt_episode_restores_the_model_and_notes_it():
    rng = np.random.default_rng(21)
    d = 9
    f = rng.standard_normal((700, 2))
    x = 50.0 + 5.0 * f @ rng.standard_normal((2, d)) + 0.3 * rng.standard_normal((700, d))
    x[400:, 4] += 40.0  # the attack: one metric far off, for good
    cols = tuple(SeriesKey.from_column(f"vm{j // 3}/m{j % 3}") for j in range(d))
    det = PcaSpeDetector(SCOPE, {"t": 200, "alpha": 1e-5, "rebaseline_after": 100})
    detectors = DetectorSet({}, {})
    detectors.instances[(SCOPE, "pca-spe")] = det
    store = AlarmStore(":memory:")
    executor = ThreadPoolExecutor(1)
    verdicts = Verdicts(store, lambda: detectors, executor, lambda hook, **kw: None)
    try:
        for i in range(400):
            assert det.update(Row(SCOPE, i, float(i), cols, x[i])) is None
        before = det.win.stats.rows().copy()
        alarm = None
        for i in range(400, 520):
            a = det.update(Row(SCOPE, i, float(i), cols, x[i]))
            if a is not None:
                alarm, _ = store.record(a, cols, x[i])
        assert alarm is not None and alarm.first_row == 400 and alarm.last_row == 499  # learnt at row 499
        assert det.status()["unattended_episodes"] == [400]

        await verdicts.give_verdict(alarm.id, "malicious", "alice")
        assert np.array_equal(det.win.stats.rows(), before)
        actions = [e["action"] for e in store.audit(alarm.id)]
        assert "model restored" in actions
        # the attack is still going on: abnormal again, and not learnt a second time
        again = [det.update(Row(SCOPE, i, float(i), cols, x[i])) for i in range(520, 700)]
        assert all(a is not None and "audit" not in a.details for a in again)
    finally:
        executor.shutdown()
        store.shutdown()
