"""Training windows shared out by asset among processes, drawn the same way whatever their number.

Each epoch the training assets are shuffled by (seed, epoch) and dealt to a fixed number V of
shards (shard v owns assets[v::V]); process r of W runs the shards v with v % W == r, so
each process reads only its own assets and no window is drawn twice in an epoch. A shard
loads its assets a group at a time (whole assets, about `hold` windows per `windows_of`
call) and draws each group in a random order; at step k it hands out its share of the
global batch, in proportion to the windows it owns, so every shard ends the epoch together.
The global batch of step k is the union of the shards' k-th draws whatever W is, which
makes a run on W processes train the same weights as one process (V must be a multiple of W).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training import distributed as dist
from training.labels import Inputs
from training.source import MemorySource, WindowSource

IntArray = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
# Validation windows are scored this many at a time (bounded memory, same sums in any chunking).
VAL_CHUNK = 1024


def as_source(data: Inputs | WindowSource) -> WindowSource:
    """A WindowSource for windows already in memory, or the source itself."""
    return MemorySource.of(data) if isinstance(data, Inputs) else data


def asset_index(source: WindowSource, data: Inputs) -> IntArray:
    """For each window of `data` (a `windows_of` result), the index of its asset in `source.assets`."""
    where = {name: i for i, name in enumerate(source.assets)}
    codes = np.array([where.get(name, -1) for name in data.ws.assets], dtype=np.int64)
    out: IntArray = codes[data.ws.asset] if len(data.ws) else np.empty(0, dtype=np.int64)
    if (out < 0).any():
        raise ValueError("a window source returned windows of an asset it does not list")
    return out


@dataclass(frozen=True)
class Shape:
    """Window length, forecast horizon and channels of a source's windows."""

    window: int
    horizon: int
    channels: int


@dataclass(frozen=True)
class Census:
    """Windows and failure windows per asset of a source, counted once; every process holds the same."""

    windows: IntArray
    fails: IntArray
    shape: Shape

    @property
    def total(self) -> int:
        return int(self.windows.sum())


def loads(source: WindowSource, assets: Sequence[int] | IntArray, hold: int) -> Iterator[Inputs]:
    """The windows of `assets`, a few whole assets per `windows_of` call: about `hold` windows each,
    judged from the windows per asset seen so far."""
    done, seen = 0, 0
    while done < len(assets):
        k = 1 if seen == 0 else max(1, int(hold * done // seen))
        data = source.windows_of([int(a) for a in assets[done:done + k]])
        done, seen = done + len(assets[done:done + k]), seen + len(data.ws)
        yield data


def census(source: WindowSource, ctx: dist.Dist, hold: int) -> Census:
    """Count each asset's windows (each process counts its share of the assets; the counts are summed)."""
    n = len(source.assets)
    counts = np.zeros((2, n))
    shape = np.zeros(3)
    for data in loads(source, np.arange(ctx.rank, n, ctx.world), hold):
        aid = asset_index(source, data)
        counts[0] += np.bincount(aid, minlength=n)
        counts[1] += np.bincount(aid, weights=data.ws.fail, minlength=n)
        if len(data.ws):
            shape = np.maximum(shape, [data.ws.window, data.ws.horizon, data.z.shape[1]])
    # One exchange: the counts, and the shape as seen by the processes that saw windows (all alike).
    tot = dist.all_reduce_sum(ctx, np.concatenate([counts.ravel(), shape, [float(shape.any())]]))
    counts, shape = tot[:2 * n].reshape(2, n), tot[2 * n:2 * n + 3] / max(tot[-1], 1.0)
    w, h, c = (round(float(v)) for v in shape)
    return Census(counts[0].astype(np.int64), counts[1].astype(np.int64), Shape(w, h, c))


@dataclass(frozen=True)
class Rows:
    """Windows drawn for one step, gathered: model inputs, targets, and which windows they are."""

    x: F32                  # [n, W, C] normalised windows (with input noise, when training)
    y: F32                  # [n, H, C] normalised forecast targets, zero where not has_target
    has_target: BoolArray   # [n]
    fail: F32               # [n] failure within the horizon
    rul: F32                # [n] RUL / cap, NaN where unknown
    ids: IntArray           # [n, 2] (asset index in the source, end cell)

    def __len__(self) -> int:
        return len(self.fail)

    def counts(self) -> npt.NDArray[np.float64]:
        """Rows, rows with forecast targets and rows with a known RUL: the loss's denominators."""
        return np.array([len(self), self.has_target.sum(), np.isfinite(self.rul).sum()], dtype=np.float64)

    @staticmethod
    def empty(shape: Shape) -> Rows:
        return Rows(np.zeros((0, shape.window, shape.channels), np.float32),
                    np.zeros((0, shape.horizon, shape.channels), np.float32), np.zeros(0, bool),
                    np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.int64))

    @staticmethod
    def concat(parts: Sequence[Rows], shape: Shape) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rows.empty(shape)
        if len(parts) == 1:
            return parts[0]
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                      ("x", "y", "has_target", "fail", "rul", "ids")))


@dataclass(frozen=True)
class _Loaded:
    """One group of assets' windows held by a shard, with their RUL targets and asset indices."""

    data: Inputs
    rul: F32
    aid: IntArray

    def rows(self, idx: IntArray) -> Rows:
        ws = self.data.ws
        ids = np.stack([self.aid[idx], ws.end_cell[idx]], axis=1)
        return Rows(self.data.x(idx), self.data.y(idx), ws.has_target[idx], ws.fail[idx], self.rul[idx], ids)


def loaded(source: WindowSource, data: Inputs, rul_cap: float) -> _Loaded:
    rul = data.ws.rul_target(rul_cap) / np.float32(rul_cap)
    return _Loaded(data, rul.astype(np.float32), asset_index(source, data))


def groups_of(assets: IntArray, sizes: IntArray, hold: int) -> list[IntArray]:
    """Consecutive assets with windows, grouped so that a group holds about `hold` windows at most
    (an asset larger than that is a group of its own)."""
    groups: list[list[int]] = []
    total = 0
    for a, size in zip(assets.tolist(), sizes.tolist(), strict=True):
        if size == 0:
            continue
        if not groups or total + size > hold:
            groups.append([])
            total = 0
        groups[-1].append(a)
        total += size
    return [np.array(g, dtype=np.int64) for g in groups]


class Shard:
    """One shard for one epoch: its assets loaded a group at a time, shuffled, drawn in steps.

    A group's windows are drawn in a random order; the step that runs out of them takes the
    rest from the next group. So a shard holds one group, two during that step, never more.
    """

    def __init__(self, source: WindowSource, groups: list[IntArray], budget: int, steps: int,
                 rul_cap: float, shape: Shape, rng: np.random.Generator, noise: float,
                 noise_rng: np.random.Generator) -> None:
        self.source, self.budget, self.steps, self.rul_cap, self.shape = source, budget, steps, rul_cap, shape
        self.groups = groups
        self.rng, self.noise, self.noise_rng = rng, noise, noise_rng
        self.loaded: dict[int, _Loaded] = {}
        # The windows still to draw, as (group, index in the group); groups follow each other.
        self.slot = np.empty(0, dtype=np.int64)
        self.local = np.empty(0, dtype=np.int64)
        self.next_group = 0

    def quota(self, step: int) -> int:
        """Windows this shard gives to step `step`: its budget spread evenly over the epoch's steps."""
        return (step + 1) * self.budget // self.steps - step * self.budget // self.steps

    def _load_next(self) -> None:
        g = self.next_group
        self.next_group += 1
        got = loaded(self.source, self.source.windows_of(self.groups[g].tolist()), self.rul_cap)
        self.loaded[g] = got
        self.slot = np.concatenate([self.slot, np.full(len(got.data.ws), g, dtype=np.int64)])
        self.local = np.concatenate([self.local, self.rng.permutation(len(got.data.ws))])

    def take(self, step: int) -> Rows:
        want = self.quota(step)
        while len(self.slot) < want and self.next_group < len(self.groups):
            self._load_next()
        slot, local = self.slot[:want], self.local[:want]
        self.slot, self.local = self.slot[want:], self.local[want:]
        # Groups come one after the other in the queue: each one's windows are contiguous.
        groups, starts = np.unique(slot, return_index=True)
        ends = np.append(starts[1:], len(slot))[:len(starts)]
        rows = Rows.concat([self.loaded[int(g)].rows(local[a:b])
                            for g, a, b in zip(groups.tolist(), starts.tolist(), ends.tolist(), strict=True)],
                           self.shape)
        first = int(self.slot[0]) if len(self.slot) else self.next_group
        self.loaded = {g: v for g, v in self.loaded.items() if g >= first}  # drop drawn-out groups
        if self.noise > 0 and len(rows):
            noise = self.noise_rng.standard_normal(rows.x.shape, dtype=np.float32) * np.float32(self.noise)
            rows = Rows(rows.x + noise, rows.y, rows.has_target, rows.fail, rows.rul, rows.ids)
        return rows


@dataclass(frozen=True)
class Plan:
    """How training windows are drawn: the same draws for every number of processes dividing `shards`.

    `hold`: windows a shard loads at a time (whole assets; it holds one load, two while it
    moves from one to the next).
    """

    shards: int
    hold: int
    batch_size: int
    windows_per_epoch: int
    seed: int
    input_noise: float = 0.0

    def check(self, world: int) -> None:
        if self.shards < 1 or self.hold < 1:
            raise ValueError(f"shards ({self.shards}) and shard windows ({self.hold}) must be at least 1")
        if self.shards % world:
            raise ValueError(f"--shards {self.shards} is not a multiple of the {world} processes; "
                             f"use a multiple of {world} (the same on every run that resumes this one)")

    def sizes(self, total: int) -> tuple[int, int]:
        """(windows drawn per epoch, steps per epoch)."""
        n = min(total, self.windows_per_epoch)
        return n, max(math.ceil(n / self.batch_size), 1)

    def owners(self, n_assets: int, epoch: int) -> list[IntArray]:
        """The assets of each shard in epoch `epoch`."""
        perm = np.random.default_rng([self.seed, epoch, 0]).permutation(n_assets)
        return [perm[v::self.shards] for v in range(self.shards)]

    def epoch(self, source: WindowSource, counts: Census, epoch: int, ctx: dist.Dist,
              rul_cap: float) -> Epoch:
        """This process's shards for epoch `epoch` (shard v runs on process v mod W)."""
        n, steps = self.sizes(counts.total)
        shards = []
        for v, assets in enumerate(self.owners(len(source.assets), epoch)):
            if v % ctx.world != ctx.rank:
                continue
            owned = int(counts.windows[assets].sum())
            budget = n * owned // max(counts.total, 1)
            shards.append(Shard(source, groups_of(assets, counts.windows[assets], self.hold), budget, steps,
                                rul_cap, counts.shape, np.random.default_rng([self.seed, epoch, 1, v]),
                                self.input_noise, np.random.default_rng([self.seed, epoch, 2, v])))
        return Epoch(steps, shards, counts.shape)


@dataclass(frozen=True)
class Epoch:
    """One process's part of an epoch: `batch(k)` is its share of global batch k."""

    steps: int
    shards: list[Shard]
    shape: Shape

    def batch(self, step: int) -> Rows:
        return Rows.concat([s.take(step) for s in self.shards], self.shape)


def validation_rows(source: WindowSource, counts: Census, ctx: dist.Dist, hold: int, cap: int,
                    rul_cap: float) -> Iterator[Rows]:
    """This process's share of the validation windows (assets dealt r::W), in chunks.

    At most about `cap` windows are scored in all: every k-th window of each asset, the same
    windows whatever the number of processes.
    """
    stride = max(1, math.ceil(counts.total / max(cap, 1)))
    mine = np.arange(ctx.rank, len(source.assets), ctx.world)
    for group in groups_of(mine, counts.windows[mine], hold):
        got = loaded(source, source.windows_of(group.tolist()), rul_cap)
        keep = np.flatnonzero(_position_in_asset(got.aid) % stride == 0)
        for k in range(0, len(keep), VAL_CHUNK):
            yield got.rows(keep[k:k + VAL_CHUNK])


def _position_in_asset(aid: IntArray) -> IntArray:
    """For each window, how many windows of the same asset come before it."""
    order = np.argsort(aid, kind="stable")
    sorted_aid = aid[order]
    first = np.searchsorted(sorted_aid, sorted_aid, side="left")
    pos = np.empty(len(aid), dtype=np.int64)
    pos[order] = np.arange(len(aid)) - first
    return pos
