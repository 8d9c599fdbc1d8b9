"""Input drift: per-channel population stability index (PSI) of recent inputs against training.

The model file stores each channel's training mean and std (its normalisation), not a
histogram, so the reference distribution is N(mean, std) cut into `bins` equally likely
bins: each expects 1/bins of the readings. That is exact for normally distributed channels
and still monotone in a shift or a change of spread for others, which is what a refit
recommendation needs. Recent inputs are the newest cell of every scored window, counted in
event-time buckets so the PSI covers the last `window_s` of plant time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_FLOOR = 1e-4    # an empty bin counts as this share, so the log stays finite
_BUCKETS = 12    # event-time buckets per window: the window slides in steps of window_s / 12


def reference_edges(mean: float, std: float, bins: int) -> FloatArray:
    """Inner bin edges that cut N(mean, std) into `bins` equally likely bins."""
    nd = NormalDist(mean, std)
    return np.asarray([nd.inv_cdf(k / bins) for k in range(1, bins)], dtype=np.float64)


def psi(observed: npt.NDArray[np.int64] | FloatArray, expected: FloatArray) -> float:
    """Population stability index of observed counts against expected shares (both per bin)."""
    total = float(np.sum(observed))
    if total <= 0:
        return 0.0
    a = np.maximum(np.asarray(observed, dtype=np.float64) / total, _FLOOR)
    e = np.maximum(expected, _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass
class DriftTracker:
    """Histograms of recent inputs per channel against the training distribution."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bins: int = 10
    window_s: float = 6 * 3600.0
    min_samples: int = 200
    buckets: deque[tuple[int, npt.NDArray[np.int64]]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.edges = [reference_edges(m, s, self.bins) for m, s in zip(self.mean, self.std, strict=True)]
        self.expected = np.full(self.bins, 1.0 / self.bins)
        self.step = self.window_s / _BUCKETS

    def add(self, ts: npt.NDArray[np.float64], values: FloatArray) -> None:
        """Count the inputs `values` [N, C] seen at event times `ts` [N]."""
        if len(ts) == 0:
            return
        keys = np.floor(ts / self.step).astype(np.int64)
        for key in np.unique(keys):
            rows = values[keys == key]
            counts = np.zeros((len(self.channels), self.bins), dtype=np.int64)
            for c, edges in enumerate(self.edges):
                col = rows[:, c]
                col = col[np.isfinite(col)]
                counts[c] += np.bincount(np.searchsorted(edges, col), minlength=self.bins)
            self._merge(int(key), counts)
        self._prune(int(keys.max()))

    def _merge(self, key: int, counts: npt.NDArray[np.int64]) -> None:
        for k, c in self.buckets:
            if k == key:
                c += counts
                return
        self.buckets.append((key, counts))
        if len(self.buckets) > 1 and key < self.buckets[-2][0]:
            self.buckets = deque(sorted(self.buckets, key=lambda b: b[0]))

    def _prune(self, newest: int) -> None:
        while self.buckets and self.buckets[0][0] <= newest - _BUCKETS:
            self.buckets.popleft()

    def values(self) -> dict[str, float]:
        """PSI per channel over the window; channels with too few samples are left out."""
        if not self.buckets:
            return {}
        total = np.sum([c for _, c in self.buckets], axis=0)
        out = {}
        for i, name in enumerate(self.channels):
            row = total[i]
            if row.sum() >= self.min_samples:
                v = psi(row, self.expected)
                out[name] = v if math.isfinite(v) else 0.0
        return out
