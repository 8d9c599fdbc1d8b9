"""A tiny simulated history and a model fitted on it, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sim.history import write_history
from sim.plant import PlantConfig
from training.fit import FitOptions


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """One torch thread: tiny models run fastest so, and a shared 2-core machine is not oversubscribed."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six pumps over eight days: small enough to train on in seconds, with failures in it."""
    out = tmp_path_factory.mktemp("hist")
    return write_history(PlantConfig(n_assets=6, seed=5, onset_mean_s=2 * 86400), 8, out,
                         progress=False)


def tiny_options(history: tuple[Path, Path], out: Path, seed: int = 0) -> FitOptions:
    return FitOptions(history=history[0], events=history[1], out=out, window=12, horizon=2,
                      fail_horizon=720, hidden=8, epochs=2, windows_per_epoch=3000, seed=seed,
                      threads=1, progress=False)
