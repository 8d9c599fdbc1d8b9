"""The trend encoder: a small MLP on fixed summaries of the window (levels and slopes at several spans).

Each channel of the normalised window is projected on a fixed basis: its mean over the last
1, 5, 10, 20, 40, 80 and 120 cells and its least-squares slope over the last 10, 20, 40, 80
and 120 (spans longer than the window are dropped, the whole window is always one). Those
features are standardised with a mean and spread fitted on training windows before the first
step (`training.train.fit_trend_scale`), dropped out during training, and read by two ReLU
layers. The basis is a prior that no recurrent cell has to learn from 100 engines: how high
each sensor is now, and how fast it has moved lately.
Everything is linear algebra, so it scripts, exports to ONNX and serves in microseconds.
"""

import numpy as np
import torch
from torch import Tensor, nn

MEAN_SPANS = (1, 5, 10, 20, 40, 80, 120)
SLOPE_SPANS = (10, 20, 40, 80, 120)


def trend_basis(window: int) -> Tensor:
    """[window, B]: columns that give a window's recent means and slopes by a matrix product."""
    if window < 1:
        raise ValueError(f"the trend encoder needs the window length, got {window}")
    cols = []
    # Spans past the window are dropped; the whole window is always one (slopes need 2 cells).
    for k in sorted({s for s in MEAN_SPANS if s <= window} | {window}):
        b = np.zeros(window)
        b[-k:] = 1.0 / k
        cols.append(b)
    for k in sorted({s for s in SLOPE_SPANS if s <= window} | ({window} if window >= 2 else set())):
        t = np.arange(k) - (k - 1) / 2.0
        b = np.zeros(window)
        b[-k:] = t / float(t @ t)  # least squares: slope = sum(t * x) / sum(t^2)
        cols.append(b)
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))


class TrendEncoder(nn.Module):
    """[B, W, C] normalised windows -> [B, hidden]: basis features, standardised, then an MLP."""

    # Buffers, declared for the type checker. No `from __future__ import annotations` in this
    # file: TorchScript reads these class annotations and cannot resolve them as strings.
    basis: Tensor
    feature_mean: Tensor
    feature_std: Tensor

    def __init__(self, n_channels: int, window: int, hidden: int, dropout: float) -> None:
        super().__init__()
        basis = trend_basis(window)
        n_features = n_channels * basis.shape[1]
        self.register_buffer("basis", basis)
        # Set by fit_scale from training windows; identity until then.
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.drop = nn.Dropout(dropout)
        self.wide = nn.Linear(n_features, 2 * hidden)
        self.out = nn.Linear(2 * hidden, hidden)

    def features(self, x: Tensor) -> Tensor:
        """The raw basis features [B, C * B] (before standardisation)."""
        return torch.matmul(x.transpose(1, 2), self.basis).flatten(1)

    def fit_scale(self, mean: Tensor, std: Tensor) -> None:
        """Standardise features with this mean and spread (from training windows)."""
        with torch.no_grad():
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(torch.clamp(std, min=1e-6))

    def forward(self, x: Tensor) -> Tensor:
        z = (self.features(x) - self.feature_mean) / self.feature_std
        return torch.relu(self.out(torch.relu(self.wide(self.drop(z)))))
