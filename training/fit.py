"""From history files to a calibrated model file and a validation summary."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.runtime import load_model
from agent.spec import Combiner, ModelSpec, Normalisation
from agent.windows import cell_of
from training import calibrate as cal
from training.data import Event, History, load_events, load_history
from training.export import export
from training.labels import WindowSet, build_windows, fit_normalisation, split_assets
from training.model import Forecaster, ModelConfig
from training.train import TrainConfig, seed_everything, train


@dataclass(frozen=True)
class FitOptions:
    history: Path
    out: Path
    events: Path | None = None
    period_s: float | None = None
    window: int = 30
    horizon: int = 5
    fail_horizon: int = 1440
    max_gap: int = 5
    hidden: int = 32
    layers: int = 1
    epochs: int = 20
    windows_per_epoch: int = 40_000
    val_fraction: float = 0.25
    false_alarms_per_30_days: float = 1.0
    surprise_alpha: float = 0.1
    seed: int = 0
    threads: int = 2
    progress: bool = True


def failure_cells(ws: WindowSet, events: list[Event], period_s: float) -> dict[int, list[int]]:
    """Failure cells per asset index of a window set."""
    index = {a: i for i, a in enumerate(ws.assets)}
    out: dict[int, list[int]] = {}
    for e in events:
        if e.event == "failure" and e.asset in index:
            out.setdefault(index[e.asset], []).append(cell_of(e.ts, period_s))
    return out


@dataclass(frozen=True)
class Scored:
    """A model's view of a window set: probabilities, risk, and what the levels would do."""

    p_fail: np.ndarray | None
    p_surprise: np.ndarray
    risk: np.ndarray
    alerts: cal.AlertStats
    forecast_nll: float


def score(pred: cal.Predictions, temperature: float, spec: ModelSpec, ws: WindowSet,
          events: list[Event]) -> Scored:
    """Replay the agent's risk and levels from a model's predictions over a window set."""
    scores = cal.surprise_scores(ws, pred, spec.surprise.ewma_alpha)
    ps = cal.surprise_probabilities(scores, spec.surprise)
    pf = cal.fail_probabilities(pred.logit, temperature) if "fail_prob" in spec.heads else None
    risk = cal.risks(pf, ps, spec.combiner)
    fc = failure_cells(ws, events, spec.period_s)
    alerts = cal.replay_levels(ws, risk, spec.thresholds, spec.period_s, spec.fail_horizon, fc)
    y = ws.y(np.arange(len(ws)), spec.normalisation)
    nll = 0.5 * (pred.logvar + (y - pred.mean) ** 2 * np.exp(-pred.logvar)).mean(axis=(1, 2))
    return Scored(pf, ps, risk, alerts, float(nll[ws.has_target].mean()) if ws.has_target.any() else float("nan"))


def metrics_of(s: Scored, ws: WindowSet) -> dict[str, float]:
    """The numbers a summary reports for one data set."""
    a = s.alerts
    out = {
        "windows": float(len(ws)),
        "asset_days": round(a.asset_days, 3),
        "forecast_nll": round(s.forecast_nll, 4),
        "failures": float(a.failures),
        "failures_caught": float(a.caught),
        "warnings": float(a.warnings),
        "false_warnings": float(a.false_warnings),
        "false_warnings_per_asset_day": round(a.false_per_asset_day, 5),
        "mean_lead_time_s": round(float(np.mean(a.lead_times_s)), 1) if a.lead_times_s else float("nan"),
    }
    if s.p_fail is not None and ws.fail.sum() > 0:
        out["fail_pr_auc"] = round(cal.pr_auc(s.p_fail, ws.fail), 4)
        out["risk_pr_auc"] = round(cal.pr_auc(s.risk, ws.fail), 4)
    return out


def fit(opts: FitOptions) -> tuple[ModelSpec, dict[str, Any]]:
    """Train, calibrate and export a model; return its spec and the summary written beside it."""
    t0 = time.monotonic()
    torch.set_num_threads(opts.threads)
    seed_everything(opts.seed)
    history: History = load_history(opts.history, period_s=opts.period_s)
    events = load_events(opts.events) if opts.events else []
    ws = build_windows(history, events, window=opts.window, horizon=opts.horizon,
                       fail_horizon=opts.fail_horizon, max_gap=opts.max_gap)
    if len(ws) == 0:
        raise ValueError(f"{opts.history}: no whole window of {opts.window} cells in the history")
    failing = {e.asset for e in events if e.event == "failure"}
    train_assets, val_assets = split_assets(tuple(ws.assets), failing, opts.val_fraction, opts.seed)
    in_train = np.isin(np.array(ws.assets)[ws.asset], sorted(train_assets))
    train_ws, val_ws = ws.subset(in_train), ws.subset(~in_train)
    has_labels = bool(train_ws.fail.sum() > 0 and val_ws.fail.sum() > 0)
    norm: Normalisation = fit_normalisation(train_ws)
    model = Forecaster(ModelConfig(n_channels=len(history.channels), horizon=opts.horizon,
                                   hidden=opts.hidden, layers=opts.layers, fail_head=has_labels))
    result = train(model, train_ws, val_ws, norm, TrainConfig(
        epochs=opts.epochs, windows_per_epoch=opts.windows_per_epoch, seed=opts.seed,
        progress=opts.progress))

    # Calibrate on validation assets only, replaying what the agent will do.
    pred = cal.predict(model, val_ws, norm)
    if has_labels:
        model.temperature.fill_(cal.fit_temperature(pred.logit, val_ws.fail))
    scores = cal.surprise_scores(val_ws, pred, opts.surprise_alpha)
    surprise = cal.fit_surprise(scores, val_ws.fail == 0, opts.surprise_alpha)
    ps = cal.surprise_probabilities(scores, surprise)
    pf = cal.fail_probabilities(pred.logit, float(model.temperature)) if has_labels else None
    combiner = cal.fit_combiner(pf, ps, val_ws.fail) if has_labels else Combiner(0.0, 1.0, 0.0)
    risk = cal.risks(pf, ps, combiner)
    fc = failure_cells(val_ws, events, history.period_s)
    budget = opts.false_alarms_per_30_days / 30.0
    thresholds = cal.calibrate_thresholds(val_ws, risk, history.period_s, opts.fail_horizon, fc, budget)

    heads = ("forecast_mean", "forecast_logvar") + (("fail_prob",) if has_labels else ())
    spec = ModelSpec(
        channels=history.channels, period_s=history.period_s, window=opts.window,
        horizon=opts.horizon, fail_horizon=opts.fail_horizon, normalisation=norm, heads=heads,
        thresholds=thresholds, surprise=surprise, combiner=combiner, fingerprint=history.fingerprint,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    val_metrics = metrics_of(score(pred, float(model.temperature), spec, val_ws, events), val_ws)
    spec = replace(spec, metrics={k: v for k, v in val_metrics.items() if np.isfinite(v)})
    probe = val_ws.x(np.arange(min(len(val_ws), 64)), norm)
    spec = export(model, spec, probe, opts.out)
    load_model(opts.out)  # the agent's own checks: metadata, shapes, finite outputs
    summary: dict[str, Any] = {
        "model": str(opts.out), "version": spec.version, "train_assets": sorted(train_assets),
        "val_assets": sorted(val_assets), "train_windows": len(train_ws), "val_windows": len(val_ws),
        "period_s": history.period_s, "epochs_run": result.epochs_run,
        "best_val_loss": round(result.best_val_loss, 5), "temperature": float(model.temperature),
        "thresholds": asdict(thresholds), "combiner": asdict(combiner),
        "validation": val_metrics, "train_seconds": round(time.monotonic() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()), "curve": result.curve,
    }
    summary_path = Path(opts.out).with_suffix(".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return spec, summary
