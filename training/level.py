"""The state signal in training: the healthy operating state, and each window's distance from it.

The centre and the shrunk covariance come from healthy training rows (in the model's input
space); the distance is replayed over validation windows per asset in event order with the
agent's own functions (`agent.scoring`), and its healthy distribution (the fleet's, and an
asset's own where it has enough validation time) turns a distance into a probability.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.risk import EmpiricalCdf, SurpriseTracker
from agent.scoring import level_contributions, update_level
from agent.spec import Distribution, LevelStats
from training import evt
from training.calibrate import N_QUANTILES
from training.labels import Inputs, covered, healthy_mask
from training.regimes import sample_index
from training.surprise import MIN_PROFILE_WINDOWS

FloatArray = npt.NDArray[np.float64]
# Shrinkage of the healthy covariance towards its diagonal: with tens of channels and a few
# thousand rows, the plain inverse reads sampling noise as structure.
SHRINK = 0.1
# A channel's healthy variance (normalised units) is never taken as smaller than this.
VAR_FLOOR = 1e-2
STATE_SAMPLE = 200_000


def fit_state(train: Inputs, margin: float, seed: int = 0) -> tuple[FloatArray, FloatArray] | None:
    """Centre and precision of the healthy training rows in the model's input space (None: too
    few): rows of windows with no failure within `margin` cells after them."""
    ws = train.ws.subset(healthy_mask(train.ws, margin))
    z = train.z[covered(ws)].astype(np.float64)
    z = z[np.isfinite(z).all(axis=1)]
    if len(z) < 2 * z.shape[1] + 10:
        return None
    z = z[np.sort(sample_index(len(z), STATE_SAMPLE, seed))]
    center = z.mean(axis=0)
    cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
    var = np.maximum(np.diag(cov), VAR_FLOOR)
    np.fill_diagonal(cov, var)
    shrunk = (1.0 - SHRINK) * cov + SHRINK * np.diag(var)
    precision = np.asarray(np.linalg.inv(shrunk), dtype=np.float64)
    return center, precision


def level_scores(data: Inputs, stats: LevelStats) -> FloatArray:
    """The agent's smoothed state distance for each window, asset by asset in event order."""
    ws = data.ws
    contrib = level_contributions(data.z[ws.ends], stats)
    out = np.full(len(ws), np.nan)
    for a in np.unique(ws.asset):
        idx = np.flatnonzero(ws.asset == a)
        idx = idx[np.argsort(ws.end_cell[idx], kind="stable")]
        trackers = [SurpriseTracker(stats.ewma_alpha)] * len(idx)  # one asset's state, window after window
        out[idx] = update_level(trackers, contrib[idx], stats.ewma_alpha).sum(axis=1)
    return out


def probabilities(data: Inputs, stats: LevelStats, own: dict[str, Distribution]) -> FloatArray:
    """Every window's state-signal probability, as the agent computes it: each asset under its
    own distribution where the model has one, else the fleet's."""
    ws = data.ws
    scores = level_scores(data, stats)
    p = EmpiricalCdf(stats.quantiles, stats.tail)(scores)
    for a in np.unique(ws.asset):
        d = own.get(ws.assets[a])
        if d is not None:
            mine = ws.asset == a
            p[mine] = EmpiricalCdf(d.quantiles, d.tail)(scores[mine])
    return np.where(np.isfinite(scores), p, np.nan)


def distribution(scores: FloatArray) -> Distribution:
    """Quantiles and tail of healthy scores."""
    s = scores[np.isfinite(scores)]
    q = np.quantile(s, np.linspace(0.0, 1.0, N_QUANTILES))
    return Distribution(tuple(float(v) for v in np.maximum.accumulate(q)), evt.fit_tail(s))


def fit_level(train: Inputs, val: Inputs, healthy: npt.NDArray[np.bool_], margin: float, alpha: float,
              z_max: float, seed: int = 0, per_asset: bool = True
              ) -> tuple[LevelStats, dict[str, Distribution], FloatArray] | None:
    """The state signal's statistics, (`per_asset`) each asset's own distribution where it has
    enough healthy validation windows (`healthy`), and every validation window's probability
    (None: too little data)."""
    state = fit_state(train, margin, seed)
    ws = val.ws
    if state is None or healthy.sum() < 10:
        return None
    center, precision = state
    stats0 = LevelStats(alpha, tuple(map(float, center)), tuple(tuple(map(float, r)) for r in precision),
                        (0.0, 1.0), None, z_max)
    scores = level_scores(val, stats0)
    fleet = distribution(scores[healthy])
    stats = LevelStats(alpha, stats0.center, stats0.precision, fleet.quantiles, fleet.tail, z_max)
    own = {ws.assets[a]: distribution(scores[(ws.asset == a) & healthy]) for a in np.unique(ws.asset)
           if per_asset and ((ws.asset == a) & healthy).sum() >= MIN_PROFILE_WINDOWS}
    return stats, own, probabilities(val, stats, own)
