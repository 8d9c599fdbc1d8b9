"""Calibration on validation data: temperature, surprise statistics, signal combiner, thresholds.

Everything here replays what the agent will do, with the agent's own code (`agent.risk`):
the surprise EWMA over consecutive windows, the combination, and the level machine.
Thresholds come from the false-alarm budget through the healthy risk's extreme-value tail
(`training.evt`), and never below what the validation replay itself shows to be within budget.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from agent.risk import LOGISTIC_EPS, EmpiricalCdf, Level, LevelMachine, combine, logit
from agent.spec import AnomalyStats, Combiner, Tail, Thresholds
from training import evt
from training.labels import Inputs, WindowSet
from training.model import Model

FloatArray = npt.NDArray[np.float64]
SECONDS_PER_DAY = 86_400.0
N_QUANTILES = 101
# The highest threshold: a risk as close to 1 as `agent.risk.combine` keeps any probability.
TOP_RISK = 1.0 - 1e-12


@dataclass(frozen=True)
class Predictions:
    """Model outputs for a set of windows, in the set's order (absent heads: empty or zeros)."""

    mean: npt.NDArray[np.float32]     # [N, H, C]
    logvar: npt.NDArray[np.float32]   # [N, H, C]
    logit: npt.NDArray[np.float32]    # [N]
    tail: npt.NDArray[np.float32]     # [N, H, C] the newest H normalised cells of each window
    rul: npt.NDArray[np.float32]      # [N] predicted RUL in cells (zeros without the head)
    # [N] the VAE's anomaly score (empty without the head)
    anomaly: npt.NDArray[np.float32] = field(default_factory=lambda: np.empty(0, dtype=np.float32))


# glibc's mallopt parameter number for the size from which allocations are mmap'ed.
M_MMAP_THRESHOLD = -3


def return_freed_arrays(threshold: int = 4 << 20) -> None:
    """From now on, serve allocations of `threshold` bytes and more with mmap, so that freeing them
    gives them back; and give back the free pages the heap holds now.

    glibc otherwise raises that threshold as large arrays are freed and keeps freed heap pieces
    it cannot trim: calibrating on a million validation windows held 1.5-3 GB it no longer used
    (bench/train_scale.py). Called before calibration, not training, whose many mid-size
    allocations run faster on the default. No-op where the C library has no mallopt.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
        libc.malloc_trim(0)


def predict(model: Model, data: Inputs, batch: int = 2048) -> Predictions:
    """Run the eager model over every window (eval mode, no gradients)."""
    model.eval()
    n, h = len(data.ws), data.ws.horizon
    # Filled in place batch by batch: a list of batches to join would cost twice the outputs,
    # and its freed pieces tend to stay with the allocator (GBs on a million windows).
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            x = data.x(np.arange(start, stop))
            mean, logvar, logit, rul = model.heads(torch.from_numpy(x))
            rul_cells = torch.clamp(rul, min=0.0) * model.rul_cap
            got = (mean.numpy(), logvar.numpy(), logit.numpy(), x[:, -h:, :], rul_cells.numpy())
            if not out:
                out = [np.empty((n, *g.shape[1:]), dtype=g.dtype) for g in got]
            for o, g in zip(out, got, strict=True):
                o[start:stop] = g
    return Predictions(*out) if out else join([], h, data.ws.cells.shape[1])


def join(parts: list[tuple[np.ndarray, ...]], h: int, c: int) -> Predictions:
    """Batches of (mean, logvar, logit, tail, rul[, anomaly]) into one Predictions."""
    if not parts:
        e = np.empty((0, h, c), dtype=np.float32)
        z = np.empty(0, dtype=np.float32)
        return Predictions(e, e, z, e, z)
    return Predictions(*(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))))


def fit_temperature(logits: npt.NDArray[np.float32], labels: npt.NDArray[np.float32]) -> float:
    """Temperature scaling: the T minimising validation log-loss of sigmoid(logit / T)."""
    if labels.min() == labels.max():
        return 1.0
    z = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.float64))
    grid = torch.exp(torch.linspace(-3.0, 3.0, 241, dtype=torch.float64))
    losses = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(z / t, y) for t in grid])
    return float(grid[int(torch.argmin(losses))])


def fit_anomaly(scores: npt.NDArray[np.float32], healthy: npt.NDArray[np.bool_]) -> AnomalyStats:
    """The healthy distribution of the VAE's anomaly score, as quantiles."""
    ok = healthy & np.isfinite(scores)
    if ok.sum() < 10:
        raise ValueError("too few healthy validation windows to calibrate the anomaly score (need >= 10)")
    q = np.quantile(scores[ok].astype(np.float64), np.linspace(0.0, 1.0, N_QUANTILES))
    return AnomalyStats(tuple(float(v) for v in np.maximum.accumulate(q)))


def anomaly_probabilities(scores: npt.NDArray[np.float32], stats: AnomalyStats) -> FloatArray:
    return EmpiricalCdf(stats.quantiles)(scores.astype(np.float64))


def fail_probabilities(logits: npt.NDArray[np.float32], temperature: float) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64) / temperature)))


def fit_combiner(p_fail: FloatArray | None, p_surprise: FloatArray, labels: npt.NDArray[np.float32],
                 p_anomaly: FloatArray | None = None, p_level: FloatArray | None = None) -> Combiner:
    """Logistic regression of the failure label on the logits of the signals.

    Weights are kept non-negative: more surprise, anomaly, level or a higher failure probability
    never lowers risk. Without failure labels nothing can be fitted: risk is then the highest of
    the unsupervised signals' probabilities (rule "max", each at unit weight; thresholds are set
    on that risk's healthy distribution).
    """
    if p_fail is None or labels.min() == labels.max():
        return Combiner(0.0, 1.0 if np.isfinite(p_surprise).any() else 0.0, 0.0,
                        1.0 if p_anomaly is not None else 0.0, 1.0 if p_level is not None else 0.0, "max")

    def logit6(p: FloatArray) -> FloatArray:
        # Fitted on logits within +-13.8 (as `combine` applies them): a few windows far in the
        # tail must not steer the weights.
        return logit(np.clip(np.nan_to_num(p, nan=0.5), LOGISTIC_EPS, 1 - LOGISTIC_EPS))

    extra = [q for q in (p_anomaly, p_level) if q is not None]
    cols = [logit6(p_fail), logit6(p_surprise)] + [logit6(q) for q in extra]
    feats = torch.from_numpy(np.stack(cols, axis=1))
    y = torch.from_numpy(labels.astype(np.float64))
    raw_w = torch.zeros(len(cols), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw_w, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = torch.nn.functional.softplus(raw_w)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(feats @ w + bias, y)
        loss = loss + 1e-3 * (w**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]  # torch's stub lacks annotations
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    w = torch.nn.functional.softplus(raw_w).detach().numpy().tolist()
    w_anomaly = w.pop(2) if p_anomaly is not None else 0.0
    w_level = w.pop(2) if p_level is not None else 0.0
    return Combiner(w[0], w[1], float(bias.detach()[0]), w_anomaly, w_level)


def risks(p_fail: FloatArray | None, p_surprise: FloatArray, c: Combiner,
          p_anomaly: FloatArray | None = None, p_level: FloatArray | None = None) -> FloatArray:
    """The agent's risk for each window."""
    def at(p: FloatArray | None, i: int) -> float | None:
        return None if p is None or not np.isfinite(p[i]) else float(p[i])

    return np.array([combine(at(p_fail, i), at(p_surprise, i), c, at(p_anomaly, i), at(p_level, i))
                     for i in range(len(p_surprise))])


@dataclass(frozen=True)
class AlertStats:
    """What the levels would have done on a data set."""

    warnings: int
    false_warnings: int
    criticals: int
    false_criticals: int
    asset_days: float
    failures: int
    caught: int
    lead_times_s: tuple[float, ...]

    @property
    def false_per_asset_day(self) -> float:
        return self.false_warnings / self.asset_days if self.asset_days else 0.0


def alerting(st: AlertStats) -> tuple[float, ...]:
    """How well alerts went on a replay, for comparing two risks: more failures caught, then
    fewer false warnings, then fewer warnings (less chatter), then a longer median lead time."""
    lead = float(np.median(st.lead_times_s)) if st.lead_times_s else 0.0
    return (st.caught, -st.false_warnings, -st.warnings, lead)


def replay_levels(ws: WindowSet, risk: FloatArray, thresholds: Thresholds, period_s: float,
                  fail_horizon: int, failure_cells: dict[int, list[int]]) -> AlertStats:
    """Run the agent's level machine over each asset's windows in event order and score it.

    An up-transition is false when no failure follows within the failure horizon.
    A failure is caught when a warning or critical was raised within the horizon before it.
    """
    warnings = false_w = crit = false_c = 0
    leads: list[float] = []
    n_fail = caught = 0
    for a in np.unique(ws.asset):
        idx = np.flatnonzero(ws.asset == a)
        idx = idx[np.argsort(ws.end_cell[idx], kind="stable")]
        fails = np.array(sorted(failure_cells.get(int(a), [])), dtype=np.int64)
        machine = LevelMachine(thresholds)
        raised: list[int] = []
        for i in idx:
            cell = int(ws.end_cell[i])
            tr = machine.update(float(risk[i]), cell)
            if tr is None or tr.level <= tr.previous:
                continue
            k = np.searchsorted(fails, cell, side="right")
            true_alarm = k < len(fails) and fails[k] - cell <= fail_horizon
            if tr.level is Level.WARNING or tr.previous is Level.OK:
                warnings += 1
                false_w += not true_alarm
                raised.append(cell)
            if tr.level is Level.CRITICAL:
                crit += 1
                false_c += not true_alarm
        for f in fails:
            n_fail += 1
            before = [c for c in raised if 0 <= f - c <= fail_horizon]
            if before:
                caught += 1
                leads.append((f - min(before)) * period_s)
    days = len(ws) * period_s / SECONDS_PER_DAY
    return AlertStats(warnings, false_w, crit, false_c, days, n_fail, caught, tuple(leads))


def calibrate_thresholds(ws: WindowSet, risk: FloatArray, period_s: float, fail_horizon: int,
                         failure_cells: dict[int, list[int]], budget_per_asset_day: float,
                         dwell: int = 2, cooldown: int = 30, hysteresis_frac: float = 0.1,
                         healthy_mask: npt.NDArray[np.bool_] | None = None) -> Thresholds:
    """Thresholds for the false-alarm budget (critical: a fifth of it).

    First the lowest level whose false alarms on the validation replay stay within the budget.
    Where the healthy risk's extreme-value tail says a healthy asset would pass that level more
    often than the budget allows (`budget_level`: what validation is too short to show), the
    level rises to the tail's, but never so far that it misses a failure the validation replay
    shows the lower level catching. So the threshold moves with the budget however little
    validation there is, and labelled failures keep being caught. The tail is kept for
    `[model] sensitivity`. `healthy_mask` picks the windows the tail is fitted on (default: no
    failure within the horizon).
    """
    healthy = risk[ws.fail == 0 if healthy_mask is None else healthy_mask]
    failing = risk[ws.fail == 1]
    # Dense near the top, where a budget of about one alarm a month puts the threshold.
    tail_q = 1.0 - np.logspace(-5.0, -0.3, 48)
    qs = set(np.quantile(healthy, tail_q).tolist()) if len(healthy) else set()
    if len(healthy):
        qs.add(float(np.nextafter(healthy.max(), 1.0)))
    if len(failing):
        qs |= set(np.quantile(failing, np.linspace(0.0, 1.0, 21)).tolist())
    cands = sorted({float(min(max(q, 0.05), TOP_RISK)) for q in qs} | {TOP_RISK})
    tail = evt.fit_tail(logit(healthy)) if len(healthy) else None

    def thresholds(w: float, c: float) -> Thresholds:
        return Thresholds(w, max(c, w), hysteresis=hysteresis_frac * w, dwell=dwell, cooldown=cooldown,
                          tail=tail)

    def replay(w: float, c: float) -> AlertStats:
        return replay_levels(ws, risk, thresholds(w, c), period_s, fail_horizon, failure_cells)

    def true_criticals(st: AlertStats) -> int:
        return st.criticals - st.false_criticals

    def warn_ok(w: float) -> bool:
        return replay(w, 1.0).false_per_asset_day <= budget_per_asset_day

    def crit_ok(c: float) -> bool:
        st = replay(warn, c)
        return bool(st.asset_days) and st.false_criticals / st.asset_days <= budget_per_asset_day / 5

    warn = _lowest(cands, warn_ok)
    share = 1.0 if tail is None else alarm_share(ws, risk, healthy, thresholds, period_s, fail_horizon,
                                                 failure_cells)
    if tail is not None:
        caught = replay(warn, 1.0).caught
        warn = _raise(cands, warn, budget_level(healthy, tail, budget_per_asset_day, period_s, share),
                      lambda w: replay(w, 1.0).caught >= caught)
    # Critical stays a level of its own above warning: at least the hysteresis band higher (half
    # the way to 1 near the top), or every warning would be a critical.
    floor = min(warn * (1.0 + hysteresis_frac), (warn + 1.0) / 2.0, TOP_RISK)
    crit = _lowest(sorted({v for v in cands if v >= floor} | {floor}), crit_ok)
    if tail is not None:
        kept = true_criticals(replay(warn, crit))
        crit = _raise(cands, crit, budget_level(healthy, tail, budget_per_asset_day / 5, period_s, share),
                      lambda c: true_criticals(replay(warn, c)) >= kept)
    if crit <= warn:  # both at the top (nothing healthy passes): warning just below
        warn = float(np.nextafter(crit, 0.0))
    return thresholds(warn, crit)


def _raise(cands: list[float], level: float, wanted: float, keeps: Callable[[float], bool]) -> float:
    """`level` raised towards `wanted`, as far as `keeps` holds (it holds at `level`): `wanted`
    itself if it does, else the highest candidate between the two that still keeps."""
    if wanted <= level or keeps(wanted):
        return max(level, wanted)
    between = [v for v in cands if level < v < wanted]
    # `_lowest` over the candidates from high to low finds the first (highest) that keeps.
    return _lowest([*between[::-1], level], keeps) if between else level


def budget_level(healthy: FloatArray, tail: Tail, budget_per_asset_day: float, period_s: float,
                 alarms_per_exceedance: float) -> float:
    """The risk a healthy window passes so rarely that the alarms it starts keep within the budget.

    Alarms per cell = P(risk > t) x alarms per window above t (`alarm_share`: exceedances come
    in runs, and dwell and hysteresis make one alarm of a run), so P(risk > t) = budget per cell
    / that share; t is read off the tail of logit(risk) (or its quantiles, for a loose budget).
    """
    per_cell = budget_per_asset_day * period_s / SECONDS_PER_DAY
    z = evt.level(logit(healthy), tail, per_cell / alarms_per_exceedance)
    return min(float(1.0 / (1.0 + np.exp(-min(max(z, -50.0), 50.0)))), TOP_RISK)


def alarm_share(ws: WindowSet, risk: FloatArray, healthy: FloatArray,
                thresholds: Callable[[float, float], Thresholds], period_s: float, fail_horizon: int,
                failure_cells: dict[int, list[int]]) -> float:
    """Alarms started per healthy window above a threshold, measured by the replay at the healthy
    risk's 99th percentile (high enough to be rare, low enough that validation shows many)."""
    t = float(np.quantile(healthy, 0.99))
    above = int((healthy >= t).sum())
    st = replay_levels(ws, risk, thresholds(t, 1.0), period_s, fail_horizon, failure_cells)
    return min(1.0, max(st.false_warnings, 1) / max(above, 1))


def _lowest(cands: list[float], ok: Callable[[float], bool]) -> float:
    """The lowest candidate that is ok, by bisection; the highest if none is."""
    lo, hi = 0, len(cands) - 1
    if not ok(cands[hi]):
        return cands[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(cands[mid]):
            hi = mid
        else:
            lo = mid + 1
    return cands[hi]


def pr_auc(scores: FloatArray, labels: npt.NDArray[np.float32]) -> float:
    """Area under the precision-recall curve (average precision)."""
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())
