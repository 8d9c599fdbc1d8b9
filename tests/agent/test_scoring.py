"""Scoring: probabilities with extreme-value tails, the state signal, per-asset statistics, the
combination without labels, drivers, and one scoring path for the live and the shadow model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agent.risk import EmpiricalCdf, combine
from agent.runtime import Outputs
from agent.scoring import Scorer, level_contributions
from agent.spec import AssetProfile, Combiner, LevelStats, SurpriseStats, Tail
from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec

QUANTILES = tuple(np.linspace(0.0, 10.0, 101))
TAIL = Tail(0.02, 9.8, 2.0, 0.1)


class TestCdf:
    def test_tail_ranks_beyond_the_largest_healthy_score(self) -> None:
        """Without a tail every score past the healthy maximum is 1 alike; with one, a larger score
        is still rarer, and the CDF stays continuous and increasing."""
        plain, tailed = EmpiricalCdf(QUANTILES), EmpiricalCdf(QUANTILES, TAIL)
        far = np.array([11.0, 20.0, 80.0])
        assert (plain(far) == 1.0).all()
        p = tailed(far)
        assert (np.diff(p) > 0).all() and (p < 1.0).all()
        grid = np.linspace(0.0, 30.0, 3001)
        assert (np.diff(tailed(grid)) >= 0).all()
        assert float(tailed(np.array([9.8 + 1e-9]))[0]) == pytest.approx(0.98, abs=1e-6)


class TestCombine:
    def test_max_rule_takes_the_strongest_signal(self) -> None:
        """Without labels, one signal deep in its tail is enough, whatever the others say."""
        c = Combiner(0.0, 1.0, 0.0, w_anomaly=0.0, w_level=1.0, rule="max")
        assert combine(None, 0.2, c, None, 0.999999) == 0.999999
        assert combine(None, 0.9999, c, None, 0.01) == 0.9999
        assert combine(None, 0.3, c, 0.99999, None) == 0.3  # the anomaly signal has no weight here
        assert combine(None, None, c, None, None) == 0.5

    def test_logistic_rule_as_fitted(self) -> None:
        """The logistic rule applies its weights to probabilities kept within 1e-6 of 0 and 1, as
        it was fitted: a signal deeper in its tail adds nothing more."""
        c = Combiner(1.0, 1.0, 0.0)
        assert combine(0.5, 1 - 1e-6, c) == combine(0.5, 1 - 1e-12, c)


def spec_with(**kw: object) -> object:
    return replace(make_spec(heads=("forecast_mean", "forecast_logvar")), **kw)


def outputs(b: int, mean: float = 0.0) -> Outputs:
    m = np.full((b, HORIZON, len(CHANNELS)), mean, dtype=np.float32)
    return Outputs(forecast_mean=m, forecast_logvar=np.zeros_like(m), fail_prob=None, rul=None)


class TestScorer:
    def test_an_asset_own_statistics(self) -> None:
        """The same forecast error reads as rarer for an asset whose own errors are small than for
        the fleet, through its own residual scale and distribution."""
        fleet = SurpriseStats(0.5, QUANTILES, (1.0, 1.0, 1.0), TAIL, 30.0)
        own = replace(fleet, residual_scale=(0.1, 0.1, 0.1))
        spec = spec_with(surprise=fleet, combiner=Combiner(0.0, 1.0, 0.0, rule="max"),
                         profiles={"quiet": AssetProfile(surprise=own)})
        scorer = Scorer(spec)  # type: ignore[arg-type]
        x = np.zeros((1, WINDOW, len(CHANNELS)), dtype=np.float32)
        got = {}
        for asset in ("quiet", "loud"):
            tr = scorer.tracker()
            scorer.score([asset], outputs(1), x, [tr], [10])
            x1 = x.copy()
            x1[0, -1, :] = 0.5  # the next cell misses the forecast by 0.5
            got[asset] = scorer.score([asset], outputs(1), x1, [tr], [11])[0].p_surprise
        assert got["quiet"] is not None and got["loud"] is not None and got["quiet"] > got["loud"]

    def test_state_signal_and_its_drivers(self) -> None:
        """A channel far from the healthy state raises the state signal, names itself as the driver,
        and raises the risk of a model without labels; contributions add up to the distance."""
        level = LevelStats(1.0, (0.0, 0.0, 0.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
                           QUANTILES, TAIL, 30.0)
        spec = spec_with(level=level, combiner=Combiner(0.0, 1.0, 0.0, w_level=1.0, rule="max"))
        scorer = Scorer(spec)  # type: ignore[arg-type]
        x = np.zeros((2, WINDOW, len(CHANNELS)), dtype=np.float32)
        x[1, -1, 1] = 8.0
        got = scorer.score(["a", "b"], outputs(2), x, [scorer.tracker(), scorer.tracker()], [10, 10])
        assert got[1].p_level is not None and got[0].p_level is not None
        assert got[1].p_level > 0.99 > got[0].p_level
        assert got[1].risk == got[1].p_level and got[1].per_channel is not None
        assert int(np.argmax(got[1].per_channel)) == 1
        contrib = level_contributions(x[:, -1, :], level)
        assert contrib.sum(axis=1) == pytest.approx([0.0, 64.0 / 3])


def test_shadow_scores_as_the_live_pipeline(tmp_path: object) -> None:
    """A shadow model identical to the live one takes the very decisions the live one takes (one
    scoring path: the anomaly and state signals included)."""
    from pathlib import Path

    from agent.runtime import load_model
    from agent.shadow import ShadowScorer
    from tests.agent.test_baseline import export_with
    from tests.agent.test_pipeline import Harness, config

    path = export_with(Path(str(tmp_path)) / "m.pt", {})
    h = Harness(config(Path(str(tmp_path)), path), load_model(path))
    h.pipe.shadow = ShadowScorer(load_model(path), 10)
    rng = np.random.default_rng(0)
    live, shadow = [], []
    for k in range(60):
        h.cell("p1", k, values=tuple(float(v) for v in rng.normal(size=3) * (1 + (k > 40) * 6)))
        out = h.batch()
        live += [(a.doc["level"], a.doc["previous_level"]) for a in out.alerts]
        shadow += [(t.level.label, t.previous.label) for t in out.shadow]
    assert live and live == shadow
