"""Per-regime normalisation: learnt on training rows, stored in the spec, applied alike by the agent."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from agent.errors import ModelError
from agent.spec import ModelSpec, Normalisation
from tests.agent.conftest import make_spec
from training.data import AssetSeries, History
from training.labels import build_windows, fit_normalisation
from training.regimes import find_regimes
from training.regimes import fit_normalisation as fit_rows

POINTS = np.array([[0.0, 0.0], [20.0, 0.6], [40.0, 0.8]])   # three operating conditions
LEVELS = np.array([[500.0, 10.0], [560.0, 14.0], [620.0, 9.0]])  # sensor levels per condition


def multi_regime(n: int, seed: int, regimes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows [op1, op2, s1, s2]: conditions drawn at random, sensors set by condition plus wear and noise."""
    rng = np.random.default_rng(seed)
    k = rng.integers(regimes, size=n)
    ops = POINTS[k] + rng.normal(scale=[0.01, 0.001], size=(n, 2))
    wear = np.linspace(0, 1, n)[:, None] * np.array([3.0, 0.5])
    sensors = LEVELS[k] + wear + rng.normal(scale=[1.0, 0.2], size=(n, 2))
    return np.concatenate([ops, sensors], axis=1), k


def spec_with(norm: Normalisation) -> ModelSpec:
    return replace(make_spec(channels=("op1", "op2", "s1", "s2")), normalisation=norm)


class TestFindRegimes:
    def test_three_conditions_are_found(self) -> None:
        """k-means on the operating channels finds the three conditions, at the right places."""
        x, _ = multi_regime(3000, seed=0)
        centres, _ = find_regimes(x[:, :2], None)
        assert len(centres) == 3
        found = centres[np.argsort(centres[:, 0])]
        np.testing.assert_allclose(found, POINTS, atol=0.01)

    def test_noise_around_one_condition_is_one_regime(self) -> None:
        """Measurement noise around a single operating point is not mistaken for regimes."""
        rng = np.random.default_rng(1)
        ops = rng.normal(scale=[0.002, 0.0003], size=(5000, 2))
        centres, _ = find_regimes(ops, None)
        assert len(centres) == 1
        x = np.concatenate([ops, rng.normal(size=(5000, 2))], axis=1)
        assert fit_rows(x, (0, 1)).n_regimes == 0  # stored as plain global normalisation


class TestPerRegimeNormalisation:
    def test_each_regime_is_centred_and_scaled(self) -> None:
        """Each regime's sensors end with mean ~0 and std ~1, which one global map cannot do."""
        x, k = multi_regime(6000, seed=2)
        norm = fit_rows(x, (0, 1))
        assert norm.n_regimes == 3
        z = norm.apply(x)
        for j in range(3):
            zj = z[k == j][:, 2:]
            np.testing.assert_allclose(zj.mean(axis=0), 0.0, atol=0.05)
            np.testing.assert_allclose(zj.std(axis=0), 1.0, atol=0.05)
        plain = fit_rows(x, ())
        assert abs(plain.apply(x)[k == 0][:, 2].mean()) > 0.5

    def test_regime_channels_become_the_regime_code(self) -> None:
        """Operating channels are replaced by their regime centre, so their noise never reaches the model."""
        x, k = multi_regime(3000, seed=3)
        z = fit_rows(x, (0, 1)).apply(x)
        for j in range(3):
            assert np.ptp(z[k == j][:, :2], axis=0).max() < 1e-6
        assert len(np.unique(z[:, 0].round(6))) == 3

    def test_agent_normalises_exactly_like_training(self) -> None:
        """ModelSpec.normalise on raw windows equals the training windows (both ways of building them)."""
        x, _ = multi_regime(400, seed=4)
        hist = History(("op1", "op2", "s1", "s2"), 1.0,
                       (AssetSeries("a", 0, x[:200]), AssetSeries("b", 0, x[200:])), "fp")
        ws = build_windows(hist, [], window=10, horizon=2, fail_horizon=5, max_gap=0)
        norm = fit_normalisation(ws, regime_channels=(0, 1))
        assert norm.n_regimes == 3
        spec = ModelSpec.from_json(spec_with(norm).to_json())  # as the agent reads it from the file
        idx = np.arange(len(ws))
        raw = ws.cells[ws.rows(idx)]
        agent = spec.normalise(raw)
        np.testing.assert_array_equal(agent, ws.x(idx, norm))
        np.testing.assert_array_equal(agent, ws.inputs(norm).x(idx))

    def test_regimes_come_from_training_rows_only(self) -> None:
        """The normalisation is fitted on the training split: rows of other assets do not move it."""
        x, _ = multi_regime(600, seed=5)
        shifted = x.copy()
        shifted[:, 2:] += 1000.0
        train = History(("op1", "op2", "s1", "s2"), 1.0, (AssetSeries("a", 0, x[:300]),), "fp")
        both = History(("op1", "op2", "s1", "s2"), 1.0,
                       (AssetSeries("a", 0, x[:300]), AssetSeries("z", 0, shifted[300:])), "fp")
        kw = {"window": 5, "horizon": 1, "fail_horizon": 2, "max_gap": 0}
        ws_train = build_windows(train, [], **kw)
        ws_both = build_windows(both, [], **kw)
        only_a = ws_both.subset(ws_both.asset == 0)
        assert fit_normalisation(only_a, (0, 1)) == fit_normalisation(ws_train, (0, 1))


class TestSpecCompatibility:
    def test_old_metadata_without_regimes_still_loads(self) -> None:
        """A model file written before regimes (no regime or rul_cap fields) loads and normalises globally."""
        doc = json.loads(make_spec().to_json())
        for key in ("regime_channels", "regime_scale", "regime_centres", "regime_mean", "regime_std"):
            del doc["normalisation"][key]
        del doc["rul_cap"]
        spec = ModelSpec.from_json(json.dumps(doc))
        assert spec == make_spec()
        x = np.arange(12, dtype=float).reshape(2, 2, 3)
        np.testing.assert_array_equal(spec.normalise(x), x.astype(np.float32))

    def test_regime_metadata_round_trips(self) -> None:
        """A spec with regimes survives JSON and is equal after."""
        x, _ = multi_regime(2000, seed=6)
        spec = spec_with(fit_rows(x, (0, 1)))
        assert ModelSpec.from_json(spec.to_json()) == spec

    def test_inconsistent_regimes_are_refused(self) -> None:
        """Regime tables of the wrong shape are refused with a clear reason."""
        x, _ = multi_regime(2000, seed=7)
        norm = fit_rows(x, (0, 1))
        with pytest.raises(ModelError, match="one mean and std per regime"):
            spec_with(replace(norm, regime_mean=norm.regime_mean[:2]))
        with pytest.raises(ModelError, match="regime channel"):
            spec_with(replace(norm, regime_channels=(0, 9)))

    def test_rul_head_needs_a_cap(self) -> None:
        """A model declaring a rul head must state its cap, and only such a model may."""
        with pytest.raises(ModelError, match="rul_cap"):
            replace(make_spec(), heads=("fail_prob", "rul"))
        assert replace(make_spec(), heads=("fail_prob", "rul"), rul_cap=125.0).rul_cap == 125.0
