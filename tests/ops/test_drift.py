"""Input drift end to end: the PSI rises on a shifted channel and stays low on an unshifted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.broker import wait_until
from tests.ops.conftest import scripted_model

pytestmark = pytest.mark.integration


def test_drift_rises_on_the_shifted_channel_only(ops_factory: Any, tmp_path: Path) -> None:
    """x arrives 3 training std above its training mean, y as in training: x's PSI passes the
    threshold and refit_recommended goes up on the health topic; y's PSI stays low."""
    model = tmp_path / "drift.pt"
    # The risk reads y (always low), so the drifting x raises no alarms.
    scripted_model(model, channel=1, scale=0.0, bias=0.1, mean=(5.0, 10.0), std=(1.0, 2.0))
    ops = ops_factory(model=model, extra="[drift]\nwindow_s = 600\nmin_samples = 200\n")
    rng = np.random.default_rng(7)
    n = 400
    xs = rng.normal(8.0, 1.0, n)    # mean + 3 std
    ys = rng.normal(10.0, 2.0, n)   # as in training
    ops.readings("pump-1", list(zip(xs.tolist(), ys.tolist(), strict=True)), start=0)
    ops.risk_at("pump-1", n - 1)
    wait_until(lambda: (ops.health() or {}).get("refit_recommended") is True, 15, what="refit flag")
    ops.wait_metric("vigil_refit_recommended", "", 1)
    psi_x = ops.metric("vigil_input_drift_psi", 'channel="x"')
    psi_y = ops.metric("vigil_input_drift_psi", 'channel="y"')
    assert psi_x > 1.0, psi_x
    assert psi_y < 0.1, psi_y
    assert (ops.health() or {})["drift_psi"]["x"] > 0.25
