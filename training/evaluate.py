"""`vigil-train evaluate`: a model file scored on a history, as the agent would run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.runtime import Runtime, load_model
from training.calibrate import Predictions
from training.data import load_events, load_history
from training.fit import metrics_of, score
from training.labels import WindowSet, build_windows


def predict_runtime(rt: Runtime, ws: WindowSet, batch: int = 2048) -> Predictions:
    """Predictions through the agent's runtime (the exported file, not the eager model)."""
    spec = rt.spec
    parts = []
    for start in range(0, len(ws), batch):
        idx = np.arange(start, min(start + batch, len(ws)))
        x = ws.x(idx, spec.normalisation)
        out = rt.infer(x)
        assert out.forecast_mean is not None and out.forecast_logvar is not None
        p = np.clip(out.fail_prob, 1e-7, 1 - 1e-7) if out.fail_prob is not None else np.full(len(idx), 0.5)
        logit = np.log(p / (1 - p)).astype(np.float32)
        parts.append((out.forecast_mean, out.forecast_logvar, logit, x[:, -spec.horizon:, :]))
    return Predictions(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def evaluate(model: Path, history: Path, events: Path | None, *, max_gap: int = 5) -> dict[str, float]:
    """Metrics of a model file on a history: forecast NLL, PR-AUC, lead time, false alarms."""
    rt = load_model(model)
    spec = rt.spec
    hist = load_history(history, period_s=spec.period_s, channels=spec.channels)
    evs = load_events(events) if events else []
    ws = build_windows(hist, evs, window=spec.window, horizon=spec.horizon,
                       fail_horizon=spec.fail_horizon, max_gap=max_gap)
    if len(ws) == 0:
        raise ValueError(f"{history}: no whole window of {spec.window} cells")
    # The exported fail_prob already includes the calibration temperature.
    return metrics_of(score(predict_runtime(rt, ws), 1.0, spec, ws, evs), ws)
