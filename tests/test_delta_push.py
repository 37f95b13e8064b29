"""ATOM's tracking/monitoring loop, live: the controller derives Δ from μ and the scope's PCA model
and pushes it to the agent with set-delta; the agent tracks with it from the next round."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline import make_pipeline

from atomwatch.traces import write_trace

pytestmark = pytest.mark.asyncio


async def test_controller_pushes_delta_from_mu(mosquitto, site, tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    cols = [f"vm{i}/{m}" for i in (1, 2, 3) for m in ("CPUUtilization", "NetworkOut", "DiskWriteOps")]
    scale = np.array([1.0, 1000.0, 10.0] * 3)
    latent = rng.normal(0, 1, (n, 2))
    values = (50 + latent @ rng.normal(0, 1, (2, len(cols))) + 0.3 * rng.normal(0, 1, (n, len(cols)))) * scale
    trace = tmp_path / "t.csv"
    write_trace(trace, cols, values)
    pipe = make_pipeline(
        mosquitto.url,
        site,
        trace,
        agent_tick=0.01,
        controller_tick=0.01,
        delta_rel=0.0,
        detectors=["pca-spe"],
        options={"pca-spe": {"t": 200}},
        plugins=("replay", "pca-spe"),
    )
    pipe.controller.config.mu = 0.01
    pipe.controller.config.mu_every = 100
    await pipe.start()
    try:
        await pipe.wait_for(lambda: np.all(pipe.agent.deltas > 0), 60, "Δ pushed to every series")
        det = pipe.controller.detectors.instances[(f"{site}/hv1", "pca-spe")]
        expected = det.deltas_from_mu(0.01)
        got = {k: pipe.agent.deltas[a] for k, a in pipe.agent.table.aliases.items()}
        # Δ follows each metric's own scale (std_i · δ): network in bytes/s gets a far larger Δ
        net = np.mean([got[k] for k in got if k.metric == "NetworkOut"])
        cpu = np.mean([got[k] for k in got if k.metric == "CPUUtilization"])
        assert net > 100 * cpu
        for key, d in expected.items():
            assert got[key] == pytest.approx(d, rel=0.5), key.column  # the model moves between pushes
        assert pipe.controller.ingest.dropped.total() == 0
    finally:
        await pipe.stop()
