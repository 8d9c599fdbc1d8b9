"""Score, then decide: model outputs become a risk, and risk becomes a level with hysteresis.

Thresholds, hysteresis, dwell and cooldown live only here. Training imports the same code
to compute surprise statistics and to calibrate thresholds, so what it measures is what
the agent does.
"""

from __future__ import annotations

import math
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


def surprise_probability(score: float, stats: SurpriseStats) -> float:
    """Where `score` falls in the healthy distribution (empirical CDF), in [0, 1]."""
    q = np.asarray(stats.quantiles)
    probs = np.linspace(0.0, 1.0, len(q))
    return float(np.interp(score, q, probs, left=0.0, right=1.0))


def anomaly_probability(score: float, stats: AnomalyStats) -> float:
    """Where a VAE anomaly score falls among healthy validation windows (empirical CDF), in [0, 1]."""
    q = np.asarray(stats.quantiles)
    return float(np.interp(score, q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0))


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
