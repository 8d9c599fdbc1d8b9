"""Extreme-value thresholds: they move with the budget and keep it on data with a known tail."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from agent.risk import Level, LevelMachine, logit, sensitive
from agent.spec import Tail, Thresholds
from training.calibrate import calibrate_thresholds, replay_levels
from training.data import AssetSeries, History
from training.evt import fit_tail, gpd_pwm
from training.labels import WindowSet, build_windows

PERIOD = 60.0


def smoothed(e: np.ndarray) -> np.ndarray:
    """An EWMA (alpha 0.5) of a sequence, as the agent smooths its scores: exceedances come in runs."""
    kernel = 0.5 ** np.arange(1, 60)
    return np.convolve(e, kernel)[: len(e)]


@functools.cache
def reference() -> np.ndarray:
    """A long independent draw of the healthy score, sorted: its empirical distribution."""
    return np.sort(smoothed(np.random.default_rng(99).exponential(1.0, 4_000_000)))


def healthy_run(cells: int, assets: int, seed: int) -> tuple[WindowSet, np.ndarray]:
    """Unlabelled windows of `assets` assets and a risk per window: a smoothed score with an
    exponential tail, as a probability under its own (known) distribution."""
    rng = np.random.default_rng(seed)
    series = tuple(AssetSeries(f"a{i}", 0, np.zeros((cells, 1))) for i in range(assets))
    ws = build_windows(History(("x",), PERIOD, series, "fp"), [], window=2, horizon=1, fail_horizon=30,
                       max_gap=0)
    score = np.empty(len(ws))
    for a in range(assets):
        idx = np.flatnonzero(ws.asset == a)
        score[idx] = smoothed(rng.exponential(1.0, len(idx)))
    p = np.searchsorted(reference(), score) / len(reference())
    return ws, np.clip(p, 1e-9, 1 - 1e-9)


def alarms_per_asset_day(ws: WindowSet, risk: np.ndarray, warning: float) -> float:
    t = Thresholds(warning, 1.0, hysteresis=0.1 * warning, dwell=2, cooldown=30)
    st = replay_levels(ws, risk, t, PERIOD, 30, {})
    return st.warnings / st.asset_days


class TestTail:
    def test_pwm_recovers_a_known_shape(self) -> None:
        """Excesses of a Pareto (xi 0.3) and of an exponential (xi 0) give back about their shape."""
        rng = np.random.default_rng(0)
        xi, _ = gpd_pwm(rng.pareto(1 / 0.3, 50_000))
        assert xi == pytest.approx(0.3, abs=0.05)
        xi, sigma = gpd_pwm(rng.exponential(2.0, 50_000))
        assert xi == pytest.approx(0.0, abs=0.03) and sigma == pytest.approx(2.0, rel=0.05)

    def test_quantile_and_survival_invert(self) -> None:
        t = Tail(0.02, 3.0, 1.5, 0.2)
        for p in (1e-3, 1e-6, 1e-9):
            assert float(t.survival(np.asarray(t.quantile(p)))) == pytest.approx(p, rel=1e-9)
        e = Tail(0.05, 1.0, 2.0, 0.0)
        assert float(e.survival(np.asarray(e.quantile(1e-7)))) == pytest.approx(1e-7, rel=1e-9)

    def test_extrapolates_beyond_the_sample(self) -> None:
        """From 20,000 exponential scores, the 1-in-10-million level is estimated within 15 %."""
        s = np.random.default_rng(1).exponential(1.0, 20_000)
        t = fit_tail(s)
        assert t is not None
        assert t.quantile(1e-7) == pytest.approx(-np.log(1e-7), rel=0.15)
        assert fit_tail(s[:50]) is None


class TestBudget:
    def test_lower_budget_higher_threshold(self) -> None:
        """On three days of four assets (too short to show one false alarm a month), each budget
        gets its own threshold, higher for a tighter budget."""
        ws, risk = healthy_run(3 * 1440, 4, seed=0)
        warns = [calibrate_thresholds(ws, risk, PERIOD, 30, {}, b / 30).warning
                 for b in (30.0, 3.0, 0.3)]
        assert warns[0] < warns[1] < warns[2]

    def test_realised_rate_within_a_factor_of_two(self) -> None:
        """Calibrated on 6 asset-days, replayed on 300 fresh asset-days of the same process: the
        false alarms per asset-day land within a factor of 2 of each budget."""
        ws, risk = healthy_run(3 * 1440, 2, seed=2)
        fresh, fresh_risk = healthy_run(30 * 1440, 10, seed=3)
        for per_month in (10.0, 1.0):
            budget = per_month / 30
            t = calibrate_thresholds(ws, risk, PERIOD, 30, {}, budget)
            rate = alarms_per_asset_day(fresh, fresh_risk, t.warning)
            assert budget / 2 <= rate <= 2 * budget, (per_month, rate)

    def test_sensitivity_moves_along_the_tail(self) -> None:
        """Sensitivity 10 lowers the thresholds to about ten times the healthy exceedances."""
        ws, risk = healthy_run(3 * 1440, 4, seed=4)
        t = calibrate_thresholds(ws, risk, PERIOD, 30, {}, 1 / 30)
        assert t.tail is not None
        loose = sensitive(t, 10.0)
        assert loose.warning < t.warning and loose.critical < t.critical and loose.warning <= loose.critical
        before = float(t.tail.survival(logit(np.asarray(t.warning))))
        after = float(t.tail.survival(logit(np.asarray(loose.warning))))
        assert after == pytest.approx(10 * before, rel=1e-6)
        assert sensitive(t, 1.0) == t
        between = loose.warning + 0.5 * (t.warning - loose.warning)  # alerts only with the loose ones
        for thresholds, alerts in ((t, False), (loose, True)):
            machine = LevelMachine(thresholds)
            machine.update(between, 0)
            assert (machine.update(between, 1) is not None) is alerts
            assert machine.level is (Level.WARNING if alerts else Level.OK)
