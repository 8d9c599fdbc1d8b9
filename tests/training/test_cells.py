"""The recurrent cell (lstm, gru, rnn) and what the heads read of it (last state, attention) are choices
that survive export, rebuild and the agent's runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.runtime import Outputs, load_model
from agent.spec import ModelSpec
from tests.agent.conftest import CHANNELS, HORIZON, WINDOW, make_spec
from training import cli
from training.export import export, rebuild
from training.model import CELLS, Forecaster, ModelConfig, n_params
from training.vae import WithAnomaly


def round_trip(model: Forecaster, x: np.ndarray, path: Path, spec: ModelSpec | None = None
               ) -> tuple[Outputs, dict[str, torch.Tensor], Forecaster | WithAnomaly]:
    """Export `model` to `path`; what the agent's runtime gives on x, the eager outputs, the rebuilt model."""
    export(model, spec or make_spec(), x, path)
    out = load_model(path).infer(x)
    with torch.no_grad():
        eager = model(torch.from_numpy(x))
    again, _ = rebuild(path)
    return out, eager, again


def _model(cell: str, pool: str = "last") -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(ModelConfig(n_channels=len(CHANNELS), horizon=HORIZON, hidden=8, cell=cell, pool=pool))


@pytest.mark.parametrize(("cell", "pool"), [(c, "last") for c in sorted(CELLS)] + [("lstm", "attention")])
def test_cell_round_trips_through_export_and_the_agent(cell: str, pool: str, tmp_path: Path) -> None:
    """The agent's runtime gives the eager outputs, and the file rebuilds into the same cell and pool."""
    model = _model(cell, pool)
    x = np.random.default_rng(0).normal(size=(5, WINDOW, len(CHANNELS))).astype(np.float32)
    out, eager, again = round_trip(model, x, tmp_path / "m.pt")
    assert out.fail_prob is not None and out.forecast_mean is not None
    np.testing.assert_allclose(out.fail_prob, eager["fail_prob"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.forecast_mean, eager["forecast_mean"].numpy(), atol=1e-6)
    assert again.config.cell == cell and again.config.pool == pool


def test_cells_differ_in_size() -> None:
    """An RNN has a quarter of an LSTM's recurrent weights, a GRU three quarters."""
    sizes = {c: n_params(_model(c).lstm) for c in CELLS}
    assert sizes["rnn"] < sizes["gru"] < sizes["lstm"]
    assert sizes["lstm"] == 4 * sizes["rnn"]


def test_cli_offers_every_cell() -> None:
    args = cli.build_parser().parse_args(["fit", "--history", "h.csv", "--out", "m.pt", "--cell", "rnn"])
    assert cli.fit_options(args).cell == "rnn"


def test_attention_pools_the_states_by_learnt_weights() -> None:
    """Attention reads a softmax-weighted mean of the encoder's states: with its scores all equal,
    their plain mean; "last" reads the last state; any other pool is refused."""
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, WINDOW, len(CHANNELS))).astype(np.float32))
    last, attention = _model("lstm"), _model("lstm", "attention")
    with torch.no_grad():
        states, _ = attention.lstm(x)
        attention.attend.weight.zero_()
        torch.testing.assert_close(attention.encode(x), states.mean(dim=1))
        attention.attend.bias.fill_(3.0)  # a shared score still weighs every step alike
        torch.testing.assert_close(attention.encode(x), states.mean(dim=1))
        attention.attend.weight[0, 0] = 5.0  # unequal scores: no longer the mean
        assert not torch.allclose(attention.encode(x), states.mean(dim=1), atol=1e-3)
        own, _ = last.lstm(x)
        torch.testing.assert_close(last.encode(x), own[:, -1, :])
    assert n_params(attention) == n_params(last) + 8 + 1
    assert not any("attend" in k for k in last.state_dict())  # files from before attention still load
    with pytest.raises(ValueError, match="pool must be one of"):
        _model("lstm", "max")


def test_cli_offers_attention() -> None:
    args = cli.build_parser().parse_args(["fit", "--history", "h.csv", "--out", "m.pt",
                                          "--pool", "attention"])
    assert cli.fit_options(args).pool == "attention"
