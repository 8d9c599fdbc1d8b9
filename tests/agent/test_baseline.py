"""Per-asset baselines: learnt from an asset's first cells, the same in training and serving,
applied before the model, and kept across a restart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.baseline import BaselineLearner, robust_baseline, robust_spread
from agent.runtime import load_model
from agent.spec import AssetProfile, Baseline, BaselinePolicy
from agent.state import Checkpoint
from tests.agent.conftest import CHANNELS, HORIZON, PERIOD_S, WINDOW, make_spec
from tests.agent.test_pipeline import T0, Harness, config
from training.data import AssetSeries, History
from training.export import export
from training.labels import build_windows
from training.model import Forecaster, ModelConfig

LEARN = 12
POLICY = BaselinePolicy(LEARN, (0, 1, 2), (1e-3, 1e-3, 1e-3))
KNOWN = Baseline((5.0, -1.0, 100.0), (2.0, 0.5, 10.0))


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(CHANNELS)))


class TestLearner:
    @settings(max_examples=30, deadline=None)
    @given(stride=st.integers(1, 5), seed=st.integers(0, 100))
    def test_each_cell_counts_once(self, stride: int, seed: int) -> None:
        """Fed overlapping windows (every `stride` cells), the learner's baseline is the baseline of
        the asset's first LEARN cells, each counted once: what training computes."""
        x = rows(60, seed)
        learner = BaselineLearner(POLICY)
        end = WINDOW - 1
        while not learner.update(end, x[end - WINDOW + 1:end + 1]):
            end += stride
        assert learner.baseline is not None and learner.rows is None  # the buffer is dropped once learnt
        want = robust_baseline(x[:LEARN], POLICY)
        assert learner.baseline.center == pytest.approx(want.center, abs=1e-6)
        assert learner.baseline.scale == pytest.approx(want.scale, rel=1e-6)

    def test_resumes_from_its_state(self) -> None:
        """Stopped half-way, a learner restored from its state learns the same baseline."""
        x = rows(40)
        a, b = BaselineLearner(POLICY), BaselineLearner(POLICY)
        for end in range(WINDOW - 1, 12):
            a.update(end, x[end - WINDOW + 1:end + 1])
        arrays, meta = a.state()
        b.restore({k: np.frombuffer(v.tobytes(), dtype=v.dtype).reshape(v.shape) for k, v in arrays.items()},
                  json.loads(json.dumps(meta)))
        for end in range(12, 30):
            a.update(end, x[end - WINDOW + 1:end + 1])
            b.update(end, x[end - WINDOW + 1:end + 1])
        assert a.baseline is not None and a.baseline == b.baseline

    def test_spread_of_a_spiky_channel(self) -> None:
        """A channel at 0 with rare spikes gets a tenth of its standard deviation as spread, not 0;
        a constant channel gets the policy's floor."""
        x = np.zeros((1000, 3))
        x[::50, 0] = 10.0
        x[:, 1] = np.random.default_rng(0).normal(3.0, 2.0, 1000)
        assert robust_spread(x)[0] == pytest.approx(0.1 * x[:, 0].std())
        assert robust_spread(x)[1] == pytest.approx(2.0, rel=0.1)
        b = robust_baseline(x, POLICY)
        assert b.scale[2] == 1e-3 and b.center[1] == pytest.approx(3.0, abs=0.2)


def feed(h: Harness, asset: str, x: np.ndarray, start: int = 0) -> list[dict[str, object]]:
    """Cells start.. of `x`, each scored as it closes; the risk docs published for the asset."""
    out = []
    for k in range(start, len(x)):
        h.cell(asset, k, values=tuple(float(v) for v in x[k]))
        out += [r.doc for r in h.batch().risks if r.asset == asset]
    return out


def export_with(path: Path, profiles: dict[str, AssetProfile]) -> Path:
    """The tiny LSTM (seeded: the same weights every time) with per-asset baselines and `profiles`."""
    torch.manual_seed(0)
    model = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8, fail_head=True))
    spec = replace(make_spec(), baseline=POLICY, profiles=profiles)
    export(model, spec, rows(4 * WINDOW).reshape(4, WINDOW, len(CHANNELS)).astype(np.float32), path)
    return path


@pytest.fixture(scope="module")
def baselined_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LSTM of the agent tests, with per-asset baselines: `known` in the file, others learnt."""
    return export_with(tmp_path_factory.mktemp("baselined") / "b.pt", {"known": AssetProfile(KNOWN)})


class TestPipeline:
    def test_unknown_asset_learns_first_known_scores_at_once(self, tmp_path: Path,
                                                            baselined_model: Path) -> None:
        """An asset the file knows is scored from its first whole window; another only once it
        has seen LEARN cells; and the learnt asset, at another level and scale, reads to the model
        as a known asset with that baseline does."""
        h = Harness(config(tmp_path, baselined_model), load_model(baselined_model))
        x = rows(40)
        known = feed(h, "known", x * np.asarray(KNOWN.scale) + np.asarray(KNOWN.center))
        assert len(known) == len(x) - WINDOW + 1
        other = x * np.array([50.0, 3.0, 0.01]) + np.array([1000.0, -40.0, 7.0])
        learnt = feed(h, "other", other)
        assert len(learnt) == len(x) - LEARN + 1  # its first window is scored once LEARN cells are in
        assert h.pipe.n_learning == 0
        learnt_baseline = robust_baseline(other[:LEARN], POLICY)
        same = export_with(tmp_path / "same.pt", {"other": AssetProfile(learnt_baseline)})
        h2 = Harness(config(tmp_path / "b", same), load_model(same))
        again = feed(h2, "other", other)
        fail = [d["signals"]["fail_prob"] for d in learnt]  # type: ignore[index]
        # Equal but for the agent's ring holding the readings as float32 while learning.
        assert fail == pytest.approx([d["signals"]["fail_prob"] for d in again[LEARN - WINDOW:]],  # type: ignore[index]
                                     abs=1e-5)
        assert fail != [d["signals"]["fail_prob"] for d in known[LEARN - WINDOW:]]  # type: ignore[index]

    def test_learning_and_learnt_baselines_survive_a_restart(self, tmp_path: Path,
                                                             baselined_model: Path) -> None:
        """Checkpointed to SQLite half-way through learning and after it, a restored pipeline goes on
        to publish exactly what the uninterrupted one publishes."""
        x = rows(40, seed=3) * 4.0 + 20.0
        for stop in (LEARN - 3, LEARN + 5):
            a = Harness(config(tmp_path / f"a{stop}", baselined_model), load_model(baselined_model))
            feed(a, "p1", x[:stop])
            ck = Checkpoint(tmp_path / f"state{stop}.sqlite")
            ck.save(a.pipe.contract(), a.pipe.checkpoint_rows())
            b = Harness(config(tmp_path / f"b{stop}", baselined_model), load_model(baselined_model))
            assert b.pipe.restore(ck.load()) == 1
            ck.close()
            assert [d["risk"] for d in feed(b, "p1", x, start=stop)] == [
                d["risk"] for d in feed(a, "p1", x, start=stop)]


def test_training_learns_what_the_agent_learns() -> None:
    """Training's baseline for an asset it has no training windows of is the agent learner's, and
    its first scored window is the one the agent scores first."""
    from training import baselines as base

    x = rows(80, seed=7) * 3.0 + 5.0
    ws = build_windows(History(CHANNELS, PERIOD_S, (AssetSeries("p", int(T0 // PERIOD_S), x),), "fp"), [],
                       window=WINDOW, horizon=HORIZON, fail_horizon=6, max_gap=0)
    got = base.learn(ws, 0, POLICY)
    assert got is not None
    baseline, ready = got
    learner = BaselineLearner(POLICY)
    for end in range(WINDOW - 1, len(x)):
        if learner.update(end, x[end - WINDOW + 1:end + 1].astype(np.float32)):
            break
    assert learner.baseline is not None  # the agent's windows come as float32 from its ring
    assert baseline.center == pytest.approx(learner.baseline.center, rel=1e-6)
    assert baseline.scale == pytest.approx(learner.baseline.scale, rel=1e-6)
    assert ready == int(T0 // PERIOD_S) + LEARN - 1
