"""Event-time windows: readings onto a grid of cells, gaps filled forward, shared with training.

A reading at event time `ts` lands in cell `floor(ts / period)`. Several readings in a cell
are aggregated (`last` by event time, or `mean`). A missing cell is filled with the channel's
last value when that value is at most `max_gap` cells old; older than that, the cell is not
whole and no window covering it is scored. Training builds its windows with `to_grid` and
`fill_forward`; the agent keeps a preallocated ring of recent cells per asset (`AssetWindow`)
and runs the very same `fill_forward` on it, so serving windows equal training windows.

Report by exception (`hold`): a source that sends a channel only when it moves past a deadband
leaves cells empty while the value stands. With a hold of `h` cells a channel's last value
fills up to max(max_gap, h) cells (training: `fill_forward(grid, max(max_gap, h))`); the agent
keeps each channel's newest value that left its ring, so the hold costs no ring space. A cut
(a Sparkplug death or birth, a bad quality) ends a channel's hold before the limit.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Aggregation = Literal["last", "mean"]
FloatArray = npt.NDArray[np.float64]


def cell_of(ts: float, period_s: float) -> int:
    """The grid cell that event time `ts` (epoch seconds) falls in."""
    # The epsilon keeps ts that are exact multiples of the period (as floats) in their own cell.
    return math.floor(ts / period_s + 1e-9)


def cells_of(ts: npt.NDArray[np.float64], period_s: float) -> npt.NDArray[np.int64]:
    """Vectorised `cell_of`."""
    return np.floor(ts / period_s + 1e-9).astype(np.int64)


def to_grid(
    cells: npt.NDArray[np.int64],
    channels: npt.NDArray[np.int64],
    values: FloatArray,
    ts: FloatArray,
    n_channels: int,
    agg: Aggregation = "last",
) -> tuple[int, FloatArray]:
    """Aggregate readings of one asset onto a dense grid.

    Returns the first cell and an array [n_cells, n_channels] with NaN where no reading fell.
    Duplicates (same channel and ts) count once, as the agent drops them.
    """
    if len(cells) == 0:
        return 0, np.empty((0, n_channels))
    key = np.stack([channels, ts.view(np.int64)], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    cells, channels, values, ts = cells[first], channels[first], values[first], ts[first]
    start = int(cells.min())
    n = int(cells.max()) - start + 1
    grid = np.full((n, n_channels), np.nan)
    row = cells - start
    if agg == "mean":
        sums = np.zeros((n, n_channels))
        counts = np.zeros((n, n_channels))
        np.add.at(sums, (row, channels), values)
        np.add.at(counts, (row, channels), 1.0)
        have = counts > 0
        grid[have] = sums[have] / counts[have]
    else:
        key = row * n_channels + channels
        order = np.lexsort((ts, key))
        key = key[order]
        latest = np.append(key[1:] != key[:-1], True)  # the last of each (cell, channel) run
        pick = order[latest]
        grid[row[pick], channels[pick]] = values[pick]
    return start, grid


def fill_forward(grid: FloatArray, max_gap: int) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Fill each channel's missing cells with its last value if at most `max_gap` cells old.

    Returns the filled grid and a per-cell mask: True where every channel has a value.
    """
    n, c = grid.shape
    have = ~np.isnan(grid)
    idx = np.where(have, np.arange(n)[:, None], -1)
    last = np.maximum.accumulate(idx, axis=0)
    age = np.arange(n)[:, None] - last
    usable = (last >= 0) & (age <= max_gap)
    filled = np.where(usable, grid[np.clip(last, 0, None), np.arange(c)[None, :]], np.nan)
    return filled.astype(np.float64), np.asarray(usable.all(axis=1), dtype=np.bool_)


def hold_cells(hold_s: float, period_s: float) -> int:
    """How many cells after its own a value may stand in for missing ones under a hold of `hold_s`."""
    return math.floor(hold_s / period_s + 1e-9) if hold_s > 0 else 0


_NONE_CELL = -(1 << 62)  # "no cell": older than any, so a value from it is never within reach


def fill_held(raw: FloatArray, first_cell: int, prior_v: FloatArray, prior_c: npt.NDArray[np.int64],
              reach: int, cut: npt.NDArray[np.int64] | None) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """`fill_forward` of cells first_cell.. with, per channel, a value from before them (`prior_v`
    from cell `prior_c`), and cuts: a channel's cell at or after its cut takes no value from
    before the cut.

    Without cuts, and with the prior value the newest one before `first_cell`, this is exactly
    `fill_forward(grid, reach)` over the whole history.
    """
    n, c = raw.shape
    have = ~np.isnan(raw)
    rows = np.arange(n)[:, None]
    last = np.maximum.accumulate(np.where(have, rows, -1), axis=0)
    cols = np.arange(c)[None, :]
    cell = first_cell + rows
    src = np.where(last >= 0, first_cell + last, prior_c[None, :])
    usable = cell - src <= reach
    if cut is not None:
        usable &= ~((cut[None, :] <= cell) & (src < cut[None, :]))
    values = np.where(last >= 0, raw[np.clip(last, 0, None), cols], prior_v[None, :])
    filled = np.where(usable, values, np.nan)
    return filled.astype(np.float64), np.asarray(usable.all(axis=1), dtype=np.bool_)


def sliding_windows(filled: FloatArray, ok: npt.NDArray[np.bool_], window: int) -> npt.NDArray[np.int64]:
    """Row indices e such that rows e-window+1..e are all whole (the windows training may use)."""
    if len(ok) < window:
        return np.empty(0, dtype=np.int64)
    bad = np.concatenate([[0], np.cumsum(~ok)])
    ends = np.arange(window - 1, len(ok))
    whole = bad[ends + 1] - bad[ends + 1 - window] == 0
    return np.asarray(ends[whole], dtype=np.int64)


_NEG_INF = -math.inf
_ZERO_COUNT = np.zeros(1, dtype=np.int32)


@functools.cache
def _tail_slots(capacity: int, window: int) -> tuple[npt.NDArray[np.int64], ...]:
    """Per ring slot, the slots of the `window` cells that end there (shared by every asset)."""
    return tuple(np.arange(end - window + 1, end + 1) % capacity for end in range(capacity))

SEEN_PER_CELL = 4  # `mean`: redeliveries of up to this many readings per cell are caught


class Update(IntEnum):
    """Outcome of writing one reading into an asset's window."""

    ACCEPTED = 0
    DUPLICATE = 1
    TOO_LATE = 2


@dataclass(frozen=True, slots=True)
class Closed:
    """A window closed by event time: its end cell, the filled window (None if a cell in it
    is not whole), and the event time of the newest reading in it."""

    end: int
    window: npt.NDArray[np.floating[Any]] | None
    newest_ts: float


@functools.cache
def _row(code: str, value: float, n: int) -> array[Any]:
    """A shared row of `n` copies of `value`, to reset a slot of a ring with one slice copy."""
    return array(code, [value]) * n


class AssetWindow:
    """Recent cells of one asset in a preallocated ring buffer, closed by event time.

    A cell closes once every channel has a value in it, or once a reading for a newer cell
    arrives. A closing cell's window is extracted at that moment and queued in `ready`, so
    every closed window is scored however fast readings arrive (a replay at 100x decides
    as real time does). Readings up to `lateness` cells behind the newest still land in
    their cell and count for later windows.

    Memory per asset is what the agent's footprint scales with (DESIGN: about 10 KiB an
    asset), so the rings are flat `array.array`s, indexed directly per reading, with numpy
    views made only where a whole window is read: an ndarray plus the memoryview that fast
    element access needs costs ~0.6 KB an array an asset over the data itself.
    """

    def __init__(
        self,
        n_channels: int,
        window: int,
        *,
        max_gap: int,
        lateness: int,
        stride: int = 1,
        agg: Aggregation = "last",
        precise: bool = False,
        hold: int = 0,
    ) -> None:
        self.n_channels = n_channels
        self.window = window
        self.max_gap = max_gap
        self.hold = 0
        self.reach = max_gap
        self.lateness = lateness
        self.stride = stride
        self.agg = agg
        # Room for the window, the look-back that forward filling needs, and late readings.
        self.capacity = window + max_gap + lateness + 1
        # `last` keeps a reading's value as it came, rounded once to float32, which is what the
        # model computes in (half the memory of float64). `mean` keeps a running average, which
        # float32 would round at every reading, so it stays float64; so does `precise` (a
        # channel whose offset dwarfs its spread, see `Normalisation.float32_exact`).
        wide = agg == "mean" or precise
        self._code = "d" if wide else "f"
        self._dtype = np.dtype(np.float64 if wide else np.float32)
        self._v = _row(self._code, math.nan, self.capacity * n_channels)[:]  # [capacity, C]
        # Event times are needed only while a cell still takes readings (duplicates, newest
        # wins, newest_ts of a closing cell): a ring of the newest lateness + 1 cells, float64
        # so that every distinct event time stays distinct.
        self._span = lateness + 1
        self._t = _row("d", _NEG_INF, self._span * n_channels)[:]  # [span, C]
        self._c = _row("q", -1, self.capacity)[:]  # the cell each slot holds, -1 for none
        self._filled = [0] * self._span  # channels with a value, per slot of `_t`
        # Readings per cell and channel, which only `mean` counts: with `last` a shared read-only
        # view of zeros (checkpoints still carry the array), ~2.6 KB less per asset.
        self._count = (np.zeros((self.capacity, n_channels), dtype=np.int32) if agg == "mean"
                       else np.broadcast_to(_ZERO_COUNT, (self.capacity, n_channels)))
        # `mean` must never average a redelivered reading in, so it remembers the last few
        # event times per cell and channel (`last` needs only the newest, kept in _t).
        self._seen = (np.full((self.capacity, n_channels, SEEN_PER_CELL), np.nan)
                      if agg == "mean" else None)
        self.newest = -1
        self.first = -1  # the first cell ever held: no window before first + window - 1
        self.last_closed = -1
        self.ready: list[Closed] = []
        self._tails = _tail_slots(self.capacity, window)
        # A hold beyond the ring's look-back: per channel the newest value (and its cell) that
        # left the ring. Cuts (per channel, the cell from which older values no longer fill) and
        # channels marked bad (with the event time of the bad reading) are made when first needed.
        self._held_v: array[float] | None = None
        self._held_c: array[int] | None = None
        self.set_hold(hold)
        self._cut: array[int] | None = None
        self.bad_since: dict[int, float] | None = None  # channel -> event time of its bad reading

    def set_hold(self, hold: int) -> None:
        """Report by exception: a value stands in up to max(max_gap, hold) cells after its own, and
        the cells of a gap in the asset's readings close as windows too (their values are held)."""
        self.hold = hold
        self.reach = max(self.max_gap, hold)
        if self.reach <= self.max_gap:
            self._held_v = self._held_c = None  # the ring's look-back is enough
        elif self._held_v is None:
            self._held_v = _row("d", math.nan, self.n_channels)[:]
            self._held_c = _row("q", _NONE_CELL, self.n_channels)[:]

    @property
    def _values(self) -> npt.NDArray[np.floating[Any]]:
        """The values ring as an array [capacity, C] (a view: no copy)."""
        return np.frombuffer(self._v, dtype=self._dtype).reshape(self.capacity, self.n_channels)

    @property
    def _cell(self) -> npt.NDArray[np.int64]:
        return np.frombuffer(self._c, dtype=np.int64)

    def update(self, cell: int, channel: int, ts: float, value: float) -> Update:
        """Write one reading (already validated) into its cell; closed windows go to `ready`."""
        if cell > self.newest:
            if self.newest > self.last_closed:
                self._close(self.newest)  # a newer cell starts: the newest one is done
            if self.hold and cell > self.newest + 1 and self.newest >= 0:
                self._close_gap(cell)
            self._advance(cell)
        elif cell < self.newest - self.lateness:
            return Update.TOO_LATE
        elif cell < self.first:
            self.first = cell  # a late reading from before the first cell seen
        slot = cell % self.capacity
        if self._c[slot] != cell:  # a late reading for a cell that never had one
            self._clear(slot, cell)
        n_channels = self.n_channels
        i = slot * n_channels + channel
        r = cell % self._span
        j = r * n_channels + channel
        held = self._t[j]
        if ts == held:
            return Update.DUPLICATE
        if self._seen is not None:
            seen = self._seen[slot, channel]
            if (seen == ts).any():
                return Update.DUPLICATE
            n = self._count[slot, channel]
            seen[n % SEEN_PER_CELL] = ts
            prev = self._v[i] if n else 0.0
            self._v[i] = prev + (value - prev) / (n + 1)
            self._count[slot, channel] = n + 1
            self._t[j] = max(ts, held)
        elif ts > held:
            self._v[i] = value
            self._t[j] = ts
        if held == _NEG_INF:
            self._filled[r] += 1
            if (cell == self.newest and cell > self.last_closed
                    and self._filled[r] == n_channels):
                self._close(cell)
        return Update.ACCEPTED

    def update_cell(self, cell: int, ts: float, channels: list[int], values: list[float],
                    rejected: list[Update], rejected_at: list[int] | None = None) -> int:
        """`update` for readings of one cell and event time, in their order, with the same outcome.

        Returns how many were accepted; the outcome of each rejected one goes to `rejected`,
        and, given an empty `rejected_at`, its position in `channels` there (for recording).
        The cell's bookkeeping is done once rather than per reading.
        """
        if not channels:
            return 0
        if self._seen is not None or len(channels) == 1:  # `mean`, or one reading: no gain here
            accepted = 0
            for channel, value in zip(channels, values, strict=True):
                res = self.update(cell, channel, ts, value)
                if res is Update.ACCEPTED:
                    accepted += 1
                else:
                    rejected.append(res)
                    if rejected_at is not None:  # position = readings taken so far, either way
                        rejected_at.append(accepted + len(rejected_at))
            return accepted
        if cell > self.newest:
            if self.newest > self.last_closed:
                self._close(self.newest)
            if self.hold and cell > self.newest + 1 and self.newest >= 0:
                self._close_gap(cell)
            self._advance(cell)
        elif cell < self.newest - self.lateness:
            rejected.extend([Update.TOO_LATE] * len(channels))
            if rejected_at is not None:
                rejected_at.extend(range(len(channels)))
            return 0
        elif cell < self.first:
            self.first = cell
        slot = cell % self.capacity
        fresh = self._c[slot] != cell
        if fresh:
            self._clear(slot, cell)
        t, v, filled = self._t, self._v, self._filled
        n_channels = self.n_channels
        r = cell % self._span
        base_v, base_t = slot * n_channels, r * n_channels
        if fresh and len(set(channels)) == len(channels):
            # The cell's first readings, each channel once (a json-multi message): nothing is
            # held to compare with, every one is taken, and the cell is whole at the last.
            for channel, value in zip(channels, values, strict=True):
                v[base_v + channel] = value
                t[base_t + channel] = ts
            filled[r] = len(channels)
            if cell == self.newest and cell > self.last_closed and filled[r] == n_channels:
                self._close(cell)
            return len(channels)
        accepted = 0
        for channel, value in zip(channels, values, strict=True):
            held = t[base_t + channel]
            if ts == held:
                rejected.append(Update.DUPLICATE)
                if rejected_at is not None:
                    rejected_at.append(accepted + len(rejected_at))
                continue
            if ts > held:
                v[base_v + channel] = value
                t[base_t + channel] = ts
            accepted += 1
            if held == _NEG_INF:
                filled[r] += 1
                # Closed at the very reading that completes it, as `update` does.
                if cell == self.newest and cell > self.last_closed and filled[r] == n_channels:
                    self._close(cell)
        return accepted

    def _close(self, end: int) -> None:
        if end - self.first + 1 < self.window:
            return  # still warming up: not enough cells yet for a first window (not stale)
        if self.last_closed >= 0 and end - self.last_closed < self.stride:
            return
        self.last_closed = end
        self.ready.append(Closed(end, self.extract(end), self.newest_ts(end)))

    def _close_gap(self, cell: int) -> None:
        """With a hold: close the cells between the newest and `cell`, where no reading fell.

        Their windows are whole while every channel's value holds. At most `capacity` of them:
        past the first `window` cells of a gap every window is the same held rows, so a longer
        silence adds nothing but copies (they share one array).
        """
        old = self.newest
        whole_until = self._held_until(old)
        same: npt.NDArray[np.floating[Any]] | None = None
        for end in range(old + 1, min(cell, old + 1 + self.capacity)):
            if end - self.first + 1 < self.window:
                continue
            if self.last_closed >= 0 and end - self.last_closed < self.stride:
                continue
            self.last_closed = end
            if end > whole_until:
                window = None  # some channel's hold ran out (or was cut) in the gap
            elif same is not None:
                window = same
            else:
                window = self.extract(end)
                if end - old >= self.window:
                    same = window  # every row is a held one from here on
            self.ready.append(Closed(end, window, math.nan))

    def _held_until(self, newest: int) -> int:
        """The last cell after `newest` that every channel's held value still fills, when no
        reading falls after `newest`."""
        raw = self.cells(newest, self.capacity)
        have = ~np.isnan(raw)
        rows = np.where(have.any(axis=0), self.capacity - 1 - np.argmax(have[::-1], axis=0), -1)
        src = np.where(rows >= 0, newest - self.capacity + 1 + rows,
                       _NONE_CELL if self._held_c is None else np.frombuffer(self._held_c, dtype=np.int64))
        until = src + self.reach
        if self._cut is not None:
            cut = np.frombuffer(self._cut, dtype=np.int64)
            until = np.where(cut > src, np.minimum(until, cut - 1), until)
        return int(until.min())

    def take(self) -> list[Closed]:
        """The windows closed since the last call, oldest first."""
        out, self.ready = self.ready, []
        return out

    def _clear(self, slot: int, cell: int) -> None:
        n = self.n_channels
        self._c[slot] = cell
        self._v[slot * n : (slot + 1) * n] = _row(self._code, math.nan, n)
        r = cell % self._span
        self._t[r * n : (r + 1) * n] = _row("d", _NEG_INF, n)
        self._filled[r] = 0
        if self._seen is not None:
            self._count[slot] = 0
            self._seen[slot] = np.nan

    def _advance(self, cell: int) -> None:
        if self.newest < 0:
            self.first = cell
        held = self._held_v is not None
        if self.newest < 0 or cell - self.newest >= self.capacity:
            if held:
                for c in range(max(self.newest - self.capacity + 1, 0), self.newest + 1):
                    if self._c[c % self.capacity] == c:
                        self._evict(c % self.capacity)
            self._c[:] = _row("q", -1, self.capacity)
        else:
            for c in range(self.newest + 1, cell + 1):
                slot = c % self.capacity
                if held and self._c[slot] >= 0:
                    self._evict(slot)  # the cell `capacity` before `c` leaves the ring
                self._c[slot] = -1
        self.newest = cell

    def _evict(self, slot: int) -> None:
        """Keep the values of the cell leaving `slot` as the newest ones that left the ring."""
        assert self._held_v is not None and self._held_c is not None
        n = self.n_channels
        cell = self._c[slot]
        base = slot * n
        values, held_v, held_c = self._v, self._held_v, self._held_c
        for ch in range(n):
            v = values[base + ch]
            if v == v:  # not NaN: the channel had a value in that cell
                held_v[ch] = v
                held_c[ch] = cell

    # -- report by exception: cuts and bad quality ------------------------------------------------

    def cut(self, cell: int, channels: Iterable[int] | None = None) -> None:
        """End the hold of `channels` (all by default) at `cell`: from `cell` on, their missing
        cells are filled only from values at or after it (a death, a birth, a bad quality)."""
        if self._cut is None:
            self._cut = _row("q", _NONE_CELL, self.n_channels)[:]
        for ch in range(self.n_channels) if channels is None else channels:
            if cell > self._cut[ch]:
                self._cut[ch] = cell

    def mark_bad(self, channel: int, cell: int, ts: float) -> None:
        """A reading of bad quality at `ts`: the channel stops holding and is degraded until a
        good reading newer than `ts`."""
        self.cut(cell, (channel,))
        if self.bad_since is None:
            self.bad_since = {}
        self.bad_since[channel] = max(ts, self.bad_since.get(channel, -math.inf))

    def mark_good(self, channels: Iterable[int], ts: float) -> None:
        """Readings taken at `ts`: a channel marked bad before `ts` is good again."""
        bad = self.bad_since
        if bad:
            for ch in channels:
                if ch in bad and ts > bad[ch]:
                    del bad[ch]

    @property
    def degraded(self) -> list[int]:
        """Channels whose newest quality is bad, in channel order."""
        return sorted(self.bad_since) if self.bad_since else []

    def cells(self, end: int, n: int) -> FloatArray:
        """Raw aggregated values of cells end-n+1..end, NaN where nothing is held."""
        wanted = np.arange(end - n + 1, end + 1)
        slots = wanted % self.capacity
        out = np.asarray(self._values[slots], dtype=np.float64)  # fancy indexing copies
        out[self._cell[slots] != wanted] = np.nan
        return out

    def extract(self, end: int) -> npt.NDArray[np.floating[Any]] | None:
        """The filled window ending at cell `end`, or None if some cell in it is not whole.

        In the ring's dtype (float32 for `last`) when every cell is held as it is; float64 when
        cells had to be filled forward.
        """
        w, cap, n = self.window, self.capacity, self.n_channels
        if end <= self.newest and end - w >= self.newest - cap:
            # Every slot holds -1 or a cell of the last `capacity` (`_advance` clears a slot as
            # the newest cell passes it), so the window's slots each hold -1 or the very cell
            # wanted: no -1 means all are there. Two slices of the flat rings, no index arrays.
            s0 = (end - w + 1) % cap
            if s0 + w <= cap:
                cells, values = self._c[s0 : s0 + w], self._v[s0 * n : (s0 + w) * n]
            else:
                cells = self._c[s0:] + self._c[: s0 + w - cap]
                values = self._v[s0 * n :] + self._v[: (s0 + w - cap) * n]
            if -1 not in cells:
                tail = np.frombuffer(values, dtype=self._dtype).reshape(w, n)
                if not np.isnan(tail).any():  # the common case: every cell held, nothing to fill
                    return tail
        slots = self._tails[end % self.capacity]
        if (self._cell[slots] == np.arange(end - self.window + 1, end + 1)).all():
            tail = np.asarray(self._values[slots], dtype=np.float64)
            if not np.isnan(tail).any():  # the common case: every cell held, nothing to fill
                return tail
        if self._held_v is not None or self._cut is not None:
            return self._extract_held(end)
        raw = self.cells(end, self.window + self.max_gap)
        tail = raw[-self.window :]
        if not np.isnan(tail).any():  # the common case: nothing to fill
            return tail
        filled, ok = fill_forward(raw, self.max_gap)
        if not ok[-self.window :].all():
            return None
        return filled[-self.window :]

    def _extract_held(self, end: int) -> FloatArray | None:
        """`extract` with a hold or cuts: every ring cell up to `end`, and before them the values
        that left the ring, filled up to `reach` cells and never across a cut."""
        oldest = max(self.newest - self.capacity + 1, 0)
        n = end - oldest + 1
        raw = self.cells(end, n)
        tail = raw[-self.window :]
        if not np.isnan(tail).any():
            return tail
        if self._held_v is not None and self._held_c is not None:
            prior_v = np.frombuffer(self._held_v, dtype=np.float64)
            prior_c = np.frombuffer(self._held_c, dtype=np.int64)
        else:
            prior_v = np.full(self.n_channels, np.nan)
            prior_c = np.full(self.n_channels, _NONE_CELL, dtype=np.int64)
        cut = None if self._cut is None else np.frombuffer(self._cut, dtype=np.int64)
        filled, ok = fill_held(raw, oldest, prior_v, prior_c, self.reach, cut)
        if not ok[-self.window :].all():
            return None
        return filled[-self.window :]

    def newest_ts(self, end: int) -> float:
        """Event time of the newest reading held in cells up to `end` (NaN if none).

        Event times are kept for the cells that still take readings (newest - lateness to
        newest) only; windows close, and stale notices are dated, at the newest cell.
        """
        n = self.n_channels
        for cell in range(end, max(end - self.capacity, self.newest - self.lateness - 1, -1), -1):
            if self._c[cell % self.capacity] == cell:
                r = cell % self._span
                newest = max(self._t[r * n : (r + 1) * n])  # an empty channel holds -inf
                if newest > _NEG_INF:
                    return float(newest)
        return float("nan")

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Arrays and counters a checkpoint needs to resume this window exactly."""
        arrays = {"values": self._values.copy(),
                  "ts": np.frombuffer(self._t, dtype=np.float64).reshape(self._span, self.n_channels).copy(),
                  "count": self._count, "cell": self._cell.copy(),
                  "filled": np.asarray(self._filled, dtype=np.int32)}
        if self._seen is not None:
            arrays["seen"] = self._seen
        if self._held_v is not None and self._held_c is not None:
            arrays["held_v"] = np.frombuffer(self._held_v, dtype=np.float64).copy()
            arrays["held_c"] = np.frombuffer(self._held_c, dtype=np.int64).copy()
        if self._cut is not None:
            arrays["cut"] = np.frombuffer(self._cut, dtype=np.int64).copy()
        if self.bad_since:
            arrays["bad"] = np.array(sorted(self.bad_since.items()), dtype=np.float64)
        return arrays, {"newest": self.newest, "first": self.first, "last_closed": self.last_closed}

    def restore(self, arrays: dict[str, np.ndarray], counters: dict[str, int]) -> None:
        """Resume from `state()` arrays; also from those of earlier versions (float64 values,
        event times and fill counts for every slot), converted."""
        shape = (self.capacity, self.n_channels)
        values, ts, cell = arrays["values"], arrays["ts"], arrays["cell"]
        filled = arrays["filled"]
        if values.shape != shape or cell.shape != (self.capacity,):
            raise ValueError("window shape differs from the checkpoint's")
        newest = int(counters["newest"])
        if ts.shape == shape and filled.shape == (self.capacity,):
            # Written before event times were kept for recent cells only: keep those rows.
            ring = np.full((self._span, self.n_channels), -np.inf)
            counts = np.zeros(self._span, dtype=np.int64)
            for c in range(max(newest - self.lateness, 0), newest + 1):
                if cell[c % self.capacity] == c:
                    ring[c % self._span] = ts[c % self.capacity]
                    counts[c % self._span] = filled[c % self.capacity]
            ts, filled = ring, counts
        elif ts.shape != (self._span, self.n_channels) or filled.shape != (self._span,):
            raise ValueError("window shape differs from the checkpoint's")
        self._v = array(self._code, np.ascontiguousarray(values, dtype=self._dtype).tobytes())
        self._t = array("d", np.ascontiguousarray(ts, dtype=np.float64).tobytes())
        self._c = array("q", np.ascontiguousarray(cell, dtype=np.int64).tobytes())
        self._filled = [int(x) for x in filled]
        self._count = arrays["count"]
        if self._seen is not None and "seen" in arrays:
            self._seen = arrays["seen"]
        # Report by exception (checkpoints without them: nothing held beyond the ring, no cuts).
        n = self.n_channels
        if self._held_v is not None and arrays.get("held_v", np.empty(0)).shape == (n,):
            self._held_v = array("d", np.ascontiguousarray(arrays["held_v"], dtype=np.float64).tobytes())
            self._held_c = array("q", np.ascontiguousarray(arrays["held_c"], dtype=np.int64).tobytes())
        if arrays.get("cut", np.empty(0)).shape == (n,):
            self._cut = array("q", np.ascontiguousarray(arrays["cut"], dtype=np.int64).tobytes())
        bad = arrays.get("bad")
        if bad is not None and bad.ndim == 2 and bad.shape[1] == 2:
            self.bad_since = {int(ch): float(ts) for ch, ts in bad if 0 <= int(ch) < n}
        self.newest, self.first = newest, counters["first"]
        self.last_closed = counters["last_closed"]
