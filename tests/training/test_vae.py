"""The LSTM-VAE anomaly scorer: ELBO terms on hand-made cases, training, export and calibration."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.runtime import load_model
from agent.spec import AnomalyStats, Combiner, ModelSpec
from tests.agent.conftest import make_spec
from tests.training.conftest import tiny_options
from training.export import export
from training.fit import fit
from training.labels import Inputs, WindowSet
from training.model import Forecaster, ModelConfig
from training.vae import (
    LstmVae,
    VaeConfig,
    VaeTrainConfig,
    WithAnomaly,
    cell_nll,
    kl_standard_normal,
    scores,
    train_vae,
)


def _inputs(windows: np.ndarray) -> Inputs:
    """Windows [N, W, C] laid end to end as a window set over already-normalised cells."""
    n, w, c = windows.shape
    cells = windows.reshape(n * w, c).astype(np.float64)
    ends = np.arange(n, dtype=np.int64) * w + w - 1
    ws = WindowSet(cells, ends, ends, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float32),
                   np.zeros(n, dtype=bool), np.full(n, np.nan, dtype=np.float32),
                   np.zeros(n, dtype=np.float32), ends - w + 1, ("a",), w, 1)
    return Inputs(ws, cells.astype(np.float32))


def _trained_on(windows: np.ndarray, epochs: int = 30) -> LstmVae:
    torch.manual_seed(0)
    vae = LstmVae(VaeConfig(n_channels=windows.shape[2], hidden=16, latent=4))
    data = _inputs(windows)
    idx = np.arange(len(windows))
    train_vae(vae, data, idx, data, idx, VaeTrainConfig(epochs=epochs, batch_size=64, lr=5e-3, seed=0))
    return vae


class TestTerms:
    def test_kl_is_zero_at_the_prior_and_grows_away_from_it(self) -> None:
        """KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2), summed over latents."""
        zero = kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4))
        assert torch.equal(zero, torch.zeros(3))
        mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
        want = 0.5 * (1.0 + 0.0) + 0.5 * (4.0 - 1.0 - math.log(4.0))
        assert float(kl_standard_normal(mu, logvar)[0]) == pytest.approx(want, rel=1e-6)

    def test_cell_nll_is_the_gaussian_negative_log_likelihood(self) -> None:
        x, mean, logvar = torch.tensor([1.5]), torch.tensor([0.5]), torch.tensor([math.log(2.0)])
        want = -torch.distributions.Normal(0.5, math.sqrt(2.0)).log_prob(torch.tensor(1.5))  # type: ignore[no-untyped-call]
        assert float(cell_nll(mean, logvar, x)[0]) == pytest.approx(float(want), rel=1e-6)

    def test_terms_and_score_are_per_window(self) -> None:
        torch.manual_seed(0)
        vae = LstmVae(VaeConfig(n_channels=3, hidden=8, latent=2))
        x = torch.randn(5, 7, 3)
        recon, kl = vae.terms(x, torch.zeros(5, 2))
        assert recon.shape == kl.shape == vae(x).shape == (5,)
        assert (kl >= 0).all()


class TestLearned:
    def test_constant_series_reconstructs_well(self) -> None:
        """After training on constant windows, their reconstruction is close and their NLL low."""
        rng = np.random.default_rng(0)
        level = rng.uniform(-1.0, 1.0, size=(256, 1, 2))
        windows = np.repeat(level, 12, axis=1).astype(np.float32)
        vae = _trained_on(windows)
        x = torch.from_numpy(windows[:32])
        with torch.no_grad():
            mu, _ = vae.encode(x)
            mean, _ = vae.decode(mu, 12)
            nll = float(vae(x).mean())
        assert float((mean - x).abs().mean()) < 0.15
        assert nll < 0.0  # far better than a unit Gaussian (0.92 per cell)

    def test_injected_spike_scores_high(self) -> None:
        """A spike in one cell of an otherwise normal window scores above every normal window."""
        rng = np.random.default_rng(1)
        t = np.arange(16)
        phase = rng.uniform(0, 2 * np.pi, size=(320, 1, 1))
        windows = (np.sin(0.4 * t[None, :, None] + phase) + 0.05 * rng.normal(size=(320, 16, 2))
                   ).astype(np.float32)
        vae = _trained_on(windows[:256])
        normal = scores(vae, _inputs(windows[256:]))
        spiked = windows[256:].copy()
        spiked[:, 9, 0] += 4.0
        anomalous = scores(vae, _inputs(spiked))
        assert anomalous.min() > np.quantile(normal, 0.99)


def test_model_file_with_the_vae_serves_anomaly_nll(tmp_path: Path) -> None:
    """The forecaster and the VAE answer in one forward; the file exports with parity and loads."""
    torch.manual_seed(0)
    base = Forecaster(ModelConfig(n_channels=3, horizon=2, hidden=8))
    vae = LstmVae(VaeConfig(n_channels=3, hidden=8, latent=2))
    x = np.random.default_rng(0).normal(size=(4, 8, 3)).astype(np.float32)
    spec = replace(make_spec(), heads=("forecast_mean", "forecast_logvar", "fail_prob", "anomaly_nll"),
                   anomaly=AnomalyStats(tuple(np.linspace(0.0, 3.0, 11))),
                   combiner=Combiner(1.0, 0.5, 0.0, w_anomaly=0.7))
    export(WithAnomaly(base, vae), spec, x, tmp_path / "m.pt")
    rt = load_model(tmp_path / "m.pt")
    out = rt.infer(x)
    assert out.anomaly_nll is not None and out.anomaly_nll.shape == (4,)
    with torch.no_grad():
        np.testing.assert_allclose(out.anomaly_nll, vae(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert rt.spec.anomaly == spec.anomaly and rt.spec.combiner.w_anomaly == 0.7


def test_model_file_with_the_vae_rebuilds_and_exports_to_onnx(tmp_path: Path) -> None:
    """`export_onnx_beside` rebuilds forecaster and VAE from the .pt file; ONNX Runtime serves anomaly_nll."""
    from agent.runtime_onnx import load_onnx
    from training.export import export_onnx_beside, rebuild

    torch.manual_seed(0)
    base = Forecaster(ModelConfig(n_channels=3, horizon=2, hidden=8, cell="gru"))
    served = WithAnomaly(base, LstmVae(VaeConfig(n_channels=3, hidden=8, latent=2)))
    x = np.random.default_rng(0).normal(size=(4, 8, 3)).astype(np.float32)
    spec = replace(make_spec(), heads=("forecast_mean", "forecast_logvar", "fail_prob", "anomaly_nll"),
                   anomaly=AnomalyStats(tuple(np.linspace(0.0, 3.0, 11))))
    export(served, spec, x, tmp_path / "m.pt")
    again, _ = rebuild(tmp_path / "m.pt")
    assert isinstance(again, WithAnomaly) and again.vae.config.latent == 2
    out, onnx_spec = export_onnx_beside(tmp_path / "m.pt")
    assert onnx_spec.version == load_model(tmp_path / "m.pt").spec.version
    a, b = load_model(tmp_path / "m.pt").infer(x), load_onnx(out).infer(x)
    assert a.anomaly_nll is not None and b.anomaly_nll is not None
    np.testing.assert_allclose(b.anomaly_nll, a.anomaly_nll, atol=1e-5)


def test_spec_without_anomaly_fields_still_loads() -> None:
    """Files written before the VAE (no `anomaly`, no `w_anomaly`) load with the signal off."""
    import json

    doc = json.loads(make_spec().to_json())
    del doc["anomaly"]
    del doc["combiner"]["w_anomaly"]
    spec = ModelSpec.from_json(json.dumps(doc))
    assert spec.anomaly is None and spec.combiner.w_anomaly == 0.0


def test_fit_with_vae(small_history: tuple[Path, Path], tmp_path: Path) -> None:
    """`fit --vae` trains the scorer on healthy training windows and calibrates it on validation."""
    opts = replace(tiny_options(small_history, tmp_path / "v.pt"), vae=True, vae_epochs=1)
    spec, summary = fit(opts)
    assert "anomaly_nll" in spec.heads and spec.anomaly is not None
    assert summary["vae"]["train_windows"] > 0 and summary["vae"]["val_windows"] >= 10
    assert spec.combiner.w_anomaly >= 0.0
    assert "anomaly_pr_auc" in summary["validation"]
    assert load_model(tmp_path / "v.pt").infer(np.zeros((2, 12, 5), dtype=np.float32)).anomaly_nll is not None


def test_fit_with_vae_on_a_history_without_failures(small_history: tuple[Path, Path], tmp_path: Path) -> None:
    """No failure labels: the VAE still serves; risk is the highest of its, surprise's and the state
    signal's probabilities."""
    opts = replace(tiny_options(small_history, tmp_path / "h.pt"), events=None, vae=True, vae_epochs=1)
    spec, _ = fit(opts)
    assert "fail_prob" not in spec.heads and {"forecast_mean", "anomaly_nll"} <= set(spec.heads)
    assert spec.combiner == Combiner(0.0, 1.0, 0.0, 1.0, 1.0, "max")
