"""The recurrent cell is a choice (lstm, gru, rnn) that survives export, rebuild and the agent's runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.runtime import load_model
from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec
from training import cli
from training.export import export, rebuild
from training.model import CELLS, Forecaster, ModelConfig, n_params


def _model(cell: str) -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8, cell=cell))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_cell_round_trips_through_export_and_the_agent(cell: str, tmp_path: Path) -> None:
    """The agent's runtime gives the eager outputs, and the file rebuilds into the same cell."""
    model = _model(cell)
    x = np.random.default_rng(0).normal(size=(5, WINDOW, len(CHANNELS))).astype(np.float32)
    export(model, make_spec(), x, tmp_path / "m.pt")
    out = load_model(tmp_path / "m.pt").infer(x)
    with torch.no_grad():
        eager = model(torch.from_numpy(x))
    assert out.fail_prob is not None and out.forecast_mean is not None
    np.testing.assert_allclose(out.fail_prob, eager["fail_prob"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.forecast_mean, eager["forecast_mean"].numpy(), atol=1e-6)
    again, _ = rebuild(tmp_path / "m.pt")
    assert again.config.cell == cell


def test_cells_differ_in_size() -> None:
    """An RNN has a quarter of an LSTM's recurrent weights, a GRU three quarters."""
    sizes = {c: n_params(_model(c).lstm) for c in CELLS}
    assert sizes["rnn"] < sizes["gru"] < sizes["lstm"]
    assert sizes["lstm"] == 4 * sizes["rnn"]


def test_cli_offers_every_cell() -> None:
    args = cli.build_parser().parse_args(["fit", "--history", "h.csv", "--out", "m.pt", "--cell", "rnn"])
    assert cli.fit_options(args).cell == "rnn"
