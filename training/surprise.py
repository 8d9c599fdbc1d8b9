"""Forecast surprise in training: healthy forecast errors, the agent's surprise score, its statistics.

Each channel's one-step forecast error on healthy validation windows gives its residual scale
(the fleet's, and an asset's own where it has enough validation time); the agent's surprise
score is replayed with the agent's own tracker over each asset's windows in event order; its
healthy distribution (quantiles and extreme-value tail) turns a score into a probability.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.baseline import robust_spread
from agent.risk import SurpriseTracker, surprise_cdf
from agent.spec import SurpriseStats
from training import evt
from training.calibrate import N_QUANTILES, Predictions
from training.labels import WindowSet

FloatArray = npt.NDArray[np.float64]
# A channel's healthy forecast error is never taken as smaller than this (normalised units): a
# channel validation saw perfectly predicted would otherwise make any later move infinite news.
RESIDUAL_FLOOR = 1e-2
# An asset gets surprise statistics of its own from this many healthy validation windows on.
MIN_PROFILE_WINDOWS = 500


def one_step_errors(ws: WindowSet, pred: Predictions) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Each window that follows its asset's previous window by one cell, and the error of the
    previous window's first forecast step against the cell it forecast [n, C]."""
    later: list[npt.NDArray[np.int64]] = []
    earlier: list[npt.NDArray[np.int64]] = []
    for a in np.unique(ws.asset):
        idx = np.flatnonzero(ws.asset == a)
        idx = idx[np.argsort(ws.end_cell[idx], kind="stable")]
        step = np.diff(ws.end_cell[idx]) == 1
        later.append(idx[1:][step])
        earlier.append(idx[:-1][step])
    cur = np.concatenate(later) if later else np.empty(0, dtype=np.int64)
    prev = np.concatenate(earlier) if earlier else np.empty(0, dtype=np.int64)
    if len(cur) == 0 or pred.mean.shape[1] == 0:
        return cur, np.empty((0, pred.mean.shape[2] if pred.mean.ndim == 3 else 0))
    return cur, pred.tail[cur, -1, :].astype(np.float64) - pred.mean[prev, 0, :].astype(np.float64)


def spread(errors: FloatArray) -> FloatArray:
    """Per channel, the robust spread of forecast errors [n, C], floored at RESIDUAL_FLOOR."""
    out: FloatArray = np.maximum(robust_spread(errors), RESIDUAL_FLOOR)
    return out


def residual_scales(ws: WindowSet, pred: Predictions, healthy: npt.NDArray[np.bool_], per_asset: bool = True
                    ) -> tuple[FloatArray | None, dict[str, FloatArray]]:
    """The healthy spread of one-step forecast errors per channel: the fleet's, and (`per_asset`)
    each asset's own where it has MIN_PROFILE_WINDOWS healthy windows or more (None: too few errors)."""
    cur, err = one_step_errors(ws, pred)
    ok = healthy[cur] & np.isfinite(err).all(axis=1)
    if ok.sum() < 10:
        return None, {}
    own: dict[str, FloatArray] = {}
    for a in np.unique(ws.asset[cur[ok]]) if per_asset else ():
        mine = ok & (ws.asset[cur] == a)
        if mine.sum() >= MIN_PROFILE_WINDOWS:
            own[ws.assets[a]] = spread(err[mine])
    return spread(err[ok]), own


def surprise_scores(ws: WindowSet, pred: Predictions, fleet: SurpriseStats,
                    own: dict[str, SurpriseStats] | None = None) -> FloatArray:
    """The agent's smoothed surprise score for each window (NaN where it has none yet), each
    asset's errors scaled by its own residual scale where it has one, else the fleet's."""
    out = np.full(len(ws), np.nan)
    own = own or {}
    for a in np.unique(ws.asset):
        idx = np.flatnonzero(ws.asset == a)
        idx = idx[np.argsort(ws.end_cell[idx], kind="stable")]
        stats = own.get(ws.assets[a], fleet)
        fixed = (np.broadcast_to(2.0 * np.log(np.asarray(stats.residual_scale)), pred.mean.shape[1:])
                 if stats.residual_scale else None)
        tracker = SurpriseTracker(fleet.ewma_alpha, fleet.z_max)
        for i in idx:
            logvar = fixed if fixed is not None else pred.logvar[i].astype(np.float64)
            s = tracker.update(int(ws.end_cell[i]), pred.tail[i].astype(np.float64),
                               pred.mean[i].astype(np.float64), logvar)
            if s is not None:
                out[i] = float(np.mean(s))
    return out


def fit_surprise(scores: FloatArray, healthy: npt.NDArray[np.bool_], alpha: float,
                 residual_scale: FloatArray | None = None, z_max: float = 0.0) -> SurpriseStats:
    """The healthy distribution of the surprise score: quantiles, and its tail where there are
    enough scores to fit one."""
    ok = healthy & np.isfinite(scores)
    if ok.sum() < 10:
        raise ValueError("too few healthy validation windows to calibrate surprise (need >= 10)")
    q = np.quantile(scores[ok], np.linspace(0.0, 1.0, N_QUANTILES))
    scale = () if residual_scale is None else tuple(float(v) for v in residual_scale)
    return SurpriseStats(alpha, tuple(float(v) for v in np.maximum.accumulate(q)), scale,
                         evt.fit_tail(scores[ok]), z_max)


def surprise_probabilities(scores: FloatArray, stats: SurpriseStats, ws: WindowSet | None = None,
                           own: dict[str, SurpriseStats] | None = None) -> FloatArray:
    """The agent's surprise probability of every score (each asset's own statistics where it has
    them, the fleet's `stats` else); NaN where a window had no score."""
    scores = np.asarray(scores, dtype=np.float64)
    p = surprise_cdf(stats)(scores)
    if ws is not None and own:
        for name, st in own.items():
            if name in ws.assets:
                mine = ws.asset == ws.assets.index(name)
                p[mine] = surprise_cdf(st)(scores[mine])
    return np.where(np.isfinite(scores), p, np.nan)
