"""The trend encoder: exact level and slope features, a scale fitted on training windows only,
and a model file that the agent, rebuild and a resumed run all read the same way."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec
from tests.training.test_cells import round_trip
from tests.training.test_train import tiny_data
from training import cli
from training.model import Ensemble, Forecaster, ModelConfig
from training.train import TrainConfig, train
from training.trend import MEAN_SPANS, SLOPE_SPANS, trend_basis


def _trend(n_channels: int = 2, window: int = 30, **kw: object) -> Forecaster:
    torch.manual_seed(0)
    cfg = ModelConfig(n_channels=n_channels, horizon=2, hidden=8, rul_head=True, rul_cap=30.0,
                      encoder="trend", window=window)
    return Forecaster(replace(cfg, **kw))


def test_features_are_recent_means_and_least_squares_slopes() -> None:
    """On a ramp a + b t, every span's mean is the ramp at the span's middle and every slope is b;
    spans past the window are dropped and the whole window is always one."""
    w = 30
    spans_m = sorted({s for s in MEAN_SPANS if s <= w} | {w})
    spans_s = sorted({s for s in SLOPE_SPANS if s <= w} | {w})
    assert trend_basis(w).shape == (w, len(spans_m) + len(spans_s))
    t = np.arange(w, dtype=np.float64)
    a, b = np.array([1.5, -2.0]), np.array([0.25, -0.1])
    x = torch.from_numpy((a + b * t[:, None])[None].astype(np.float32))  # [1, W, 2]
    f = _trend(window=w).trend_features(x).view(2, -1).double().numpy()
    for c in range(2):
        want_m = [a[c] + b[c] * (w - 1 - (k - 1) / 2) for k in spans_m]
        np.testing.assert_allclose(f[c, :len(spans_m)], want_m, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f[c, len(spans_m):], b[c], rtol=1e-4, atol=1e-6)
    assert trend_basis(1).shape == (1, 1)  # a one-cell window keeps its level, has no slope
    with pytest.raises(ValueError, match="window length"):
        trend_basis(0)


def test_training_fits_the_feature_scale_on_training_windows_and_resume_keeps_it(tmp_path: Path) -> None:
    """Before the first step the features are standardised over training windows (mean 0, spread 1
    there, not on validation); a resumed run keeps the scale of its checkpoint."""
    tr, va = tiny_data()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=10, seed=3, progress=False)
    model = _trend(n_channels=tr.ws.cells.shape[1], window=tr.ws.window)
    assert torch.equal(model.trend.feature_std, torch.ones_like(model.trend.feature_std))  # type: ignore[union-attr]
    train(model, tr, va, cfg, 30.0, checkpoint=tmp_path / "c.pt")
    enc = model.trend
    assert enc is not None
    xt, xv = (torch.from_numpy(d.x(np.arange(len(d.ws)))) for d in (tr, va))  # all (under 20,000)
    with torch.no_grad():
        z = (model.trend_features(xt) - enc.feature_mean) / enc.feature_std
        zv = (model.trend_features(xv) - enc.feature_mean) / enc.feature_std
    varying = enc.feature_std > 1e-4
    np.testing.assert_allclose(z.mean(0)[varying].numpy(), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0, unbiased=False)[varying].numpy(), 1.0, atol=1e-3)
    assert float((zv.mean(0)[varying]).abs().max()) > 0.05  # fitted on train, so off on validation
    scale = enc.feature_mean.clone()
    again = _trend(n_channels=tr.ws.cells.shape[1], window=tr.ws.window)
    # Resumed on other windows, whose own scale would differ, it keeps the checkpoint's.
    train(again, va, va, cfg, 30.0, checkpoint=tmp_path / "c.pt", resume=True)
    assert again.trend is not None and torch.equal(again.trend.feature_mean, scale)


def test_trend_model_round_trips_through_export_rebuild_and_the_agent(tmp_path: Path) -> None:
    """The agent's runtime gives the eager outputs, and the file rebuilds into the same trend model."""
    model = _trend(n_channels=len(CHANNELS), window=WINDOW, horizon=HORIZON, dropout=0.2).eval()
    assert model.trend is not None
    model.trend.fit_scale(torch.linspace(-1, 1, model.trend.feature_mean.numel()),
                          torch.linspace(0.5, 2, model.trend.feature_std.numel()))
    x = np.random.default_rng(0).normal(size=(5, WINDOW, len(CHANNELS))).astype(np.float32)
    spec = replace(make_spec(), heads=("forecast_mean", "forecast_logvar", "fail_prob", "rul"), rul_cap=30.0)
    out, eager, again = round_trip(model, x, tmp_path / "t.pt", spec)
    assert out.rul is not None and out.fail_prob is not None
    np.testing.assert_allclose(out.rul, eager["rul"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out.fail_prob, eager["fail_prob"].numpy(), atol=1e-6)
    assert isinstance(again, Forecaster)
    assert again.config.encoder == "trend" and again.config.window == WINDOW and again.config.hidden == 8
    assert again.trend is not None and torch.equal(again.trend.feature_std, model.trend.feature_std)
    assert not any(k.startswith("lstm.") for k in again.state_dict())


def test_ensemble_caps_each_member_before_the_mean() -> None:
    """A member far past the cap counts as the cap: it cannot pull the others' mean above it."""
    members = [_trend(), _trend()]
    with torch.no_grad():
        for m, value in zip(members, (3.0, 0.5), strict=True):  # RUL / cap from the bias alone
            m.rul.weight.zero_()
            m.rul.bias.fill_(value)
        out = Ensemble(members).eval()(torch.zeros(2, 30, 2))
    np.testing.assert_allclose(out["rul"].numpy(), (1.0 + 0.5) / 2 * 30.0, rtol=1e-6)


def test_cmapss_preset_is_trend_a_cell_or_pool_picks_the_lstms_and_mixes_are_refused() -> None:
    with pytest.raises(ValueError, match="encoder must be one of"):
        _trend(encoder="cnn")
    with pytest.raises(ValueError, match="not to the trend encoder"):
        _trend(pool="attention")
    args = cli.build_parser().parse_args(["fit", "--history", "h.csv", "--out", "m.pt", "--encoder", "trend",
                                          "--format", "cmapss"])
    opts = cli.fit_options(args)
    assert opts.encoder == "trend" and opts.members == 5 and opts.dropout == 0.2  # the C-MAPSS preset
    cmapss = ["fit", "--history", "h.csv", "--out", "m.pt", "--format", "cmapss"]
    assert cli.fit_options(cli.build_parser().parse_args(cmapss)) == opts  # trend is the default
    for extra in (["--encoder", "recurrent", "--cell", "gru"], ["--cell", "gru"]):  # a cell implies it
        lstm = cli.fit_options(cli.build_parser().parse_args([*cmapss, *extra]))
        assert (lstm.encoder, lstm.cell, lstm.members, lstm.dropout) == ("recurrent", "gru", 3, 0.0)
    pooled = cli.fit_options(cli.build_parser().parse_args([*cmapss, "--pool", "attention"]))
    assert pooled.encoder == "recurrent"
    for extra in (["--cell", "gru"], ["--pool", "attention"]):
        with pytest.raises(ValueError, match="need the recurrent encoder"):
            cli.fit_options(cli.build_parser().parse_args([*cmapss, "--encoder", "trend", *extra]))
