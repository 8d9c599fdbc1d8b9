"""The LSTM forecaster with failure head; plain PyTorch, scriptable for export."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelConfig:
    """Constructor arguments; stored in checkpoints so a model can be rebuilt from the file."""

    n_channels: int
    horizon: int
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    fail_head: bool = True


class Forecaster(nn.Module):
    """LSTM encoder over a normalised window; heads read its last hidden state.

    Outputs: `forecast_mean` and `forecast_logvar` [B, H, C] for the next H cells, and
    `fail_prob` [B] (the failure logit divided by a calibration temperature, through a sigmoid).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_channels = cfg.n_channels
        self.horizon = cfg.horizon
        self.has_fail = cfg.fail_head
        self.lstm = nn.LSTM(cfg.n_channels, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.forecast = nn.Linear(cfg.hidden, 2 * cfg.horizon * cfg.n_channels)
        self.fail = nn.Linear(cfg.hidden, 1)
        # Set by calibration on validation data; a buffer so it is exported with the weights.
        self.register_buffer("temperature", torch.ones(1))

    def encode(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return out[:, -1, :]

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forecast mean, forecast log-variance and the raw (uncalibrated) failure logit."""
        h = self.encode(x)
        f = self.forecast(h).view(-1, 2, self.horizon, self.n_channels)
        # Bounded log-variance keeps the Gaussian NLL from running away on tiny residuals.
        logvar = torch.clamp(f[:, 1], -8.0, 6.0)
        return f[:, 0], logvar, self.fail(h).squeeze(-1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mean, logvar, logit = self.heads(x)
        out = {"forecast_mean": mean, "forecast_logvar": logvar}
        if self.has_fail:
            out["fail_prob"] = torch.sigmoid(logit / self.temperature)
        return out
