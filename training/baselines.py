"""Per-asset baselines in training: whether to use them, each asset's, and windows against them.

An asset with training windows gets the baseline of the rows they cover (its own normal, as
the model file will carry it); any other asset (a validation asset split by asset) learns
one from its first cells exactly as the agent would (`agent.baseline.BaselineLearner`), and
its windows before that count for nothing, as they would not be scored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.baseline import BaselineLearner, robust_baseline, robust_spread
from agent.spec import Baseline, BaselinePolicy, ModelSpec
from training.labels import WindowSet, training_rows

BaselineKind = Literal["auto", "asset", "fleet"]
BASELINES: tuple[BaselineKind, ...] = ("auto", "asset", "fleet")
# `auto` gives each asset its own baseline when the assets' typical levels lie further apart
# than this many of their own spreads (the median over channels): readings in different units
# or ranges; not machines of one kind with some spread between them, which one model learns
# (the per-asset calibration of the signals takes care of the rest).
LEVELS_DIFFER = 10.0
# An asset the model file does not know is scored after a day of its own cells (plant data has
# daily cycles), but at least 10 windows and at most LEARN_MAX cells (memory while it learns).
LEARN_MAX = 1440
# Profiles (a baseline and score statistics per asset) go into the model file up to this many
# assets; beyond, every asset learns its baseline in the agent (training measures them the same
# way) and shares the fleet's score statistics.
MAX_PROFILES = 2000
# A baseline's scale never goes below this share of the fleet's typical spread of the channel,
# nor below this share of the channel's range over every training row (for a channel some
# assets never move, such as a counter of events one machine never had).
FLOOR_SHARE = 0.05
RANGE_SHARE = 0.01


@dataclass(frozen=True)
class Baselines:
    """Every asset's baseline: `known` ones go into the model file; `learned` ones are what the
    agent would learn, with the end cell of the first window it would score."""

    policy: BaselinePolicy
    known: dict[str, Baseline]
    learned: dict[str, tuple[Baseline, int]]


def _asset_rows(ws: WindowSet, mask: npt.NDArray[np.bool_]) -> dict[int, npt.NDArray[np.float64]]:
    """Per asset index, the raw rows that its windows in `mask` cover."""
    return {int(a): training_rows(ws.subset(mask & (ws.asset == a))) for a in np.unique(ws.asset[mask])}


def _levels(rows: dict[int, npt.NDArray[np.float64]], cols: list[int]
            ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per asset and channel: median and robust spread of the rows."""
    med, spread = [], []
    for x in rows.values():
        x = x[:, cols][np.isfinite(x[:, cols]).all(axis=1)]
        if len(x) == 0:
            continue
        med.append(np.median(x, axis=0))
        spread.append(robust_spread(x))
    return np.asarray(med), np.asarray(spread)


def levels_differ(ws: WindowSet, train: npt.NDArray[np.bool_], cols: list[int]) -> float:
    """How far apart the assets' levels lie, in their own spreads (median over channels; 0 for
    one asset): the spread of the asset medians over the typical spread within an asset."""
    rows = _asset_rows(ws, train)
    if len(rows) < 2 or not cols:
        return 0.0
    med, spread = _levels(rows, cols)
    q1, q3 = np.quantile(med, [0.25, 0.75], axis=0)
    between = np.maximum(q3 - q1, med.max(axis=0) - med.min(axis=0)) / 2  # robust for a few assets too
    within = np.median(spread, axis=0)
    ratio = np.where(within > 0, between / np.maximum(within, 1e-300), np.where(between > 0, np.inf, 0.0))
    return float(np.median(ratio))


def choose(kind: BaselineKind, ws: WindowSet, train: npt.NDArray[np.bool_], regime: tuple[int, ...]) -> bool:
    """Whether to give each asset its own baseline."""
    if kind != "auto":
        return kind == "asset"
    cols = [c for c in range(ws.cells.shape[1]) if c not in regime]
    return levels_differ(ws, train, cols) > LEVELS_DIFFER


def learn_cells(window: int, period_s: float) -> int:
    """How many cells an asset the model file does not know learns its baseline from."""
    return int(min(max(round(86_400.0 / period_s), 10 * window), max(LEARN_MAX, 10 * window)))


def fit(ws: WindowSet, train: npt.NDArray[np.bool_], regime: tuple[int, ...], period_s: float) -> Baselines:
    """Each asset's baseline: of its training rows, or learnt from its first cells as the agent would."""
    n_ch = ws.cells.shape[1]
    cols = [c for c in range(n_ch) if c not in regime]
    rows = _asset_rows(ws, train)
    _, spread = _levels(rows, cols)
    typical = np.zeros(n_ch)
    typical[cols] = np.median(spread, axis=0) if len(spread) else 0.0
    pooled = np.concatenate(list(rows.values())) if rows else np.zeros((1, n_ch))
    lo, hi = np.nanquantile(pooled, [0.001, 0.999], axis=0)
    level = np.abs(np.nanmedian(pooled, axis=0))
    floor = np.maximum.reduce([FLOOR_SHARE * typical, RANGE_SHARE * np.nan_to_num(hi - lo),
                               1e-6 * np.maximum(1.0, np.nan_to_num(level))])
    policy = BaselinePolicy(learn_cells(ws.window, period_s), tuple(cols), tuple(map(float, floor)))
    all_learn = len(ws.assets) > MAX_PROFILES
    known = {} if all_learn else {ws.assets[a]: robust_baseline(x, policy) for a, x in rows.items() if len(x)}
    learned = {ws.assets[a]: got for a in np.unique(ws.asset) if ws.assets[a] not in known
               and (got := learn(ws, int(a), policy)) is not None}
    return Baselines(policy, known, learned)


def for_model(ws: WindowSet, spec: ModelSpec) -> Baselines:
    """The baselines a model's agent would use on these windows: the file's, or learnt."""
    assert spec.baseline is not None, "the model has no per-asset baselines"
    known = {a: p.baseline for a, p in spec.profiles.items() if p.baseline is not None}
    learned = {ws.assets[a]: got for a in np.unique(ws.asset) if ws.assets[a] not in known
               and (got := learn(ws, int(a), spec.baseline)) is not None}
    return Baselines(spec.baseline, known, learned)


def learn(ws: WindowSet, a: int, policy: BaselinePolicy) -> tuple[Baseline, int] | None:
    """What the agent learns of asset `a` from its windows in event order: the baseline and the
    end cell of the first window it scores (None: too few cells)."""
    idx = np.flatnonzero(ws.asset == a)
    idx = idx[np.argsort(ws.end_cell[idx], kind="stable")]
    learner = BaselineLearner(policy)
    for i in idx:
        if learner.update(int(ws.end_cell[i]), ws.cells[ws.rows(np.array([i]))[0]]):
            assert learner.baseline is not None
            return learner.baseline, int(ws.end_cell[i])
    return None


def apply(ws: WindowSet, b: Baselines) -> WindowSet:
    """The windows against their assets' baselines; windows the agent would not score (an asset
    still learning, or with too little history to learn) are left out."""
    cells = ws.cells.copy()
    keep = np.ones(len(ws), dtype=bool)
    starts = np.unique(ws.first_row)
    bounds = dict(zip(starts.tolist(), [*starts[1:].tolist(), len(cells)], strict=True))
    for a in np.unique(ws.asset):
        name = ws.assets[a]
        mine = ws.asset == a
        first = int(ws.first_row[mine][0])
        if name in b.known:
            base = b.known[name]
        elif name in b.learned:
            base, ready = b.learned[name]
            keep &= ~mine | (ws.end_cell >= ready)
        else:
            keep &= ~mine
            continue
        block = slice(first, bounds[first])
        cells[block] = (cells[block] - np.asarray(base.center)) / np.asarray(base.scale)
    return replace(ws, cells=cells).subset(keep)
