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

from agent.spec import AnomalyStats, Combiner, SurpriseStats, Thresholds

FloatArray = npt.NDArray[np.float64]
AnyFloatArray = npt.NDArray[np.floating[Any]]  # float32 or float64
_EPS = 1e-6


class Level(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


def surprise_z2(mean: AnyFloatArray, logvar: AnyFloatArray, observed: FloatArray) -> FloatArray:
    """Per-channel mean squared z-score of observed cells under a forecast.

    `mean` and `logvar` are the forecast [H, C] made at some cell; `observed` the k <= H
    normalised cells that followed it. Under a calibrated forecast each term is about 1.
    """
    k = min(len(observed), len(mean))
    # In float64 whatever the forecast's dtype (the agent keeps it as float32): exp of a
    # float32 would round differently from training's.
    mu, lv = np.asarray(mean[:k], dtype=np.float64), np.asarray(logvar[:k], dtype=np.float64)
    z2 = (observed[:k] - mu) ** 2 * np.exp(-lv)
    return np.asarray(np.mean(z2, axis=0), dtype=np.float64)


class SurpriseTracker:
    """Per-asset surprise state: the last forecast and an EWMA of per-channel z^2."""

    __slots__ = ("alpha", "ewma", "forecast_cell", "logvar", "mean")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.forecast_cell = -1
        # The last forecast [H, C]: the agent keeps it as float32, as the model made it.
        self.mean: AnyFloatArray | None = None
        self.logvar: AnyFloatArray | None = None
        self.ewma: FloatArray | None = None

    def update(self, end_cell: int, window_tail: FloatArray, mean: AnyFloatArray,
               logvar: AnyFloatArray) -> FloatArray | None:
        """Compare the cells since the last forecast with it, then keep the new forecast.

        `window_tail` holds the newest normalised cells of the window ending at `end_cell`.
        Returns the smoothed per-channel score, or None until there is one.
        """
        if self.mean is not None and self.logvar is not None and self.forecast_cell >= 0:
            k = end_cell - self.forecast_cell
            if 1 <= k <= min(len(self.mean), len(window_tail)):
                z2 = surprise_z2(self.mean, self.logvar, window_tail[-k:])
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
    rounds: list[list[int]] = []  # rounds[r]: the rows that are some tracker's r-th in the batch
    seen: dict[int, int] = {}
    for i, tr in enumerate(trackers):
        r = seen.get(id(tr), 0)
        seen[id(tr)] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    for rows in rounds:
        _surprise_round(trackers, ends, tails, means, logvars, rows, out)
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
        z2 = np.mean((tails[idx, horizon - k :] - mu) ** 2 * np.exp(-lv), axis=1)
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
    """A healthy distribution's quantiles as a CDF: the probability grid made once (per model),
    not per window; scores a whole batch in one call."""

    __slots__ = ("probs", "q")

    def __init__(self, quantiles: Sequence[float]) -> None:
        self.q = np.asarray(quantiles, dtype=np.float64)
        self.probs = np.linspace(0.0, 1.0, len(self.q))

    def __call__(self, scores: FloatArray) -> FloatArray:
        """Where each score falls, in [0, 1]."""
        return np.asarray(np.interp(scores, self.q, self.probs, left=0.0, right=1.0), dtype=np.float64)


def surprise_probability(score: float, stats: SurpriseStats) -> float:
    """Where `score` falls in the healthy distribution (empirical CDF), in [0, 1]."""
    return float(EmpiricalCdf(stats.quantiles)(np.asarray(score, dtype=np.float64)))


def anomaly_probability(score: float, stats: AnomalyStats) -> float:
    """Where a VAE anomaly score falls among healthy validation windows (empirical CDF), in [0, 1]."""
    return float(EmpiricalCdf(stats.quantiles)(np.asarray(score, dtype=np.float64)))


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def combine(fail_prob: float | None, p_surprise: float | None, c: Combiner,
            p_anomaly: float | None = None) -> float:
    """Risk from the failure, surprise and anomaly probabilities (any may be absent)."""
    z = c.bias
    if fail_prob is not None:
        z += c.w_fail * _logit(fail_prob)
    if p_surprise is not None:
        z += c.w_surprise * _logit(p_surprise)
    if p_anomaly is not None:
        z += c.w_anomaly * _logit(p_anomaly)
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
