"""Shared agent fixtures: a tiny real TorchScript model file, built once per session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.spec import Combiner, ModelSpec, Normalisation, SurpriseStats, Thresholds
from agent.windows import AssetWindow
from training.export import export
from training.model import Forecaster, ModelConfig

CHANNELS = ("temp", "vib", "press")
PERIOD_S = 10.0
WINDOW = 8
HORIZON = 2
FAIL_HORIZON = 6


@dataclass(frozen=True)
class ModelFile:
    """A model file on disk and the spec it carries (with its content-hash version)."""

    path: Path
    spec: ModelSpec


def make_spec(
    *,
    channels: tuple[str, ...] = CHANNELS,
    heads: tuple[str, ...] = ("forecast_mean", "forecast_logvar", "fail_prob"),
    thresholds: Thresholds | None = None,
    combiner: Combiner | None = None,
    rul_cap: float = 0.0,
) -> ModelSpec:
    """A small valid spec: unit normalisation, linear surprise quantiles."""
    n = len(channels)
    return ModelSpec(
        channels=channels,
        period_s=PERIOD_S,
        window=WINDOW,
        horizon=HORIZON,
        fail_horizon=FAIL_HORIZON,
        normalisation=Normalisation(mean=(0.0,) * n, std=(1.0,) * n),
        heads=heads,
        thresholds=thresholds or Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=2,
                                            cooldown=5),
        surprise=SurpriseStats(ewma_alpha=0.2, quantiles=tuple(np.linspace(0.0, 4.0, 11))),
        combiner=combiner or Combiner(w_fail=1.0, w_surprise=0.5, bias=0.0),
        fingerprint="test",
        rul_cap=rul_cap,
    )


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    """A seeded 3-channel LSTM (window 8, horizon 2, hidden 8) exported as TorchScript."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        # A switched-off head may be a zero-width layer; torch warns about initialising it.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op",
                                category=UserWarning)
        model = Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8,
                                       fail_head=True))
    probe = np.random.default_rng(0).normal(size=(4, WINDOW, len(CHANNELS))).astype(np.float32)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    spec = export(model, make_spec(), probe, path)
    return ModelFile(path, spec)


def format_1_window_arrays(w: AssetWindow, readings: list[tuple[int, int, float, float]]
                           ) -> dict[str, np.ndarray]:
    """The arrays `state()` wrote before format 2, for a `last` window fed `readings` (cell,
    channel, ts, value) in time order: float64 values and event times for every slot, fill
    counts per slot."""
    values = np.full((w.capacity, w.n_channels), np.nan)
    ts = np.full((w.capacity, w.n_channels), -np.inf)
    cell = np.full(w.capacity, -1, dtype=np.int64)
    filled = np.zeros(w.capacity, dtype=np.int32)
    newest = max(r[0] for r in readings)
    for c, ch, t, v in readings:
        slot = c % w.capacity
        if c <= newest - w.capacity:
            continue  # overwritten since
        if cell[slot] != c:
            cell[slot], values[slot], ts[slot], filled[slot] = c, np.nan, -np.inf, 0
        if ts[slot, ch] == -np.inf:
            filled[slot] += 1
        if t > ts[slot, ch]:
            values[slot, ch], ts[slot, ch] = v, t
    return {"values": values, "ts": ts, "count": np.zeros((w.capacity, w.n_channels), dtype=np.int32),
            "cell": cell, "filled": filled}
