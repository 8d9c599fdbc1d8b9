"""Normalisation fitted on training rows, per operating regime where the data has several.

Multi-regime data (C-MAPSS FD002/FD004: six flight conditions) mixes sensor levels that
depend on the operating condition far more than on wear. The regimes are found by k-means
on the channels that set the condition (for C-MAPSS, the three operating settings), on
training rows only; each regime gets its own mean and std, and all of it goes into the
model file, where `agent.spec.Normalisation.apply` uses it for training and agent alike.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.spec import Normalisation

FloatArray = npt.NDArray[np.float64]
Scaling = Literal["z", "minmax"]
MAX_REGIMES = 10
# Regimes are real when k centres explain all but this share of the spread (C-MAPSS: ~1e-6);
# measurement noise around one condition never gets near it, so it stays one regime.
REGIME_RESIDUAL = 0.01
MIN_REGIME_SHARE = 0.005
KMEANS_SAMPLE = 50_000


def _floor(std: FloatArray, mean: FloatArray) -> FloatArray:
    # A constant channel must not blow up: its spread is floored relative to its level.
    return np.maximum(std, 1e-6 * np.maximum(1.0, np.abs(mean)))


def kmeans(z: FloatArray, k: int, seed: int, iters: int = 50
           ) -> tuple[FloatArray, npt.NDArray[np.int64], float]:
    """Lloyd's k-means with k-means++ seeding: centres, labels and the within-cluster sum of squares."""
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


def find_regimes(r: FloatArray, n_regimes: int | None, seed: int = 0) -> tuple[FloatArray, FloatArray]:
    """Regime centres (raw units) and the per-channel scale distances are measured in.

    `n_regimes` None picks the smallest k whose centres leave under 1 % of the spread
    unexplained, with every regime holding at least 0.5 % of the rows; if none does, one regime.
    """
    scale = _floor(r.std(axis=0), r.mean(axis=0))
    sample = r if len(r) <= KMEANS_SAMPLE else r[np.random.default_rng(seed).choice(len(r), KMEANS_SAMPLE,
                                                                                   replace=False)]
    z = sample / scale
    if n_regimes is not None:
        c, _, _ = kmeans(z, n_regimes, seed)
        return c * scale, scale
    total = float(((z - z.mean(0)) ** 2).sum())
    for k in range(2, MAX_REGIMES + 1):
        if k > len(np.unique(z, axis=0)):
            break
        c, labels, inertia = kmeans(z, k, seed)
        share = np.bincount(labels, minlength=k) / len(z)
        if total > 0 and inertia / total < REGIME_RESIDUAL and share.min() >= MIN_REGIME_SHARE:
            return c * scale, scale
    return z.mean(0, keepdims=True) * scale, scale


def fit_normalisation(x: FloatArray, regime_channels: tuple[int, ...] = (), n_regimes: int | None = None,
                      scaling: Scaling = "z", seed: int = 0) -> Normalisation:
    """Fit on training rows x [N, C]: global, or per regime when `regime_channels` find several.

    `scaling` "z" maps to mean 0 / std 1; "minmax" maps each channel's training range to 0..1.
    """
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) == 0:
        raise ValueError("no whole training rows to fit the normalisation on")
    mean, std = _affine(x, scaling)
    plain = Normalisation(tuple(map(float, mean)), tuple(map(float, std)))
    if not regime_channels or n_regimes in (0, 1):
        return plain
    rc = list(regime_channels)
    centres, scale = find_regimes(x[:, rc], n_regimes, seed)
    if len(centres) < 2:
        return plain
    base = Normalisation(plain.mean, plain.std, tuple(regime_channels), tuple(map(float, scale)),
                         tuple(tuple(map(float, c)) for c in centres),
                         tuple(plain.mean for _ in centres), tuple(plain.std for _ in centres))
    k = base.regime_of(x)
    r_mean, r_std = [], []
    for j in range(len(centres)):
        rows = x[k == j]
        m, s = _affine(rows, scaling) if len(rows) >= 2 else (mean, std)
        r_mean.append(tuple(map(float, m)))
        r_std.append(tuple(map(float, s)))
    return Normalisation(plain.mean, plain.std, base.regime_channels, base.regime_scale,
                         base.regime_centres, tuple(r_mean), tuple(r_std))


def _affine(x: FloatArray, scaling: Scaling) -> tuple[FloatArray, FloatArray]:
    if scaling == "minmax":
        lo, hi = x.min(axis=0), x.max(axis=0)
        return lo, _floor(hi - lo, lo)
    mean = x.mean(axis=0)
    return mean, _floor(x.std(axis=0), mean)
