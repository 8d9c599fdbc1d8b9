"""tests/perf uses the tiny model file of tests/agent, and one tiny model exported both ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec, model_file
from training.export import export, export_onnx
from training.model import Forecaster, ModelConfig

__all__ = ["model_file"]


@dataclasses.dataclass(frozen=True)
class Pair:
    """One model exported both ways."""

    pt: Path
    onnx: Path


def tiny_model(**kw: object) -> Forecaster:
    """The tiny seeded forecaster of these tests."""
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8, **kw))  # type: ignore[arg-type]


def probe_windows(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, WINDOW, len(CHANNELS))).astype(np.float32)


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    d = tmp_path_factory.mktemp("pair")
    model = tiny_model()
    export(model, make_spec(), probe_windows(), d / "m.pt")
    export_onnx(model, make_spec(), probe_windows(), d / "m.onnx")
    return Pair(d / "m.pt", d / "m.onnx")
