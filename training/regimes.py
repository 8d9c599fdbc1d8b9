"""Normalisation fitted on training rows, per operating regime where the data has several.

Multi-regime data (C-MAPSS FD002/FD004: six flight conditions) mixes sensor levels that
depend on the operating condition far more than on wear. The regimes are found by k-means
on the channels that set the condition (for C-MAPSS, the three operating settings), on
training rows only; each regime gets its own centre and spread, and all of it goes into the
model file, where `agent.spec.Normalisation.apply` uses it for training and agent alike.

The number of regimes is found from the data: real operating conditions are tight clusters,
so adding the centre that separates the last two of them explains nearly all the spread left
(a drop of 5x or more), while a continuous load or measurement noise shrinks by a fraction at
each added centre. Each k-means runs from several seeds and keeps the best.

Scaling "robust" (the default outside presets) takes each channel's median and robust spread
(`agent.baseline.robust_spread`): outliers in the training data do not set it, and a channel
that sits at one value and sometimes spikes does not collapse to a zero spread.

The fit reads its rows as blocks, up to three passes over them (moments; the k-means sample;
per-regime moments), so a history larger than memory fits exactly as one in memory does:
moments merge block by block, and the k-means sample picks the same rows either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.baseline import robust_spread
from agent.spec import Normalisation

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
RowBlocks = Callable[[], Iterable[FloatArray]]
"""Training rows [n, C] as blocks, read afresh on every call (one call per pass)."""
Scaling = Literal["z", "minmax", "robust"]
SCALINGS: tuple[Scaling, ...] = ("z", "minmax", "robust")
MAX_REGIMES = 10
# Regimes are real when k centres explain all but this share of the spread (C-MAPSS: ~1e-6);
# measurement noise around one condition never gets near it, so it stays one regime.
REGIME_RESIDUAL = 0.01
# ... and when the k-th centre took the spread left by k - 1 down by this factor or more: six
# tight conditions drop by orders of magnitude at k = 6, a continuous load by (k-1)^2/k^2.
REGIME_DROP = 0.2
MIN_REGIME_SHARE = 0.005
KMEANS_SAMPLE = 50_000
KMEANS_RESTARTS = 5
# The robust scaling's quantiles come from at most this many rows (a seeded sample).
ROBUST_SAMPLE = 200_000


def _floor(std: FloatArray, mean: FloatArray) -> FloatArray:
    # A constant channel must not blow up: its spread is floored relative to its level.
    return np.maximum(std, 1e-6 * np.maximum(1.0, np.abs(mean)))


def kmeans(z: FloatArray, k: int, seed: int, iters: int = 50, restarts: int = KMEANS_RESTARTS
           ) -> tuple[FloatArray, npt.NDArray[np.int64], float]:
    """Lloyd's k-means with k-means++ seeding, the best of `restarts` seeds: centres, labels
    and the within-cluster sum of squares. One seeding can put two centres in one tight cluster
    and none in another, and Lloyd's steps never move a centre across the empty space between."""
    best = _kmeans_once(z, k, seed, iters)
    for r in range(1, restarts):
        got = _kmeans_once(z, k, seed + 7919 * r, iters)
        if got[2] < best[2]:
            best = got
    return best


def _kmeans_once(z: FloatArray, k: int, seed: int, iters: int
                 ) -> tuple[FloatArray, npt.NDArray[np.int64], float]:
    rng = np.random.default_rng(seed)
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d = np.min(((z[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d.sum()
        centres.append(z[rng.choice(len(z), p=d / total)] if total > 0 else z[rng.integers(len(z))])
    c = np.asarray(centres, dtype=np.float64)
    labels = np.zeros(len(z), dtype=np.int64)
    for _ in range(iters):
        d = ((z[:, None, :] - c[None]) ** 2).sum(-1)
        labels = np.argmin(d, axis=1)
        new = np.array([z[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    inertia = float(((z - c[labels]) ** 2).sum())
    return c, labels, inertia


@dataclass
class Moments:
    """Per-channel count, mean, sum of squared deviations, min and max, merged block by block
    (Chan et al.): over one block they are numpy's own mean and std."""

    n: int = 0
    mean: FloatArray | None = None
    m2: FloatArray | None = None
    lo: FloatArray | None = None
    hi: FloatArray | None = None

    def add(self, x: FloatArray) -> None:
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        lo, hi = x.min(axis=0), x.max(axis=0)
        if self.mean is None or self.m2 is None or self.lo is None or self.hi is None:
            self.n, self.mean, self.m2, self.lo, self.hi = len(x), mean, m2, lo, hi
            return
        n = self.n + len(x)
        delta = mean - self.mean
        self.mean = self.mean + delta * (len(x) / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * len(x) / n)
        self.lo, self.hi, self.n = np.minimum(self.lo, lo), np.maximum(self.hi, hi), n

    def affine(self, scaling: Scaling, sample: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Offset and scale: mean and (floored) std for "z", min and (floored) range for "minmax",
        median and (floored) interquartile spread of `sample` (rows like the merged ones) for "robust"."""
        assert self.mean is not None and self.m2 is not None and self.lo is not None and self.hi is not None
        std = np.sqrt(self.m2 / self.n)
        if scaling == "minmax":
            return self.lo, _floor(self.hi - self.lo, self.lo)
        if scaling == "robust" and sample is not None and len(sample):
            med = np.median(sample, axis=0)
            return med, _floor(robust_spread(sample), med)
        return self.mean, _floor(std, self.mean)


def finite_blocks(blocks: RowBlocks) -> Iterable[FloatArray]:
    """The blocks' rows with every channel finite (only those are fitted on)."""
    for x in blocks():
        yield x[np.isfinite(x).all(axis=1)]


def sample_index(n: int, size: int, seed: int) -> IntArray:
    """Which of n rows a seeded sample of `size` takes, in draw order (all rows when n <= size)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng(seed).choice(n, size, replace=False).astype(np.int64)


def rows_at(blocks: RowBlocks, index: IntArray) -> FloatArray:
    """The finite rows at positions `index` (into all finite rows, in order), in `index`'s order."""
    order = np.argsort(index, kind="stable")
    wanted = index[order]
    out: FloatArray | None = None
    start = 0
    for x in finite_blocks(blocks):
        lo, hi = np.searchsorted(wanted, [start, start + len(x)])
        if out is None:
            out = np.empty((len(index), x.shape[1]))
        out[order[lo:hi]] = x[wanted[lo:hi] - start]
        start += len(x)
    return out if out is not None else np.empty((0, 0))


def find_regimes(r: FloatArray, n_regimes: int | None, seed: int = 0) -> tuple[FloatArray, FloatArray]:
    """Regime centres (raw units) and the per-channel scale distances are measured in.

    `n_regimes` None picks the largest k whose centres leave under 1 % of the spread unexplained,
    whose last centre cut the spread left by k - 1 centres 5x or more, and whose regimes each
    hold at least 0.5 % of the rows; if none does, one regime.
    """
    scale = _floor(r.std(axis=0), r.mean(axis=0))
    return regime_centres(r[sample_index(len(r), KMEANS_SAMPLE, seed)], scale, n_regimes, seed), scale


def regime_centres(sample: FloatArray, scale: FloatArray, n_regimes: int | None, seed: int) -> FloatArray:
    """Regime centres (raw units) found by k-means on a sample of the regime channels (`find_regimes`)."""
    z = sample / scale
    if n_regimes is not None:
        c, _, _ = kmeans(z, n_regimes, seed)
        return c * scale
    one: FloatArray = z.mean(0, keepdims=True) * scale
    previous = float(((z - z.mean(0)) ** 2).sum())
    total, found = previous, one
    distinct = len(np.unique(z, axis=0))
    for k in range(2, min(MAX_REGIMES, distinct) + 1):
        c, labels, inertia = kmeans(z, k, seed)
        share = np.bincount(labels, minlength=k) / len(z)
        if (total > 0 and inertia / total < REGIME_RESIDUAL and share.min() >= MIN_REGIME_SHARE
                and inertia <= REGIME_DROP * previous):
            found = c * scale
        previous = inertia
    return found


def fit_normalisation(x: FloatArray, regime_channels: tuple[int, ...] = (), n_regimes: int | None = None,
                      scaling: Scaling = "z", seed: int = 0, clip: float = 0.0) -> Normalisation:
    """Fit on training rows x [N, C]: global, or per regime when `regime_channels` find several.

    `scaling` "z" maps to mean 0 / std 1; "minmax" maps each channel's training range to 0..1;
    "robust" to median 0 / interquartile spread 1. `clip` (> 0) bounds the normalised values.
    """
    return fit_blocks(lambda: (x,), regime_channels, n_regimes, scaling, seed, clip)


def fit_blocks(blocks: RowBlocks, regime_channels: tuple[int, ...] = (), n_regimes: int | None = None,
               scaling: Scaling = "z", seed: int = 0, clip: float = 0.0) -> Normalisation:
    """`fit_normalisation` over rows given as blocks (the same fit as on their concatenation)."""
    total = Moments()
    for x in finite_blocks(blocks):
        total.add(x)
    if total.n == 0:
        raise ValueError("no whole training rows to fit the normalisation on")
    robust = rows_at(blocks, sample_index(total.n, ROBUST_SAMPLE, seed)) if scaling == "robust" else None
    mean, std = total.affine(scaling, robust)
    plain = Normalisation(tuple(map(float, mean)), tuple(map(float, std)), clip=clip)
    if not regime_channels or n_regimes in (0, 1):
        return plain
    rc = list(regime_channels)
    # Distances are measured in the regime channels' own spread, whatever the scaling.
    _, z_std = total.affine("z")
    scale = z_std[rc]
    sample = rows_at(blocks, sample_index(total.n, KMEANS_SAMPLE, seed))[:, rc]
    centres = regime_centres(sample, scale, n_regimes, seed)
    if len(centres) < 2:
        return plain
    base = Normalisation(plain.mean, plain.std, tuple(regime_channels), tuple(map(float, scale)),
                         tuple(tuple(map(float, c)) for c in centres),
                         tuple(plain.mean for _ in centres), tuple(plain.std for _ in centres))
    per = [Moments() for _ in centres]
    for x in finite_blocks(blocks):
        k = base.regime_of(x)
        for j, m in enumerate(per):
            m.add(x[k == j])
    in_regime = None if robust is None else base.regime_of(robust)
    r_mean, r_std = [], []
    for j, m in enumerate(per):
        rows: FloatArray | None = None
        if robust is not None and in_regime is not None:
            rows = robust[in_regime == j]
        mj, sj = m.affine(scaling, rows) if m.n >= 2 else (mean, std)
        r_mean.append(tuple(map(float, mj)))
        r_std.append(tuple(map(float, sj)))
    return Normalisation(plain.mean, plain.std, base.regime_channels, base.regime_scale,
                         base.regime_centres, tuple(r_mean), tuple(r_std), clip)
