"""Input drift: per-channel population stability index (PSI) of recent inputs against training.

The reference is the training distribution of each channel. Model files from `vigil-train fit`
carry its quantiles (`input_quantiles`), whose inner values are the bin edges: each bin then
expects its share of probability (1/bins, or more where tied quantiles merge bins). Older files
store only the normalisation's mean and std; there the reference is N(mean, std) cut into
`bins` equally likely bins, exact for normally distributed channels and still monotone in a
shift or a change of spread for others (a skewed channel then shows some drift from the start).
Recent inputs are the newest cell of every scored window (as the model reads it: against the
asset's baseline when the model has per-asset baselines), counted per asset in a histogram
whose weights decay with event time, so the PSI covers about the last `window_s` of plant time.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_FLOOR = 1e-4    # an empty bin counts as this share, so the log stays finite


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


class DriftTracker:
    """Per asset and channel, an event-time weighted histogram of recent inputs against the
    training distribution.

    Each asset is judged on its own data: machines that differ from one another (or from the
    fleet the model was trained on, before per-asset baselines bring them together) do not
    read as drift, and an asset reports only once it has `min_samples` inputs (weighted)
    spanning half the window. Weights decay with event time, time constant `window_s`. The
    histograms of every asset live in one array, so a batch is counted in a few numpy calls.
    """

    def __init__(self, channels: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...],
                 bins: int = 10, window_s: float = 86400.0, min_samples: int = 200,
                 quantiles: tuple[tuple[float, ...], ...] = ()) -> None:
        self.channels = channels
        self.window_s = window_s
        self.min_samples = min_samples
        if quantiles:
            ref = [quantile_bins(q) for q in quantiles]
            self.edges = [e for e, _ in ref]
            expected = [sh for _, sh in ref]
        else:
            self.edges = [reference_edges(m, s, bins) for m, s in zip(mean, std, strict=True)]
            expected = [np.full(bins, 1.0 / bins)] * len(channels)
        self.width = max(len(e) + 1 for e in self.edges)  # histogram columns (the most bins of any channel)
        self.expected = np.zeros((len(channels), self.width))
        self.valid = np.zeros((len(channels), self.width), dtype=bool)
        for c, sh in enumerate(expected):
            self.expected[c, : len(sh)] = sh
            self.valid[c, : len(sh)] = True
        self.slots: dict[str, int] = {}
        self.counts = np.zeros((0, len(channels), self.width), dtype=np.float32)
        self.first = np.zeros(0)   # per slot: event time of its first and newest input
        self.last = np.zeros(0)

    def _slot(self, asset: str) -> int:
        slot = self.slots.get(asset)
        if slot is None:
            slot = self.slots[asset] = len(self.slots)
            if slot >= len(self.counts):
                grow = max(2 * len(self.counts), 16)
                self.counts = np.concatenate([self.counts, np.zeros((grow - len(self.counts),
                                                                     *self.counts.shape[1:]), np.float32)])
                self.first = np.concatenate([self.first, np.full(grow - len(self.first), np.nan)])
                self.last = np.concatenate([self.last, np.full(grow - len(self.last), np.nan)])
        return slot

    def forget(self, asset: str) -> None:
        """Start an asset afresh (after a repair: another machine's data)."""
        slot = self.slots.get(asset)
        if slot is not None:
            self.counts[slot] = 0.0
            self.first[slot] = self.last[slot] = np.nan

    def add(self, assets: list[str], ts: npt.NDArray[np.float64], values: FloatArray) -> None:
        """Count the inputs `values` [N, C] of `assets` [N] seen at event times `ts` [N]."""
        if len(ts) == 0:
            return
        slots = np.fromiter((self._slot(a) for a in assets), dtype=np.int64, count=len(assets))
        # Decay each asset's histogram once, to the newest event time the batch brings it.
        uniq, pos = np.unique(slots, return_inverse=True)
        newest, oldest = np.full(len(uniq), -np.inf), np.full(len(uniq), np.inf)
        np.maximum.at(newest, pos, ts)
        np.minimum.at(oldest, pos, ts)
        last = self.last[uniq]
        fresh = np.isnan(last)
        self.first[uniq[fresh]] = oldest[fresh]
        decay = np.where(fresh, 1.0, np.exp(-np.maximum(newest - np.nan_to_num(last), 0.0) / self.window_s))
        self.counts[uniq] *= decay[:, None, None].astype(np.float32)
        self.last[uniq] = np.where(fresh, newest, np.maximum(newest, np.nan_to_num(last)))
        # Per batch on the worker thread: one searchsorted per channel and one add.at, no
        # per-reading Python (NaN sorts past every edge and is dropped with the non-finite).
        n_ch = len(self.channels)
        idx = np.empty(values.shape, dtype=np.int64)
        for c, edges in enumerate(self.edges):
            idx[:, c] = np.searchsorted(edges, values[:, c], side="left")
        keep = np.isfinite(values)
        rows = np.broadcast_to(slots[:, None], values.shape)[keep]
        chans = np.broadcast_to(np.arange(n_ch)[None, :], values.shape)[keep]
        # Within the batch too, an input weighs by its age against its asset's newest.
        weight = np.exp(np.minimum(ts - newest[pos], 0.0) / self.window_s).astype(np.float32)
        np.add.at(self.counts, (rows, chans, idx[keep]),
                  np.broadcast_to(weight[:, None], values.shape)[keep])

    def per_asset(self) -> tuple[list[str], FloatArray]:
        """The assets that report (enough inputs over half the window) and their PSI [A, C]."""
        names = [a for a in self.slots]
        if not names:
            return [], np.zeros((0, len(self.channels)))
        slot = np.fromiter((self.slots[a] for a in names), dtype=np.int64, count=len(names))
        counts = self.counts[slot].astype(np.float64)
        total = counts.sum(axis=2)                                     # [A, C]
        span = self.last[slot] - self.first[slot]
        ok = (span >= self.window_s / 2) & (total.min(axis=1) >= self.min_samples)
        if not ok.any():
            return [], np.zeros((0, len(self.channels)))
        counts, total = counts[ok], total[ok]
        a = np.maximum(counts / np.maximum(total, 1e-12)[:, :, None], _FLOOR)
        e = np.maximum(self.expected, _FLOOR)[None]
        v = np.where(self.valid[None], (a - e) * np.log(a / e), 0.0).sum(axis=2)
        return [n for n, k in zip(names, ok, strict=True) if k], np.nan_to_num(v, nan=0.0)

    def values(self) -> dict[str, float]:
        """Per channel, the highest PSI of any asset that reports; empty until one does.

        Plant data has daily and batch cycles, and a few minutes of it differ from the training
        data by nature: an asset reports only once its inputs span half the window.
        """
        names, v = self.per_asset()
        if not names:
            return {}
        return {c: float(v[:, i].max()) for i, c in enumerate(self.channels)}

    def drifting(self, threshold: float, n: int = 10) -> list[tuple[str, float]]:
        """The (at most n) assets whose PSI passes `threshold` on some channel, most drifted first."""
        names, v = self.per_asset()
        if not names:
            return []
        worst = v.max(axis=1)
        order = np.argsort(-worst, kind="stable")
        return [(names[i], round(float(worst[i]), 4)) for i in order[:n] if worst[i] > threshold]

    def state(self) -> dict[str, np.ndarray]:
        """Arrays a checkpoint keeps (the assets in slot order, their histograms and times)."""
        n = len(self.slots)
        return {"assets": np.asarray(list(self.slots), dtype=str), "counts": self.counts[:n].copy(),
                "first": self.first[:n].copy(), "last": self.last[:n].copy()}

    def restore(self, state: dict[str, np.ndarray]) -> int:
        """Resume from `state()` (histograms of another shape are dropped); returns the assets kept."""
        counts = state["counts"]
        if counts.shape[1:] != self.counts.shape[1:]:
            return 0
        for i, asset in enumerate(state["assets"].tolist()):
            slot = self._slot(str(asset))
            self.counts[slot] = counts[i]
            self.first[slot], self.last[slot] = state["first"][i], state["last"][i]
        return len(state["assets"])
