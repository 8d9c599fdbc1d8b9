"""The LSTM forecaster with failure and RUL heads; plain PyTorch, scriptable for export.

The encoder is a recurrent cell by default, or the trend encoder (`training/trend.py`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.trend import TrendEncoder

# Elman RNN (tanh) is the cheapest cell; LSTM the default; GRU between the two.
CELLS: dict[str, type[nn.LSTM] | type[nn.GRU] | type[nn.RNN]] = {
    "lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
POOLS = ("last", "attention")
ENCODERS = ("recurrent", "trend")


@dataclass(frozen=True)
class ModelConfig:
    """Constructor arguments; stored in checkpoints so a model can be rebuilt from the file."""

    n_channels: int
    horizon: int
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
    fail_head: bool = True
    forecast_head: bool = True
    rul_head: bool = False
    rul_cap: float = 125.0
    # Width of a small ReLU layer between the LSTM state and the RUL head (0: a linear head).
    head_hidden: int = 0
    cell: str = "lstm"  # or "gru", "rnn"
    # Causal exponential smoothing of the normalised window inside the model (0: off). The
    # agent still sends raw windows; the smoothing travels in the file with the weights.
    smooth: float = 0.0
    # What the heads read: the encoder's last state ("last"), or a learnt softmax-weighted mean
    # of its states over the whole window ("attention": one more linear layer of hidden + 1 weights).
    pool: str = "last"
    # "recurrent" (the cell above), or "trend": an MLP on fixed level and slope summaries of the
    # window (training/trend.py), which needs the window length and puts `dropout` on its inputs.
    encoder: str = "recurrent"
    window: int = 0
    # The forecast's log-variance is kept within [min_logvar, 6]: a floor of -4.6 (a standard
    # deviation of 0.1 training spreads) keeps a channel that sat still in training from making
    # the likelihood, and the training with it, explode the first time it moves.
    min_logvar: float = -8.0
    # Forecast the change from the newest cell rather than the level itself: a channel whose
    # level moves beyond what training saw (a warmer day, a drifting sensor) is still forecast
    # as well as its changes are, instead of being pulled back to the levels of training.
    delta: bool = False


class Forecaster(nn.Module):
    """LSTM encoder over a normalised window (or the trend encoder); heads read its last hidden state.

    Outputs: `forecast_mean` and `forecast_logvar` [B, H, C] for the next H cells,
    `fail_prob` [B] (the failure logit divided by a calibration temperature, through a
    sigmoid) and `rul` [B] (cells to failure, within 0..`rul_cap`), as configured.
    A head that is switched off has no outputs (and no weights).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not (cfg.fail_head or cfg.forecast_head or cfg.rul_head):
            raise ValueError("a model needs at least one head")
        self.config = cfg  # kept for checkpoints; not part of the scripted model
        self.n_channels = cfg.n_channels
        self.horizon = cfg.horizon
        self.has_fail = cfg.fail_head
        self.has_forecast = cfg.forecast_head
        self.has_rul = cfg.rul_head
        self.rul_cap = float(cfg.rul_cap)
        self.min_logvar = float(cfg.min_logvar)
        self.delta = cfg.delta
        if not 0.0 <= cfg.smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {cfg.smooth}")
        self.smooth = float(cfg.smooth)
        if cfg.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
        if cfg.pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {cfg.pool!r}")
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {cfg.encoder!r}")
        # Only one encoder exists; TorchScript compiles just the branch of the one that is set.
        self.trend: TrendEncoder | None = None
        self.lstm: nn.Module | None = None
        if cfg.encoder == "trend":
            if cfg.pool != "last" or cfg.layers != 1:
                raise ValueError("pool and layers belong to the recurrent encoder, not to the trend encoder")
            self.trend = TrendEncoder(cfg.n_channels, cfg.window, cfg.hidden, cfg.dropout)
        else:
            self.lstm = CELLS[cfg.cell](cfg.n_channels, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                        dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout if self.trend is None else 0.0)
        self.attention = cfg.pool == "attention"
        # Without attention, no weights: last-state files and checkpoints stay as they were.
        self.attend: nn.Module = nn.Linear(cfg.hidden, 1) if self.attention else nn.Identity()
        n_forecast = 2 * cfg.horizon * cfg.n_channels if cfg.forecast_head else 0
        self.forecast = _linear(cfg.hidden, n_forecast)
        self.fail = _linear(cfg.hidden, 1 if cfg.fail_head else 0)
        width = cfg.head_hidden if cfg.rul_head else 0
        self.rul_mlp = width > 0
        self.rul_hidden = _linear(cfg.hidden, width)
        self.rul = _linear(width or cfg.hidden, 1 if cfg.rul_head else 0)
        # Set by calibration on validation data; a buffer so it is exported with the weights.
        self.register_buffer("temperature", torch.ones(1))

    def smoothed(self, x: Tensor) -> Tensor:
        """The window as the encoder reads it: smoothed inside the model when `smooth` is set."""
        return ewma(x, self.smooth) if self.smooth > 0.0 else x

    def encode(self, x: Tensor) -> Tensor:
        x = self.smoothed(x)
        if self.trend is not None:
            features: Tensor = self.trend(x)
            return features
        assert self.lstm is not None
        out, _ = self.lstm(x)
        if self.attention:
            # Each step's weight from its own state: the trend's knee can count as much as the end.
            weights = torch.softmax(self.attend(out), dim=1)  # [B, W, 1]
            pooled = (weights * out).sum(dim=1)
        else:
            pooled = out[:, -1, :]
        h: Tensor = self.drop(pooled)
        return h

    def trend_features(self, x: Tensor) -> Tensor:
        """The trend encoder's raw features of windows x, as `encode` computes them."""
        assert self.trend is not None
        return self.trend.features(self.smoothed(x))

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Forecast mean, forecast log-variance, the raw failure logit and RUL / rul_cap.

        Absent heads give empty tensors.
        """
        h = self.encode(x)
        b = h.shape[0]
        if self.has_forecast:
            f = self.forecast(h).view(b, 2, self.horizon, self.n_channels)
            # Bounded log-variance keeps the Gaussian NLL from running away on tiny residuals.
            mean, logvar = f[:, 0], torch.clamp(f[:, 1], self.min_logvar, 6.0)
            if self.delta:
                mean = mean + x[:, -1:, :]
        else:
            mean = logvar = h.new_zeros((b, 0, self.n_channels))
        logit = self.fail(h).squeeze(-1) if self.has_fail else h.new_zeros((b,))
        if self.has_rul:
            z = torch.relu(self.rul_hidden(h)) if self.rul_mlp else h
            rul = self.rul(z).squeeze(-1)
        else:
            rul = h.new_zeros((b,))
        return mean, logvar, logit, rul

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mean, logvar, logit, rul = self.heads(x)
        return outputs(mean, logvar, logit, rul, self.temperature, self.rul_cap, self.has_forecast,
                       self.has_fail, self.has_rul)


class Ensemble(nn.Module):
    """Several forecasters of one config, trained apart (own seeds) and averaged in one file.

    Averaging cuts the variance that a small data set leaves in any one network. Forecasts
    combine as a Gaussian mixture (mean of means; variance = mean of variances plus the
    spread of the means), the failure logit and the RUL as plain means; one calibration
    temperature applies to the averaged logit. Costs K times one member at inference.
    """

    def __init__(self, members: list[Forecaster]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs members")
        first = members[0]
        self.config = first.config
        self.n_members = len(members)
        self.members = nn.ModuleList(members)
        self.n_channels, self.horizon = first.n_channels, first.horizon
        self.has_fail, self.has_forecast, self.has_rul = first.has_fail, first.has_forecast, first.has_rul
        self.rul_cap = first.rul_cap
        self.min_logvar = first.min_logvar
        self.register_buffer("temperature", torch.ones(1))

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        means, second, logits, ruls = [], [], [], []
        for m in self.members:
            mean, logvar, logit, rul = m.heads(x)
            means.append(mean)
            second.append(torch.exp(logvar) + mean * mean)
            logits.append(logit)
            # Each member's RUL within [0, cap] before the mean: one member far past the cap
            # (which no training target is) must not pull the others' average up.
            ruls.append(torch.clamp(rul, 0.0, 1.0))
        mean = torch.stack(means).mean(0)
        var = torch.stack(second).mean(0) - mean * mean
        logvar = torch.clamp(torch.log(torch.clamp(var, min=1e-8)), self.min_logvar, 6.0)
        return mean, logvar, torch.stack(logits).mean(0), torch.stack(ruls).mean(0)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mean, logvar, logit, rul = self.heads(x)
        return outputs(mean, logvar, logit, rul, self.temperature, self.rul_cap, self.has_forecast,
                       self.has_fail, self.has_rul)


Model = Forecaster | Ensemble


def outputs(mean: Tensor, logvar: Tensor, logit: Tensor, rul: Tensor, temperature: Tensor, rul_cap: float,
            has_forecast: bool, has_fail: bool, has_rul: bool) -> dict[str, Tensor]:
    """The model file's outputs from the raw heads (DESIGN.md, "Model file")."""
    out: dict[str, Tensor] = {}
    if has_forecast:
        out["forecast_mean"] = mean
        out["forecast_logvar"] = logvar
    if has_fail:
        out["fail_prob"] = torch.sigmoid(logit / temperature)
    if has_rul:
        out["rul"] = torch.clamp(rul, 0.0, 1.0) * rul_cap
    return out


def ewma(x: Tensor, alpha: float) -> Tensor:
    """Causal exponential smoothing along time of x [B, W, C], started at the window's first cell."""
    w = x.shape[1]
    t = torch.arange(w, dtype=x.dtype, device=x.device)
    lag = t[:, None] - t[None, :]
    keep = 1.0 - alpha
    m = torch.where(lag >= 0, alpha * torch.pow(torch.full_like(lag, keep), lag), torch.zeros_like(lag))
    m[:, 0] = torch.pow(torch.full_like(t, keep), t)
    return torch.matmul(m, x)


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear layer; with n_out 0 an empty one (a head that is off keeps the module layout)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(n_in, n_out)


def n_params(model: nn.Module) -> int:
    """Trainable parameters (what the benchmark reports)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
