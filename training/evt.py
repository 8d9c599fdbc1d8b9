"""Extreme-value tails of healthy scores: how rare is rarer than validation ever showed.

Peaks over threshold (Pickands-Balkema-de Haan; SPOT, Siffer et al., KDD 2017): beyond a high
quantile u, the excesses of almost any score follow a generalised Pareto distribution. Fitted
on the excesses of healthy validation scores by probability-weighted moments (Hosking & Wallis,
1987: closed form, no optimiser, steady on a few dozen excesses), it gives the score that a
healthy window passes with probability p, for p far below 1 / (validation windows): a false-alarm
budget of one a month is then honoured from days of data, and another budget gives another
threshold.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.spec import Tail

FloatArray = npt.NDArray[np.float64]
# The tail starts at the healthy scores' 98th percentile, or lower so it holds MIN_EXCESSES scores.
TAIL_SHARE = 0.02
MIN_EXCESSES = 50
# Below this many healthy scores a tail is not fitted at all.
MIN_SCORES = 200
# Shape bounds: a heavier tail than xi 0.5 from a few dozen excesses is more often noise than
# truth, and would put thresholds beyond any score. Below 0 the tail would end at a finite
# score, and every score past it would get probability 1 alike: a tail fitted on days of data
# cannot know where healthy scores end, so it is taken as at least exponential.
XI_BOUNDS = (0.0, 0.5)


def gpd_pwm(excesses: FloatArray) -> tuple[float, float]:
    """Shape xi and scale sigma of a generalised Pareto distribution fitted to positive excesses
    by probability-weighted moments (xi clamped to XI_BOUNDS, sigma refitted to keep the mean)."""
    y = np.sort(np.asarray(excesses, dtype=np.float64))
    n = len(y)
    a0 = float(y.mean())
    a1 = float(np.sum(y * (n - 1 - np.arange(n)) / (n - 1)) / n)  # E[Y (1 - F(Y))]
    k = a0 / (a0 - 2.0 * a1) - 2.0
    xi = float(np.clip(-k, *XI_BOUNDS))
    sigma = a0 * (1.0 - xi)  # the GPD's mean is sigma / (1 - xi)
    return xi, max(sigma, 1e-12)


def fit_tail(scores: FloatArray, share: float = TAIL_SHARE) -> Tail | None:
    """The tail of healthy `scores` beyond their (1 - share) quantile (lower when that leaves fewer
    than MIN_EXCESSES beyond it); None with fewer than MIN_SCORES finite scores, or no spread."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < MIN_SCORES:
        return None
    share = max(share, MIN_EXCESSES / len(s))
    u = float(np.quantile(s, 1.0 - share))
    excess = s[s > u] - u
    if len(excess) < 10 or float(np.ptp(excess)) <= 0:
        return None
    xi, sigma = gpd_pwm(excess)
    return Tail(len(excess) / len(s), u, sigma, xi)


def level(scores: FloatArray, tail: Tail | None, p: float) -> float:
    """The score healthy windows pass with probability p: from the tail where p is within it,
    else the empirical quantile."""
    if tail is not None and p < tail.share:
        return tail.quantile(p)
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    return float(np.quantile(s, min(max(1.0 - p, 0.0), 1.0))) if len(s) else float("inf")
