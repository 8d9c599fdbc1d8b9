"""A candidate model against the live one on held-out recent data, each run as the agent runs it.

Both model files go through the agent's runtime (`agent.runtime.load_model`), its risk (the
replay in `training.evaluate.score`) and its level machine, on the windows that end in the
held-out part of the recording (their older cells may come from before it, as an agent holds
them). Every failure and maintenance event of the events file bounds a machine's life: the
level restarts after one, as the agent restarts an asset after a repair.

What counts, per model (`horizon`: the model's failure horizon):
- normal time: windows with no failure or maintenance within the horizon after their end;
- an alarm: a raise from ok; false when no failure or maintenance follows within the horizon
  (also near the end of the data: the data is all the judge has);
- a failure (maintenance event) is caught when an alarm came within the horizon before it;
- alarm share: the part of normal time an alarm stood (a level that never returns to ok
  raises once, yet alarms all the time);
- forecast error: the forecast's squared error over the horizon on normal time, relative to
  repeating the window's last cell (1: no better than that), a geometric mean over channels.
  It is free of each model's own normalisation, so two models compare.

The rules a candidate must pass to be "not worse" are `RULES` (README, "Learning and refits").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.alerts import rfc3339_ms
from agent.errors import DataError
from agent.risk import Level, LevelMachine, in_force
from agent.runtime import load_model
from agent.spec import ModelSpec, Thresholds
from agent.windows import cell_of
from training import baselines as base
from training.data import Event
from training.evaluate import predict_runtime, score
from training.labels import Inputs, build_windows
from training.recording import Readings

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SECONDS_PER_DAY = 86_400.0
FORECAST_BATCH = 8192


@dataclass(frozen=True)
class Holdout:
    """The held-out part: from each asset's cut to the end of the recording."""

    cut: dict[str, float]   # per asset, the first held-out event time
    start: float            # the earliest cut
    end: float              # the last reading


def choose_holdout(readings: Readings, *, fraction: float | None, duration_s: float | None,
                   min_s: float, seen_until: float | None = None) -> Holdout:
    """The most recent `fraction` of the recording's event time (or `duration_s` of it), at
    least `min_s`; every asset keeps at least `min_s` of its own last readings out. Nothing at
    or before `seen_until` (the newest reading the live model learnt from) is held out: a model
    judged on what it learnt from would look better than it is."""
    spans = readings.span()
    t0 = min(lo for lo, _ in spans.values())
    t1 = max(hi for _, hi in spans.values())
    length = duration_s if duration_s is not None else (fraction or 0.0) * (t1 - t0)
    length = max(length, min_s)
    floor = -math.inf if seen_until is None else float(np.nextafter(seen_until, math.inf))
    if t1 - floor < min_s:
        raise DataError(f"too little new history: the live model learnt from readings up to "
                        f"{rfc3339_ms(seen_until or t1)}, the recording ends at {rfc3339_ms(t1)}; judging "
                        f"needs at least {min_s / 3600:.1f} h after that (window + horizon)")
    cut = {a: max(min(t1 - length, hi - min_s), floor) for a, (_, hi) in spans.items()}
    return Holdout(cut, min(cut.values()), t1)


@dataclass(frozen=True)
class Trace:
    """One asset's held-out risk and level, window by window (for the report's plots)."""

    ts: FloatArray        # each window's newest cell, as event time
    risk: FloatArray
    level: IntArray


@dataclass(frozen=True)
class Judged:
    """A model's judgement on the held-out part."""

    path: Path
    spec: ModelSpec
    thresholds: Thresholds   # as the agent decides with them
    metrics: dict[str, float]
    traces: dict[str, Trace]
    events: tuple[Event, ...]  # the held-out failures and maintenance events


def judge(path: Path, readings: Readings, events: list[Event], holdout: Holdout, *,
          sensitivity: float = 1.0, max_gap: int = 5, threads: int = 1) -> Judged:
    """Score a model file on the held-out windows as the agent would; the metrics above."""
    rt = load_model(path, threads=threads)
    spec = rt.spec
    hist = readings.history(spec.channels, spec.period_s)
    ws = build_windows(hist, events, window=spec.window, horizon=spec.horizon, fail_horizon=spec.fail_horizon,
                       max_gap=max_gap)
    if spec.baseline is not None and len(ws):  # the file's baselines, or learnt as the agent would
        ws = base.apply(ws, base.for_model(ws, spec))
    never = np.iinfo(np.int64).max
    cut_cells = np.array([cell_of(holdout.cut[a], spec.period_s) if a in holdout.cut else never
                          for a in ws.assets], dtype=np.int64)
    held = ws.subset(ws.end_cell >= cut_cells[ws.asset]) if len(ws) else ws
    if len(held) == 0:
        raise DataError(f"the held-out part (from {rfc3339_ms(holdout.start)}) has no whole window of "
                        f"{spec.window} cells of {spec.period_s:g} s for {path.name}")
    data = held.inputs(spec.normalisation)
    pred = predict_runtime(rt, data)
    risk = score(pred, 1.0, spec, data, events).risk
    thresholds = in_force(spec.thresholds, sensitivity)
    horizon = spec.fail_horizon
    by_asset = _event_cells(events, spec.period_s)
    held_events = tuple(e for e in events if e.asset in holdout.cut and e.ts >= holdout.cut[e.asset])

    normal = np.zeros(len(held), dtype=bool)
    alarmed = np.zeros(len(held), dtype=bool)
    traces: dict[str, Trace] = {}
    raises: dict[str, list[int]] = {}
    for a in np.unique(held.asset):
        name = held.assets[a]
        idx = np.flatnonzero(held.asset == a)
        idx = idx[np.argsort(held.end_cell[idx], kind="stable")]
        cells = held.end_cell[idx]
        ev = np.array(sorted(by_asset.get(name, {})), dtype=np.int64)
        # The index of the next event is also the life: the event's own cell ends the old life.
        life = np.searchsorted(ev, cells, side="left")
        ahead = (np.where(life < len(ev), ev[np.minimum(life, len(ev) - 1)] - cells, np.iinfo(np.int64).max)
                 if len(ev) else np.full(len(cells), np.iinfo(np.int64).max))
        normal[idx] = ahead > horizon
        levels = np.zeros(len(idx), dtype=np.int64)
        machine, current, up = LevelMachine(thresholds), -1, raises.setdefault(name, [])
        for j, i in enumerate(idx):
            if life[j] != current:  # a new life: the agent restarts the asset's level
                machine, current = LevelMachine(thresholds), int(life[j])
            r = float(risk[i])
            if math.isfinite(r):
                tr = machine.update(r, int(cells[j]))
                if tr is not None and tr.previous is Level.OK and tr.level > Level.OK:
                    up.append(int(cells[j]))
            levels[j] = int(machine.level)
        alarmed[idx] = levels > 0
        traces[name] = Trace(cells.astype(np.float64) * spec.period_s, risk[idx], levels)

    metrics = _alarm_metrics(held_events, by_asset, raises, horizon, spec.period_s)
    normal_days = float(normal.sum()) * spec.period_s / SECONDS_PER_DAY
    metrics.update({
        "windows": float(len(held)),
        "assets": float(len(traces)),
        "normal_asset_days": round(normal_days, 4),
        "false_alarms_per_asset_day": round(metrics["false_alarms"] / normal_days, 5) if normal_days else 0.0,
        "alarm_share": round(float(alarmed[normal].mean()), 5) if normal.any() else 0.0,
        "unscored_share": round(float(np.mean(~np.isfinite(risk))), 5),
        "forecast_error": _forecast_error(pred.mean, pred.tail, data, held.has_target & normal),
    })
    return Judged(path, spec, thresholds, metrics, traces, held_events)


def _event_cells(events: list[Event], period_s: float) -> dict[str, dict[int, str]]:
    """Per asset, the cells of its failures and maintenance events (a failure wins a shared cell)."""
    out: dict[str, dict[int, str]] = {}
    for e in sorted(events, key=lambda e: e.event != "failure"):
        out.setdefault(e.asset, {}).setdefault(cell_of(e.ts, period_s), e.event)
    return out


def _alarm_metrics(held_events: tuple[Event, ...], by_asset: dict[str, dict[int, str]],
                   raises: dict[str, list[int]], horizon: int, period_s: float) -> dict[str, float]:
    """Alarms true and false, events caught, and the lead time of the first alarm before each failure."""
    false = total = 0
    for name, cells in raises.items():
        ev = np.array(sorted(by_asset.get(name, {})), dtype=np.int64)
        for c in cells:
            total += 1
            k = np.searchsorted(ev, c, side="left")
            false += not (k < len(ev) and ev[k] - c <= horizon)
    caught = {"failure": 0, "maintenance": 0}
    count = {"failure": 0, "maintenance": 0}
    leads: list[float] = []
    for e in held_events:
        cell = cell_of(e.ts, period_s)
        count[e.event] += 1
        before = [c for c in raises.get(e.asset, []) if 0 <= cell - c <= horizon]
        if before:
            caught[e.event] += 1
            if e.event == "failure":
                leads.append((cell - min(before)) * period_s)
    return {"alarms": float(total), "false_alarms": float(false),
            "failures": float(count["failure"]), "failures_caught": float(caught["failure"]),
            "maintenance": float(count["maintenance"]), "maintenance_caught": float(caught["maintenance"]),
            "events_caught": float(caught["failure"] + caught["maintenance"]),
            "mean_lead_time_s": round(float(np.mean(leads)), 1) if leads else float("nan")}


def _forecast_error(mean: npt.NDArray[np.float32], tail: npt.NDArray[np.float32], data: Inputs,
                    use: npt.NDArray[np.bool_]) -> float:
    """The forecast's squared error relative to repeating the last cell, geometric mean over channels."""
    if mean.shape[1] == 0 or not use.any():
        return float("nan")
    idx = np.flatnonzero(use)
    model_se = np.zeros(mean.shape[2])
    last_se = np.zeros(mean.shape[2])
    for start in range(0, len(idx), FORECAST_BATCH):
        b = idx[start:start + FORECAST_BATCH]
        y = data.y(b).astype(np.float64)
        model_se += ((y - mean[b]) ** 2).sum(axis=(0, 1))
        last_se += ((y - tail[b][:, -1:, :]) ** 2).sum(axis=(0, 1))
    ok = (last_se > 0) & (model_se > 0)
    # Geometric mean: twice as bad on one channel and twice as good on another is even.
    return round(float(np.exp(np.mean(np.log(model_se[ok] / last_se[ok])))), 5) if ok.any() else float("nan")


@dataclass(frozen=True)
class Rule:
    """One condition of "not worse", with both models' figures and the limit."""

    name: str
    text: str
    candidate: float
    live: float
    limit: float
    at_least: bool          # the candidate must reach the limit (else stay within it)

    @property
    def passed(self) -> bool:
        if math.isnan(self.limit) or math.isnan(self.candidate):
            return math.isnan(self.limit)  # no figure to hold it to: the rule does not apply
        return self.candidate >= self.limit if self.at_least else self.candidate <= self.limit

    def why(self) -> str:
        op = "below" if self.at_least else "above"
        return (f"{self.text}: candidate {self.candidate:g}, live {self.live:g} "
                f"({op} the limit {self.limit:g})")


# How much worse a figure may be before it counts as worse (README, "Learning and refits").
FORECAST_FACTOR = 1.1
ALARM_SHARE_FACTOR = 1.5
ALARM_SHARE_SLACK = 0.01


RULES = (
    "catches at least as many held-out failures as the live model",
    "catches at least as many held-out failures and maintenance events together",
    "false alarms per asset-day of normal time at most the live model's plus the false-alarm budget "
    "(or one alarm over the held-out normal time, whichever is more)",
    f"share of normal time in alarm at most {ALARM_SHARE_FACTOR:g} x the live model's, plus that one alarm "
    f"standing a whole failure horizon (or {ALARM_SHARE_SLACK:g}, whichever is more)",
    f"forecast error (relative to repeating the last reading) at most {FORECAST_FACTOR:g} x the live "
    "model's, when both forecast",
)


def rules(candidate: dict[str, float], live: dict[str, float], budget_per_30_days: float,
          horizon_days: float) -> list[Rule]:
    """The conditions a candidate must all pass to be installed as the shadow model.

    The tolerance of the alarm rules is one alarm more than the live model raised over the
    held-out normal time, standing up to a failure horizon (or the false-alarm budget, on long
    held-out parts): held-out parts are short, and one alarm either way is no evidence.
    """
    normal_days = live["normal_asset_days"]
    one = 1.0 / normal_days if normal_days else 0.0
    slack = max(budget_per_30_days / 30.0, one)
    fa = live["false_alarms_per_asset_day"]
    share = live["alarm_share"]
    fe_c, fe_l = candidate["forecast_error"], live["forecast_error"]
    fe_limit = fe_l * FORECAST_FACTOR if math.isfinite(fe_l) and math.isfinite(fe_c) else float("nan")
    return [
        Rule("failures_caught", RULES[0], candidate["failures_caught"], live["failures_caught"],
             live["failures_caught"], True),
        Rule("events_caught", RULES[1], candidate["events_caught"], live["events_caught"],
             live["events_caught"], True),
        Rule("false_alarms_per_asset_day", RULES[2], candidate["false_alarms_per_asset_day"], fa,
             round(fa + slack, 5), False),
        Rule("alarm_share", RULES[3], candidate["alarm_share"], share,
             round(share * ALARM_SHARE_FACTOR + max(ALARM_SHARE_SLACK, horizon_days * one), 5), False),
        Rule("forecast_error", RULES[4], fe_c, fe_l, round(fe_limit, 5), False),
    ]


def validate(judged: Judged, live: Judged | None) -> str | None:
    """Why a model may not serve at all (a failed candidate, not a worse one), or None."""
    t = judged.spec.thresholds
    if not (0.0 < t.warning <= t.critical < 1.0):
        return f"thresholds out of range (warning {t.warning:g}, critical {t.critical:g})"
    unscored = judged.metrics["unscored_share"]
    allowed = 0.0 if live is None else live.metrics["unscored_share"]
    if unscored > allowed + 0.001:
        return f"no finite risk on {unscored:.1%} of the held-out windows (NaN outputs)"
    if live is not None:
        ls, cs = live.spec, judged.spec
        if (cs.channels, cs.period_s, cs.window) != (ls.channels, ls.period_s, ls.window):
            return "it reads other channels, period or window than the live model (no shadow model can)"
    return None
