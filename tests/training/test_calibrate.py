"""Threshold calibration: the false-alarm budget holds on the data the thresholds were fit on."""

from __future__ import annotations

import numpy as np

from training.calibrate import calibrate_thresholds, fit_temperature, replay_levels
from training.data import AssetSeries, Event, History
from training.evaluate import failure_cells
from training.labels import build_windows

PERIOD = 60.0
CELLS = 3 * 1440  # three days per asset


def scenario(seed: int) -> tuple[object, np.ndarray, list[Event]]:
    """Eight assets over three days, four failing at the end; noisy risk with bursts, high before failures."""
    rng = np.random.default_rng(seed)
    series, events = [], []
    for i in range(8):
        series.append(AssetSeries(f"p{i}", 0, np.zeros((CELLS, 1))))
        if i < 4:
            events.append(Event((CELLS - 1) * PERIOD, f"p{i}", "failure"))
    ws = build_windows(History(("x",), PERIOD, tuple(series), "fp"), events, window=4, horizon=1,
                       fail_horizon=720, max_gap=0)
    risk = np.clip(rng.beta(2, 20, len(ws)), 0, 1)
    for _ in range(40):  # healthy bursts that a careless threshold would alert on
        at = rng.integers(len(ws) - 30)
        risk[at:at + 20] = np.maximum(risk[at:at + 20], rng.uniform(0.3, 0.9))
    ramp = ws.fail == 1
    risk[ramp] = np.maximum(risk[ramp], 0.95)
    return ws, risk, events


class TestThresholds:
    def test_budget_holds_where_fitted(self) -> None:
        """Replaying the level machine with the calibrated thresholds stays within the false-alarm budget."""
        for seed, budget in ((0, 1 / 30), (1, 0.5), (2, 0.1)):
            ws, risk, events = scenario(seed)
            fc = failure_cells(ws, events, PERIOD)  # type: ignore[arg-type]
            t = calibrate_thresholds(ws, risk, PERIOD, 720, fc, budget)  # type: ignore[arg-type]
            st = replay_levels(ws, risk, t, PERIOD, 720, fc)  # type: ignore[arg-type]
            assert st.false_per_asset_day <= budget
            assert st.caught == 4  # and the failures are still caught
            loose = replay_levels(ws, risk, type(t)(0.2, 0.5), PERIOD, 720, fc)  # type: ignore[arg-type]
            assert loose.false_per_asset_day > budget  # the budget was a real constraint

    def test_critical_is_a_level_of_its_own(self) -> None:
        """Where the budget would put both thresholds at the same risk (healthy risk far below
        the failing ramp's), critical still stands above warning by the hysteresis band."""
        for seed, budget in ((0, 1 / 30), (3, 1.0), (4, 5.0)):
            ws, risk, events = scenario(seed)
            healthy = ws.fail == 0  # type: ignore[attr-defined]
            risk[healthy] = np.minimum(risk[healthy], 0.2)  # nothing healthy near the ramp
            fc = failure_cells(ws, events, PERIOD)  # type: ignore[arg-type]
            t = calibrate_thresholds(ws, risk, PERIOD, 720, fc, budget)  # type: ignore[arg-type]
            assert t.critical >= min(t.warning * 1.1, (t.warning + 1) / 2) > t.warning
            st = replay_levels(ws, risk, t, PERIOD, 720, fc)  # type: ignore[arg-type]
            assert st.caught == 4

    def test_temperature_improves_log_loss(self) -> None:
        """Temperature scaling finds the temperature that undoes an over-confident logit scale."""
        rng = np.random.default_rng(0)
        z = rng.normal(0, 2, 20_000)
        y = (rng.random(20_000) < 1 / (1 + np.exp(-z))).astype(np.float32)
        t = fit_temperature((3 * z).astype(np.float32), y)
        assert abs(t - 3.0) < 0.3
