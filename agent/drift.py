"""Input drift: per-channel population stability index (PSI) of recent inputs against training.

The reference is the training distribution of each channel. Model files from `vigil-train fit`
carry its quantiles (`input_quantiles`), whose inner values are the bin edges: each bin then
expects its share of probability (1/bins, or more where tied quantiles merge bins). Older files
store only the normalisation's mean and std; there the reference is N(mean, std) cut into
`bins` equally likely bins, exact for normally distributed channels and still monotone in a
shift or a change of spread for others (a skewed channel then shows some drift from the start).
Recent inputs are the newest cell of every scored window, counted in event-time buckets so the
PSI covers the last `window_s` of plant time.
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


def quantile_bins(quantiles: tuple[float, ...]) -> tuple[FloatArray, FloatArray]:
    """Bin edges and expected shares from quantiles at evenly spaced probabilities 0..1.

    A value v falls in bin i = the number of edges below it, i.e. bins (-inf, e1], (e1, e2]...
    Tied quantiles (a channel often at one value) merge into one edge whose bin takes their mass.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    probs = np.linspace(0.0, 1.0, len(q))
    inner, p_inner = q[1:-1], probs[1:-1]
    edges = np.unique(inner)
    cdf = np.asarray([p_inner[inner == e].max() for e in edges])
    shares = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return edges, shares


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
    window_s: float = 86400.0
    min_samples: int = 200
    quantiles: tuple[tuple[float, ...], ...] = ()
    buckets: deque[tuple[int, npt.NDArray[np.int64]]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.quantiles:
            ref = [quantile_bins(q) for q in self.quantiles]
            self.edges = [e for e, _ in ref]
            self.expected = [s for _, s in ref]
        else:
            self.edges = [reference_edges(m, s, self.bins) for m, s in zip(self.mean, self.std, strict=True)]
            self.expected = [np.full(self.bins, 1.0 / self.bins)] * len(self.channels)
        self.width = max(len(e) + 1 for e in self.edges)  # histogram columns (the most bins of any channel)
        self.step = self.window_s / _BUCKETS

    def add(self, ts: npt.NDArray[np.float64], values: FloatArray) -> None:
        """Count the inputs `values` [N, C] seen at event times `ts` [N]."""
        if len(ts) == 0:
            return
        # Per batch on the worker thread: one searchsorted per channel and one bincount, no
        # per-reading Python (NaN sorts past every edge and is dropped with the non-finite).
        n_ch = len(self.channels)
        idx = np.empty(values.shape, dtype=np.int64)
        for c, edges in enumerate(self.edges):
            idx[:, c] = np.searchsorted(edges, values[:, c], side="left")
        flat = idx + np.arange(n_ch) * self.width
        keep = np.isfinite(values)
        keys = np.floor(ts / self.step).astype(np.int64)
        size = n_ch * self.width
        if keys[0] == keys[-1] and (keys == keys[0]).all():
            groups = [(int(keys[0]), keep)]
        else:
            groups = [(int(k), keep & (keys == k)[:, None]) for k in np.unique(keys)]
        for key, mask in groups:
            counts = np.bincount(flat[mask], minlength=size).reshape(n_ch, self.width)
            self._merge(key, counts)
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
        """PSI per channel over the window; channels with too few samples are left out.

        Nothing is reported until the inputs span half the window: plant data has daily and
        batch cycles, and a few minutes of it differ from the training data by nature.
        """
        if not self.buckets or (self.buckets[-1][0] - self.buckets[0][0] + 1) * self.step < self.window_s / 2:
            return {}
        total = np.sum([c for _, c in self.buckets], axis=0)
        out = {}
        for i, name in enumerate(self.channels):
            row = total[i, : len(self.edges[i]) + 1]
            if row.sum() >= self.min_samples:
                v = psi(row, self.expected[i])
                out[name] = v if math.isfinite(v) else 0.0
        return out
