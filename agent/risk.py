"""Score, then decide: model outputs become a risk, and risk becomes a level with hysteresis.

Thresholds, hysteresis, dwell and cooldown live only here. Training imports the same code
to compute surprise statistics and to calibrate thresholds, so what it measures is what
the agent does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.spec import AnomalyStats, Combiner, SurpriseStats, Tail, Thresholds

FloatArray = npt.NDArray[np.float64]
AnyFloatArray = npt.NDArray[np.floating[Any]]  # float32 or float64
# Probabilities are kept this far from 0 and 1 before a logit: a tail probability of 1e-9 (one
# window in years of 1 s cells) must still rank above one of 1e-6.
_EPS = 1e-12
LOGISTIC_EPS = 1e-6


class Level(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


def surprise_z2(mean: AnyFloatArray, logvar: AnyFloatArray, observed: FloatArray,
                z2_max: float = math.inf) -> FloatArray:
    """Per-channel mean squared z-score of observed cells under a forecast.

    `mean` and `logvar` are the forecast [H, C] made at some cell; `observed` the k <= H
    normalised cells that followed it. Under a calibrated forecast each term is about 1; each
    is capped at `z2_max`, so one channel's wild reading cannot outweigh every other channel.
    """
    k = min(len(observed), len(mean))
    # In float64 whatever the forecast's dtype (the agent keeps it as float32): exp of a
    # float32 would round differently from training's.
    mu, lv = np.asarray(mean[:k], dtype=np.float64), np.asarray(logvar[:k], dtype=np.float64)
    z2 = np.minimum((observed[:k] - mu) ** 2 * np.exp(-lv), z2_max)
    return np.asarray(np.mean(z2, axis=0), dtype=np.float64)


class SurpriseTracker:
    """Per-asset surprise state: the last forecast and an EWMA of per-channel z^2."""

    __slots__ = ("alpha", "ewma", "forecast_cell", "level", "logvar", "mean", "z2_max")

    def __init__(self, alpha: float, z_max: float = 0.0) -> None:
        self.alpha = alpha
        self.z2_max = z_max * z_max if z_max > 0 else math.inf
        self.forecast_cell = -1
        # The last forecast [H, C]: the agent keeps it as float32, as the model made it.
        self.mean: AnyFloatArray | None = None
        self.logvar: AnyFloatArray | None = None
        self.ewma: FloatArray | None = None
        # The state signal's smoothed per-channel contributions (`agent.scoring`), if the model has it.
        self.level: FloatArray | None = None

    def update(self, end_cell: int, window_tail: FloatArray, mean: AnyFloatArray,
               logvar: AnyFloatArray) -> FloatArray | None:
        """Compare the cells since the last forecast with it, then keep the new forecast.

        `window_tail` holds the newest normalised cells of the window ending at `end_cell`.
        Returns the smoothed per-channel score, or None until there is one.
        """
        if self.mean is not None and self.logvar is not None and self.forecast_cell >= 0:
            k = end_cell - self.forecast_cell
            if 1 <= k <= min(len(self.mean), len(window_tail)):
                z2 = surprise_z2(self.mean, self.logvar, window_tail[-k:], self.z2_max)
                if np.isfinite(z2).all():  # one faulty forecast must not poison the average
                    self.ewma = z2 if self.ewma is None else self.ewma + self.alpha * (z2 - self.ewma)
            elif k > len(self.mean):
                self.ewma = None  # a gap longer than the forecast: start afresh
        self.forecast_cell, self.mean, self.logvar = end_cell, mean, logvar
        return self.ewma


def update_surprise(trackers: Sequence[SurpriseTracker], ends: Sequence[int], tails: FloatArray,
                    means: AnyFloatArray, logvars: AnyFloatArray) -> list[FloatArray | None]:
    """`trackers[i].update(ends[i], tails[i], means[i], logvars[i])` for a batch, in order, with
    the same results; the arithmetic runs once for the batch instead of once per window.

    `tails`, `means` and `logvars` are [B, H, C]; each tracker keeps a float32 copy of its row
    of the forecast. A tracker may appear more than once (several windows of one asset): its
    rows are applied in batch order.
    """
    out: list[FloatArray | None] = [None] * len(trackers)
    for rows in rounds(trackers):
        _surprise_round(trackers, ends, tails, means, logvars, rows, out)
    return out


def rounds(trackers: Sequence[SurpriseTracker]) -> list[list[int]]:
    """A batch's rows by round: round r holds the rows that are some tracker's r-th in the batch,
    so the rows of one round belong to distinct trackers and may be updated together."""
    out: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, tr in enumerate(trackers):
        r = seen.get(id(tr), 0)
        seen[id(tr)] = r + 1
        if r == len(out):
            out.append([])
        out[r].append(i)
    return out


def _surprise_round(trackers: Sequence[SurpriseTracker], ends: Sequence[int], tails: FloatArray,
                    means: AnyFloatArray, logvars: AnyFloatArray, rows: list[int],
                    out: list[FloatArray | None]) -> None:
    """One round of `update_surprise`: rows of distinct trackers, each compared with its last
    forecast in one pass per lag k (cells since that forecast), as `surprise_z2` would."""
    horizon = tails.shape[1]
    shape = means.shape[1:]
    by_lag: dict[int, list[int]] = {}
    keep = []  # rows whose new forecast is kept below
    for i in rows:
        tr = trackers[i]
        if tr.mean is not None and tr.logvar is not None and (
                tr.mean.shape != shape or tr.logvar.shape != shape or shape[0] != horizon):
            # A forecast of another shape (restored under another model): this row on its own.
            out[i] = tr.update(ends[i], tails[i], means[i].astype(np.float32), logvars[i].astype(np.float32))
            continue
        keep.append(i)
        if tr.mean is None or tr.logvar is None or tr.forecast_cell < 0:
            continue
        k = ends[i] - tr.forecast_cell
        if 1 <= k <= horizon:
            by_lag.setdefault(k, []).append(i)
        elif k > horizon:
            tr.ewma = None  # a gap longer than the forecast: start afresh
    for k, idx in by_lag.items():
        mu = np.stack([trackers[i].mean for i in idx])[:, :k].astype(np.float64)  # type: ignore[misc]
        lv = np.stack([trackers[i].logvar for i in idx])[:, :k].astype(np.float64)  # type: ignore[misc]
        # Per row the very operations of `surprise_z2`: a mean over axis 1 of [n, k, C] sums the
        # k cells in the same order as its mean over axis 0 of [k, C].
        cap = np.asarray([trackers[i].z2_max for i in idx])[:, None, None]
        z2 = np.mean(np.minimum((tails[idx, horizon - k :] - mu) ** 2 * np.exp(-lv), cap), axis=1)
        finite = np.isfinite(z2).all(axis=1).tolist()
        fresh = [j for j, i in enumerate(idx) if finite[j] and trackers[i].ewma is None]
        going = [j for j, i in enumerate(idx) if finite[j] and trackers[i].ewma is not None]
        for j in fresh:
            trackers[idx[j]].ewma = z2[j].copy()  # a copy: the batch's array is not held
        if going:
            old = np.stack([trackers[idx[j]].ewma for j in going])  # type: ignore[misc]
            alpha = np.array([[trackers[idx[j]].alpha] for j in going])
            new = old + alpha * (z2[going] - old)
            for n, j in enumerate(going):
                trackers[idx[j]].ewma = new[n].copy()
    for i in keep:
        tr = trackers[i]
        tr.forecast_cell = ends[i]
        tr.mean, tr.logvar = means[i].astype(np.float32), logvars[i].astype(np.float32)
        out[i] = tr.ewma


class EmpiricalCdf:
    """A healthy distribution's quantiles as a CDF, extended beyond `tail.u` by its fitted tail:
    the probability grid made once (per model), not per window; scores a whole batch in one call."""

    __slots__ = ("probs", "q", "tail")

    def __init__(self, quantiles: Sequence[float], tail: Tail | None = None) -> None:
        self.q = np.asarray(quantiles, dtype=np.float64)
        self.probs = np.linspace(0.0, 1.0, len(self.q))
        self.tail = tail

    def __call__(self, scores: FloatArray) -> FloatArray:
        """Where each score falls, in [0, 1]."""
        p = np.asarray(np.interp(scores, self.q, self.probs, left=0.0, right=1.0), dtype=np.float64)
        if self.tail is not None:
            beyond = np.asarray(scores) > self.tail.u
            if beyond.any():
                p = np.where(beyond, 1.0 - self.tail.survival(np.where(beyond, scores, self.tail.u)), p)
        return p


def surprise_cdf(stats: SurpriseStats) -> EmpiricalCdf:
    """The map from a surprise score to its probability under `stats`."""
    return EmpiricalCdf(stats.quantiles, stats.tail)


def surprise_probability(score: float, stats: SurpriseStats) -> float:
    """Where `score` falls in the healthy distribution (empirical CDF and tail), in [0, 1]."""
    return float(surprise_cdf(stats)(np.asarray(score, dtype=np.float64)))


def anomaly_probability(score: float, stats: AnomalyStats) -> float:
    """Where a VAE anomaly score falls among healthy validation windows (empirical CDF), in [0, 1]."""
    return float(EmpiricalCdf(stats.quantiles)(np.asarray(score, dtype=np.float64)))


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def logit(p: FloatArray) -> FloatArray:
    """The logit of probabilities, kept as far from 0 and 1 as `combine` keeps them."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)))


def in_force(t: Thresholds, sensitivity: float = 1.0, warning: float | None = None,
             critical: float | None = None) -> Thresholds:
    """The thresholds an agent decides with: the model's, moved by `sensitivity`, unless the
    config sets a level outright (`[model] warning`, `critical`)."""
    t = sensitive(t, sensitivity)
    w = warning or t.warning
    c = critical or t.critical
    return Thresholds(w, max(c, w), min(t.hysteresis, w / 2), t.dwell, t.cooldown, t.tail)


def sensitive(t: Thresholds, factor: float) -> Thresholds:
    """The thresholds for `factor` times the calibrated false-alarm rate (`[model] sensitivity`).

    Each level's threshold moves along the healthy risk's tail, so the share of healthy windows
    above it is multiplied by `factor`: 2 alerts earlier and accepts about twice the false
    alarms, 0.5 the reverse. A threshold never moves below the tail's start (the healthy risk's
    98th percentile). Files without a tail keep their thresholds.
    """
    if factor == 1.0 or t.tail is None:
        return t
    tail = t.tail

    def move(level: float) -> float:
        z = float(logit(np.asarray(level)))
        p = float(tail.survival(np.asarray(max(z, tail.u)))) * factor
        z_new = tail.u if p >= tail.share else tail.quantile(p)
        return float(1.0 / (1.0 + math.exp(-min(max(z_new, -50.0), 50.0))))

    warning = move(t.warning)
    critical = max(move(t.critical), warning)
    return Thresholds(warning, critical, t.hysteresis * warning / t.warning, t.dwell, t.cooldown, t.tail)


def combine(fail_prob: float | None, p_surprise: float | None, c: Combiner,
            p_anomaly: float | None = None, p_level: float | None = None) -> float:
    """Risk from the failure, surprise, anomaly and level probabilities (any may be absent)."""
    signals = ((c.w_fail, fail_prob), (c.w_surprise, p_surprise), (c.w_anomaly, p_anomaly),
               (c.w_level, p_level))
    if c.rule == "max":
        present = [p for w, p in signals if w > 0 and p is not None]
        return max(present) if present else 1.0 / (1.0 + math.exp(-c.bias))
    z = c.bias
    for w, p in signals:
        if p is not None:
            # The weights were fitted on probabilities within 1e-6 of 0 and 1 (training's
            # `fit_combiner`): a signal deeper in its tail must not outweigh what they say.
            z += w * _logit(min(max(p, LOGISTIC_EPS), 1.0 - LOGISTIC_EPS))
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@dataclass(frozen=True)
class Transition:
    """A level change decided at grid cell `cell`."""

    cell: int
    level: Level
    previous: Level
    risk: float


class LevelMachine:
    """ok/warning/critical with hysteresis, minimum dwell and a re-alert cooldown (in cells)."""

    __slots__ = ("_last_raised", "_pending", "_streak", "level", "t")

    def __init__(self, thresholds: Thresholds, level: Level = Level.OK) -> None:
        self.t = thresholds
        self.level = level
        self._pending = level
        self._streak = 0
        self._last_raised: dict[Level, int] = {}

    def _target(self, risk: float) -> Level:
        t = self.t
        enter = Level.CRITICAL if risk >= t.critical else Level.WARNING if risk >= t.warning else Level.OK
        if enter >= self.level:
            return enter
        # Going down, each threshold is lowered by the margin, so a risk hovering at a
        # threshold does not flap.
        keep = (Level.CRITICAL if risk >= t.critical - t.hysteresis
                else Level.WARNING if risk >= t.warning - t.hysteresis else Level.OK)
        return min(keep, self.level)

    def update(self, risk: float, cell: int) -> Transition | None:
        """Feed one scored window's risk; return a transition when the level changes."""
        target = self._target(risk)
        if target == self.level:
            self._streak = 0
            self._pending = target
            return None
        self._streak = self._streak + 1 if target == self._pending else 1
        self._pending = target
        if self._streak < self.t.dwell:
            return None
        if target > self.level:
            raised = self._last_raised.get(target)
            if raised is not None and cell - raised < self.t.cooldown:
                return None
            self._last_raised[target] = cell
        previous, self.level = self.level, target
        self._streak = 0
        return Transition(cell, target, previous, risk)

    def state(self) -> dict[str, object]:
        """What a checkpoint must keep to resume without re-raising."""
        return {"level": int(self.level), "pending": int(self._pending), "streak": self._streak,
                "last_raised": {int(k): v for k, v in self._last_raised.items()}}

    def restore(self, state: dict[str, object]) -> None:
        self.level = Level(int(state["level"]))  # type: ignore[call-overload]
        self._pending = Level(int(state["pending"]))  # type: ignore[call-overload]
        self._streak = int(state["streak"])  # type: ignore[call-overload]
        raised = state.get("last_raised", {})
        assert isinstance(raised, dict)
        self._last_raised = {Level(int(k)): int(v) for k, v in raised.items()}


def top_channels(per_channel: FloatArray | None, channels: tuple[str, ...], n: int = 3
                 ) -> list[dict[str, float | str]]:
    """The channels with the highest surprise, highest first."""
    if per_channel is None:
        return []
    order = np.argsort(-per_channel, kind="stable")[:n]
    return [{"channel": channels[i], "score": round(float(per_channel[i]), 4)} for i in order]
