"""Score: a model's outputs for a batch of windows into each window's signals and risk.

One path for the live model and the shadow model, so a candidate is judged on the risk it would
serve; training replays it window by window with the same functions (`training.surprise`,
`training.level`). Deciding (levels, hysteresis) stays in `agent.risk`.

Forecast surprise compares the cells that arrived with the forecast made before them: each
channel's error divided by its healthy spread (the asset's own where the model file has a
profile for it, else the fleet's), squared, smoothed by an EWMA per channel, averaged over
channels, and turned into a probability by the healthy distribution of that score (an
empirical CDF with an extreme-value tail). The state signal (`level`) scores how far the newest
cell lies from the healthy operating state, jointly over channels, smoothed the same way. The
per-channel values of the stronger signal name the alert's drivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from agent.baseline import apply_baselines
from agent.risk import EmpiricalCdf, SurpriseTracker, combine, rounds, surprise_cdf, update_surprise
from agent.runtime import Outputs
from agent.spec import Baseline, LevelStats, ModelSpec, SurpriseStats

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


@dataclass(frozen=True)
class Scored:
    """One window's signals and risk (NaN risk: the model's output was not finite)."""

    risk: float
    p_fail: float | None
    p_surprise: float | None
    p_anomaly: float | None
    per_channel: FloatArray | None    # the stronger signal's smoothed per-channel values: the drivers
    rul_cells: float | None
    p_level: float | None = None
    forecasts: bool = False           # the model forecasts: `surprise` is always in the signals

    def signals(self) -> dict[str, float | None]:
        """The risk message's `signals`, rounded as published (`surprise` null while no earlier
        forecast covers the window's newest cells: an asset's first window, after a gap)."""
        out: dict[str, float | None] = {}
        if self.p_fail is not None:
            out["fail_prob"] = round(self.p_fail, 6)
        if self.p_surprise is not None:
            out["surprise"] = round(self.p_surprise, 6)
        elif self.forecasts:
            out["surprise"] = None
        if self.p_anomaly is not None:
            out["anomaly"] = round(self.p_anomaly, 6)
        if self.p_level is not None:
            out["level"] = round(self.p_level, 6)
        return out


def level_contributions(newest: npt.NDArray[np.floating[Any]], stats: LevelStats) -> FloatArray:
    """Each channel's share of the Mahalanobis distance of the newest cells [B, C] from the
    healthy state (they sum to d' P d / C); each channel's distance capped at z_max spreads."""
    d = np.asarray(newest, dtype=np.float64) - np.asarray(stats.center)
    precision = np.asarray(stats.precision)
    if stats.z_max > 0:
        sd = 1.0 / np.sqrt(np.diag(precision))
        d = np.clip(d, -stats.z_max * sd, stats.z_max * sd)
    return np.asarray(d * (d @ precision) / d.shape[-1])


def update_level(trackers: Sequence[SurpriseTracker], contributions: FloatArray, alpha: float
                 ) -> FloatArray:
    """Each tracker's smoothed contributions after this batch's rows [B, C], in batch order: the
    EWMA of each tracker over its rows, computed for the batch in one pass per round (a tracker's
    r-th row of the batch is in round r), as a row-by-row update would."""
    out = np.empty_like(contributions)
    for rows in rounds(trackers):
        prev = [trackers[i].level for i in rows]
        old = np.stack([contributions[i] if p is None else p for i, p in zip(rows, prev, strict=True)])
        new = old + alpha * (contributions[rows] - old)
        out[rows] = new
        for k, i in enumerate(rows):
            trackers[i].level = new[k].copy()  # a copy: the batch's array is not held
    return out


class _Stats:
    """A SurpriseStats made ready to use: its CDF and its per-channel log-variance (or None)."""

    __slots__ = ("cdf", "logvar")

    def __init__(self, stats: SurpriseStats) -> None:
        self.cdf = surprise_cdf(stats)
        self.logvar = (2.0 * np.log(np.asarray(stats.residual_scale, dtype=np.float64))
                       if stats.residual_scale else None)


class Scorer:
    """The scoring of one model (its spec), made once per model, used per batch."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.fleet = _Stats(spec.surprise)
        self.own = {a: _Stats(p.surprise) for a, p in spec.profiles.items() if p.surprise is not None}
        self.anomaly_cdf = None if spec.anomaly is None else EmpiricalCdf(spec.anomaly.quantiles)
        lv = spec.level
        self.level_cdf = None if lv is None else EmpiricalCdf(lv.quantiles, lv.tail)
        self.own_level = {a: EmpiricalCdf(p.level.quantiles, p.level.tail)
                          for a, p in spec.profiles.items() if p.level is not None}

    def tracker(self) -> SurpriseTracker:
        """A fresh per-asset surprise state for this model."""
        return SurpriseTracker(self.spec.surprise.ewma_alpha, self.spec.surprise.z_max)

    def stats_of(self, asset: str) -> _Stats:
        return self.own.get(asset, self.fleet)

    def normalise(self, raw: FloatArray, baselines: Sequence[Baseline | None] = ()
                  ) -> npt.NDArray[np.float32]:
        """Raw windows [B, W, C] into the model's input space: each against its asset's baseline
        (with per-asset baselines; `baselines[i]` for window i), then the model's normalisation."""
        if self.spec.baseline is not None and baselines:
            center = np.asarray([b.center for b in baselines if b is not None])[:, None, :]
            scale = np.asarray([b.scale for b in baselines if b is not None])[:, None, :]
            if len(center) != len(raw):
                raise ValueError("every window needs its asset's baseline")
            raw = apply_baselines(raw, center, scale)
        return self.spec.normalise(raw)

    def score(self, assets: Sequence[str], out: Outputs, x: npt.NDArray[np.float32],
              trackers: Sequence[SurpriseTracker], ends: Sequence[int]) -> list[Scored]:
        """Signals and risk of each window of a batch: `x` the normalised windows [B, W, C] the
        model scored, `out` its outputs; each window's tracker is updated (in batch order)."""
        s = self.spec
        n = len(assets)
        per_channel: list[FloatArray | None] = [None] * n
        p_surprise: list[float | None] = [None] * n
        stats = [self.stats_of(a) for a in assets]
        forecasts = out.forecast_mean is not None and out.forecast_logvar is not None
        if out.forecast_mean is not None and out.forecast_logvar is not None:
            logvar = np.asarray(out.forecast_logvar, dtype=np.float32)
            fixed = [(st, rows) for st, rows in _groups(stats) if st.logvar is not None]
            if fixed:
                logvar = logvar.copy()
                for st, rows in fixed:  # one assignment per set of statistics, not per window
                    logvar[rows] = st.logvar  # broadcast over the horizon
            per_channel = update_surprise(trackers, ends, x[:, -s.horizon:].astype(np.float64),
                                          out.forecast_mean, logvar)
            have = [i for i, pc in enumerate(per_channel) if pc is not None]
            if have:
                scores = np.mean(np.stack([per_channel[i] for i in have]), axis=1)  # type: ignore[misc]
                for cdf, rows in _groups([stats[i].cdf for i in have]):
                    for j, p in zip(rows, cdf(scores[rows]).tolist(), strict=True):
                        p_surprise[have[j]] = p
        nothing: list[float | None] = [None] * n
        p_fail: list[float | None] = nothing if out.fail_prob is None else out.fail_prob.tolist()
        rul: list[float | None] = nothing if out.rul is None else out.rul.tolist()
        p_anomaly: list[float | None] = (
            self.anomaly_cdf(out.anomaly_nll.astype(np.float64)).tolist()
            if out.anomaly_nll is not None and self.anomaly_cdf is not None else nothing)
        p_level: list[float | None] = nothing
        level_channels: list[FloatArray | None] = [None] * n
        if s.level is not None and self.level_cdf is not None:
            smoothed = update_level(trackers, level_contributions(x[:, -1, :], s.level), s.level.ewma_alpha)
            level_channels = list(smoothed)
            scores = smoothed.sum(axis=1)
            p_level = [None] * n
            fleet_level = self.level_cdf
            for cdf, rows in _groups([self.own_level.get(a, fleet_level) for a in assets]):
                for j, p in zip(rows, cdf(scores[rows]).tolist(), strict=True):
                    p_level[j] = p
        return [Scored(combine(p_fail[i], p_surprise[i], s.combiner, p_anomaly[i], p_level[i]), p_fail[i],
                       p_surprise[i], p_anomaly[i], _drivers(per_channel[i], p_surprise[i],
                                                             level_channels[i], p_level[i]),
                       rul[i], p_level[i], forecasts) for i in range(n)]


def _drivers(surprise: FloatArray | None, p_surprise: float | None, level: FloatArray | None,
             p_level: float | None) -> FloatArray | None:
    """The per-channel values of whichever signal says more."""
    if level is None or p_level is None:
        return surprise
    if surprise is None or p_surprise is None or p_level > p_surprise:
        return level
    return surprise


def _groups(items: Sequence[T]) -> list[tuple[T, npt.NDArray[np.int64]]]:
    """Positions that share one object (a CDF, a set of statistics), so each serves its rows at once."""
    by: dict[int, list[int]] = {}
    first: dict[int, T] = {}
    for j, c in enumerate(items):
        by.setdefault(id(c), []).append(j)
        first.setdefault(id(c), c)
    return [(first[k], np.asarray(v, dtype=np.int64)) for k, v in by.items()]
