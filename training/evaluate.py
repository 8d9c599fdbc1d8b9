"""Scoring a model on a window set as the agent would run it: RUL, failure head, levels, forecasts.

`vigil-train evaluate` runs the exported file through the agent's runtime; `fit` runs the
same scoring on validation with the eager model. Metrics:
- RUL: RMSE and NASA score of each asset's last window against its true RUL (the C-MAPSS
  protocol), and RMSE over all windows against the capped target;
- failure head and levels: PR-AUC, warnings, false alarms per asset-day, failures caught
  and the lead time of the first alert before each;
- forecasts: Gaussian NLL and RMSE per channel (in units of the training std).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.runtime import Runtime, load_model
from agent.spec import ModelSpec
from agent.windows import cell_of
from training import baselines as base
from training import calibrate as cal
from training import level as lvl
from training import surprise as sur
from training.calibrate import Predictions
from training.data import Event, Format, History, load_events, load_history
from training.labels import Inputs, WindowSet, build_windows, fill_reach

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scored:
    """A model's view of a window set: probabilities, risk, RUL, and what the levels would do."""

    p_fail: FloatArray | None
    p_surprise: FloatArray        # NaN without forecast heads
    risk: FloatArray
    alerts: cal.AlertStats
    forecast_nll: float
    forecast_rmse: dict[str, float]
    rul: FloatArray | None
    p_anomaly: FloatArray | None = None  # the VAE signal, when the model has it


def failure_cells(ws: WindowSet, events: list[Event], period_s: float) -> dict[int, list[int]]:
    """Failure cells per asset index of a window set."""
    index = {a: i for i, a in enumerate(ws.assets)}
    out: dict[int, list[int]] = {}
    for e in events:
        if e.event == "failure" and e.asset in index:
            out.setdefault(index[e.asset], []).append(cell_of(e.ts, period_s))
    return out


def score(pred: Predictions, temperature: float, spec: ModelSpec, data: Inputs,
          events: list[Event]) -> Scored:
    """Replay the agent's risk and levels from a model's predictions over a window set."""
    ws = data.ws
    has_forecast = "forecast_mean" in spec.heads
    if has_forecast:
        own = {a: p.surprise for a, p in spec.profiles.items() if p.surprise is not None}
        scores = sur.surprise_scores(ws, pred, spec.surprise, own)
        ps = sur.surprise_probabilities(scores, spec.surprise, ws, own)
    else:
        ps = np.full(len(ws), np.nan)
    pf = cal.fail_probabilities(pred.logit, temperature) if "fail_prob" in spec.heads else None
    pa = (cal.anomaly_probabilities(pred.anomaly, spec.anomaly)
          if spec.anomaly is not None and len(pred.anomaly) == len(ws) else None)
    pl = None if spec.level is None else lvl.probabilities(
        data, spec.level, {a: p.level for a, p in spec.profiles.items() if p.level is not None})
    risk = cal.risks(pf, ps, spec.combiner, pa, pl)
    fc = failure_cells(ws, events, spec.period_s)
    alerts = cal.replay_levels(ws, risk, spec.thresholds, spec.period_s, spec.fail_horizon, fc)
    nll, per_channel = float("nan"), {}
    if has_forecast and ws.has_target.any():
        y = data.y(np.arange(len(ws)))[ws.has_target]
        mean, logvar = pred.mean[ws.has_target], pred.logvar[ws.has_target]
        nll = float((0.5 * (logvar + (y - mean) ** 2 * np.exp(-logvar))).mean())
        rmse = np.sqrt(((y - mean) ** 2).mean(axis=(0, 1)))
        per_channel = {c: round(float(v), 4) for c, v in zip(spec.channels, rmse, strict=True)}
    rul = pred.rul.astype(np.float64) if "rul" in spec.heads else None
    return Scored(pf, ps, risk, alerts, nll, per_channel, rul, pa)


def nasa_score(pred: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """The PHM08 asymmetric score: late predictions (pred > true) cost more; a sum over assets."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def rul_metrics(rul: FloatArray, ws: WindowSet, cap: float) -> dict[str, float]:
    """RMSE and NASA score at each asset's last window (true RUL, uncapped), and RMSE over all windows."""
    out: dict[str, float] = {}
    last = ws.last_per_asset()
    last = last[np.isfinite(ws.rul[last])]
    if len(last):
        d = rul[last] - ws.rul[last]
        out["rul_rmse"] = round(float(np.sqrt(np.mean(d**2))), 3)
        out["rul_score"] = round(nasa_score(rul[last], ws.rul[last]), 2)
        out["rul_mae"] = round(float(np.mean(np.abs(d))), 3)
        out["rul_assets"] = float(len(last))
    target = ws.rul_target(cap)
    known = np.isfinite(target)
    if known.any():
        out["rul_rmse_all_windows"] = round(float(np.sqrt(np.mean((rul[known] - target[known]) ** 2))), 3)
    return out


def metrics_of(s: Scored, ws: WindowSet, spec: ModelSpec) -> dict[str, Any]:
    """The numbers a summary reports for one data set (flat floats, plus forecast RMSE per channel)."""
    a = s.alerts
    leads = np.asarray(a.lead_times_s)
    out: dict[str, Any] = {
        "windows": float(len(ws)),
        "assets": float(len(np.unique(ws.asset))),
        "asset_days": round(a.asset_days, 3),
        "failures": float(a.failures),
        "failures_caught": float(a.caught),
        "warnings": float(a.warnings),
        "false_warnings": float(a.false_warnings),
        "false_warnings_per_asset_day": round(a.false_per_asset_day, 5),
        "criticals": float(a.criticals),
        "false_criticals": float(a.false_criticals),
        "mean_lead_time_s": round(float(leads.mean()), 1) if len(leads) else float("nan"),
        "median_lead_time_s": round(float(np.median(leads)), 1) if len(leads) else float("nan"),
    }
    if not math.isnan(s.forecast_nll):
        out["forecast_nll"] = round(s.forecast_nll, 4)
        out["forecast_rmse"] = round(float(np.sqrt(np.mean(np.square(list(s.forecast_rmse.values()))))), 4)
    if s.p_fail is not None and ws.fail.sum() > 0:
        out["fail_pr_auc"] = round(cal.pr_auc(s.p_fail, ws.fail), 4)
        out["risk_pr_auc"] = round(cal.pr_auc(s.risk, ws.fail), 4)
    if s.p_anomaly is not None and ws.fail.sum() > 0:
        out["anomaly_pr_auc"] = round(cal.pr_auc(s.p_anomaly, ws.fail), 4)
    if s.rul is not None:
        out.update(rul_metrics(s.rul, ws, spec.rul_cap))
    if s.forecast_rmse:
        out["forecast_rmse_per_channel"] = s.forecast_rmse
    return out


def flat(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the finite numbers (what goes into the model file's metadata)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, float | int) and math.isfinite(v)}


def predict_runtime(rt: Runtime, data: Inputs, batch: int = 2048) -> Predictions:
    """Predictions through the agent's runtime (the exported file, not the eager model)."""
    spec = rt.spec
    ws = data.ws
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(ws), batch):
        idx = np.arange(start, min(start + batch, len(ws)))
        x = data.x(idx)
        out = rt.infer(x)
        b, c = len(idx), spec.n_channels
        empty = np.zeros((b, 0, c), dtype=np.float32)
        p = np.clip(out.fail_prob, 1e-7, 1 - 1e-7) if out.fail_prob is not None else np.full(b, 0.5)
        logit = np.log(p / (1 - p)).astype(np.float32)
        rul = out.rul if out.rul is not None else np.zeros(b, dtype=np.float32)
        anomaly = out.anomaly_nll if out.anomaly_nll is not None else np.full(b, np.nan, dtype=np.float32)
        parts.append((out.forecast_mean if out.forecast_mean is not None else empty,
                      out.forecast_logvar if out.forecast_logvar is not None else empty,
                      logit, x[:, -spec.horizon:, :], rul, anomaly))
    return cal.join(parts, spec.horizon, spec.n_channels)


@dataclass(frozen=True)
class Evaluation:
    """Everything a report needs: the data, the model's scores on it, and the metrics."""

    spec: ModelSpec
    history: History
    events: list[Event]
    ws: WindowSet
    scored: Scored
    metrics: dict[str, Any]


def load_for_model(spec: ModelSpec, history: Path, events: Path | None, fmt: Format,
                   rul_file: Path | None = None) -> tuple[History, list[Event]]:
    """A history on the model's grid and channels, and its events (C-MAPSS: from the file itself)."""
    if fmt == "cmapss":
        from training.cmapss import load_cmapss

        data = load_cmapss(history, rul_file, channels=spec.channels)
        return data.history, data.events + (load_events(events) if events else [])
    hist = load_history(history, fmt=fmt, period_s=spec.period_s, channels=spec.channels)
    return hist, load_events(events) if events else []


def evaluate_file(model: Path, history: Path, events: Path | None = None, *, fmt: Format = "long",
                  rul_file: Path | None = None, max_gap: int = 5, hold_s: float | None = None) -> Evaluation:
    """A model file scored on a history through the agent's runtime.

    `hold_s`: how long a channel's last value fills the cells after it (None: as the model was
    trained, from its metadata).
    """
    rt = load_model(model)
    spec = rt.spec
    hist, evs = load_for_model(spec, history, events, fmt, rul_file)
    hold = (spec.hold_s or 0.0) if hold_s is None else hold_s
    # C-MAPSS test engines may be shorter than the window: pad them with their first cycle.
    ws = build_windows(hist, evs, window=spec.window, horizon=spec.horizon, fail_horizon=spec.fail_horizon,
                       max_gap=fill_reach(max_gap, hold, hist.period_s), pad_start=fmt == "cmapss")
    if spec.baseline is not None:  # each asset against its baseline: the file's, or learnt as the agent would
        ws = base.apply(ws, base.for_model(ws, spec))
    if len(ws) == 0:
        raise ValueError(f"{history}: no whole window of {spec.window} cells")
    data = ws.inputs(spec.normalisation)
    # The exported fail_prob already includes the calibration temperature.
    scored = score(predict_runtime(rt, data), 1.0, spec, data, evs)
    return Evaluation(spec, hist, evs, ws, scored, metrics_of(scored, ws, spec))


def evaluate(model: Path, history: Path, events: Path | None = None, *, fmt: Format = "long",
             rul_file: Path | None = None, max_gap: int = 5, hold_s: float | None = None) -> dict[str, Any]:
    """Metrics of a model file on a history: RUL, PR-AUC, lead time, false alarms, forecast error."""
    return evaluate_file(model, history, events, fmt=fmt, rul_file=rul_file, max_gap=max_gap,
                         hold_s=hold_s).metrics
