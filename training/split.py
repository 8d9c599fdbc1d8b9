"""Train / validation / test splits: by asset, or by time within each asset.

By asset (`--split asset`), whole assets go to validation: the model is judged on machines it
never saw, which a fleet of many similar machines affords. By time (`--split time`), every
asset trains on its early part and is validated on its last part, after a gap of window +
horizon cells in which no window of either part lies: what one machine, or a handful, affords,
and what the model will meet there (the same machines, later). `auto` splits by asset when the
history has many assets or failures on enough of them to go round, else by time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from training.labels import WindowSet

SplitKind = Literal["asset", "time", "auto"]
SPLITS: tuple[SplitKind, ...] = ("auto", "asset", "time")
# `auto` splits by asset with this many assets or more, or with failures on this many assets or
# more (validation then still sees some); below both, by time.
ASSET_SPLIT_ASSETS = 20
ASSET_SPLIT_FAILING = 4
# The least a split may leave to each part, in windows (validation: enough healthy windows to
# estimate the surprise distribution and the tail its thresholds come from).
MIN_TRAIN_WINDOWS = 64
MIN_VAL_WINDOWS = 32


@dataclass(frozen=True)
class Split:
    """Assets by split (by asset: no asset in two parts), or each asset's cells by part (by time:
    `val_from[a]` and `test_from[a]` are the first cells of asset a's validation and test parts)."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str] = frozenset()
    val_from: dict[str, int] = field(default_factory=dict)
    test_from: dict[str, int] = field(default_factory=dict)
    gap: int = 0

    @property
    def kind(self) -> Literal["asset", "time"]:
        return "time" if self.val_from else "asset"

    def mask(self, ws: WindowSet, part: str) -> npt.NDArray[np.bool_]:
        """The windows of `part` ("train", "val" or "test"). By time, a window belongs to a part
        when all its cells and forecast targets do; those that straddle a cut belong to none."""
        names = np.array(ws.assets)[ws.asset] if len(ws) else np.array([], dtype=str)
        in_part = np.isin(names, sorted(getattr(self, part)))
        if not self.val_from:
            return in_part
        far = np.iinfo(np.int64).max // 4
        val_from = np.array([self.val_from.get(a, far) for a in ws.assets], dtype=np.int64)[ws.asset]
        test_from = np.array([self.test_from.get(a, far) for a in ws.assets], dtype=np.int64)[ws.asset]
        first = ws.end_cell - ws.window + 1
        last = ws.end_cell + ws.horizon
        if part == "train":
            keep = last < val_from - self.gap
        elif part == "val":
            keep = (first >= val_from) & (last < test_from - self.gap)
        else:
            keep = first >= test_from
        return in_part & keep


def split_by_asset(assets: tuple[str, ...], failing: set[str], val_fraction: float, seed: int,
                   test_fraction: float = 0.0) -> Split:
    """Split by asset into train, validation and (optionally) test, spreading failing assets over all.

    Failing and healthy assets are shuffled apart and cut in the same proportions, so
    every split sees failures whenever there are enough failing assets to go round.
    """
    rng = np.random.default_rng(seed)
    train: set[str] = set()
    val: set[str] = set()
    test: set[str] = set()
    for group in (sorted(a for a in assets if a in failing), sorted(a for a in assets if a not in failing)):
        order = [group[i] for i in rng.permutation(len(group))]
        k_test = round(len(order) * test_fraction)
        k_val = round(len(order) * val_fraction)
        wanted = 1 + (val_fraction > 0) + (test_fraction > 0)
        if len(order) >= wanted:  # each split gets one of the group when it can
            k_val = max(k_val, 1) if val_fraction > 0 else 0
            k_test = max(k_test, 1) if test_fraction > 0 else 0
            while k_val + k_test > len(order) - 1:
                if k_test >= k_val and k_test > 1:
                    k_test -= 1
                else:
                    k_val -= 1
        test.update(order[:k_test])
        val.update(order[k_test:k_test + k_val])
        train.update(order[k_test + k_val:])
    if not train or not val or (test_fraction > 0 and not test):
        raise ValueError(f"too few assets ({len(assets)}) to split into train, validation"
                         + (" and test" if test_fraction > 0 else "") + "; --split time validates on "
                         "each asset's last part instead")
    return Split(frozenset(train), frozenset(val), frozenset(test))


def split_assets(assets: tuple[str, ...], failing: set[str], val_fraction: float,
                 seed: int) -> tuple[set[str], set[str]]:
    """Split by asset into train and validation, spreading failing assets over both."""
    s = split_by_asset(assets, failing, val_fraction, seed)
    return set(s.train), set(s.val)


def split_by_time(ws: WindowSet, val_fraction: float, test_fraction: float = 0.0, period_s: float = 1.0
                  ) -> Split:
    """Each asset's windows in time order: the last `val_fraction` of its span validates, the
    last `test_fraction` after that tests, each part after a gap of window + horizon cells.

    Raises a ValueError saying how much more history is needed when a part would be too small.
    """
    gap = ws.window + ws.horizon
    val_from: dict[str, int] = {}
    test_from: dict[str, int] = {}
    for a, name in enumerate(ws.assets):
        ends = ws.end_cell[ws.asset == a]
        if len(ends) == 0:
            continue
        first, last = int(ends.min()), int(ends.max())
        span = last - first
        val_from[name] = last - round(span * (val_fraction + test_fraction)) + gap
        test_from[name] = (last - round(span * test_fraction) + gap if test_fraction > 0
                           else np.iinfo(np.int64).max // 4)
    names = frozenset(val_from)
    split = Split(names, names, names if test_fraction > 0 else frozenset(), val_from,
                  test_from if test_fraction > 0 else {}, gap)
    counts = {part: int(split.mask(ws, part).sum()) for part in ("train", "val", "test")}
    short = counts["train"] < MIN_TRAIN_WINDOWS or counts["val"] < MIN_VAL_WINDOWS or (
        test_fraction > 0 and counts["test"] < MIN_VAL_WINDOWS)
    if short:
        raise ValueError(too_short(ws, counts, val_fraction, test_fraction, period_s))
    return split


def too_short(ws: WindowSet, counts: dict[str, int], val_fraction: float, test_fraction: float,
              period_s: float) -> str:
    """Why a history is too short to split by time, and about how much more it takes."""
    parts = 1 + (test_fraction > 0)
    gap = ws.window + ws.horizon
    # Windows per part scale with the span: the span that gives each part its minimum, plus the gaps.
    need_span = max(MIN_TRAIN_WINDOWS / max(1 - val_fraction - test_fraction, 1e-6),
                    MIN_VAL_WINDOWS / max(min(val_fraction, test_fraction or 1.0), 1e-6)) + parts * 2 * gap
    have = max((int(np.ptp(ws.end_cell[ws.asset == a])) for a in np.unique(ws.asset)), default=0)
    more = max(int(np.ceil(need_span - have)), 1)
    return (f"history too short to train: {len(ws)} whole windows of {ws.window} cells "
            f"({counts['train']} for training, {counts['val']} for validation after a gap of {gap} cells); "
            f"one asset needs about {int(np.ceil(need_span)) + ws.window} whole cells, about "
            f"{more} more cells ({_duration(more * period_s)} at the {period_s:g} s period)")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def choose(kind: SplitKind, assets: tuple[str, ...], failing: set[str]) -> Literal["asset", "time"]:
    """The split `kind` asks for; `auto` by asset with many assets or enough failing ones."""
    if kind != "auto":
        return kind
    many = len(assets) >= ASSET_SPLIT_ASSETS or len(failing & set(assets)) >= ASSET_SPLIT_FAILING
    return "asset" if many else "time"
