"""Histories larger than memory: one streaming pass into a gridded cache on disk, windows by asset.

Pass 1 (`_Spill`) reads the history in record batches with the readers `load_history` uses
(a file, or a folder of Parquet files, long or wide) and codes the names. Readings wait in a
buffer; whenever it would pass `budget` readings it is spilled: each asset's readings are
appended to that asset's segment file in the work folder (an external partition by asset,
in reading order). Pass 2 takes one asset at a time: its segment is read back, put on the
grid with the agent's `to_grid` exactly as `load_history` does, and appended to one cells
file with an index (asset -> start cell, offset, cells). When the sample period is not
given, it is the median gap, counted asset by asset in between.

`StreamSource` builds any assets' windows from the cache with `build_windows` on a History
of just those assets, so cells and labels are those of the in-memory path. `fit_statistics`
fits the normalisation (and regimes) on the training assets' rows, written once to a rows
file and read back in blocks by `training.regimes.fit_blocks`: the same fit as in memory.

Memory: the buffer (`budget` readings, about 32 bytes each, twice that while spilling) in
pass 1; one asset's history in pass 2 and whenever windows are built; never the whole history.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from agent.errors import DataError
from agent.spec import Normalisation
from agent.windows import Aggregation, cells_of, to_grid
from training import readers
from training.data import (
    NO_PERIOD,
    AssetSeries,
    Coded,
    Event,
    Format,
    History,
    Names,
    channel_codes,
    read_coded,
    series_gaps,
)
from training.labels import Inputs, WindowSet, build_windows, quantiles_of, training_rows
from training.regimes import Scaling, fit_blocks
from training.source import WindowSource

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# One reading in a segment file: 20 bytes, the asset being the file.
SEGMENT = np.dtype([("ts", "<f8"), ("channel", "<i4"), ("value", "<f8")])
DEFAULT_BUDGET = 2_000_000        # readings held in memory in pass 1 (~64 MB)
ROW_BLOCK = 1 << 18               # training rows per block when read back for the fit
MAX_DISTINCT_GAPS = 1 << 20       # period inference keeps a count per distinct gap
CELLS_FILE, INDEX_FILE, ROWS_FILE = "cells.f64", "index.json", "train_rows.f64"


@dataclass(frozen=True)
class Windowing:
    """How windows are cut and labelled (`build_windows`'s options)."""

    window: int
    horizon: int
    fail_horizon: int
    max_gap: int
    pad_start: bool = False

    def build(self, history: History, events: list[Event]) -> WindowSet:
        return build_windows(history, events, window=self.window, horizon=self.horizon,
                             fail_horizon=self.fail_horizon, max_gap=self.max_gap, pad_start=self.pad_start)


@dataclass(frozen=True)
class CachedAsset:
    """Where one asset's grid lies in the cells file."""

    name: str
    start_cell: int
    offset: int        # its first row in the cells file
    cells: int


@dataclass(frozen=True)
class LoaderStats:
    """What pass 1 and pass 2 did, for benchmarks and the memory bound's tests."""

    readings: int
    pass1_s: float
    pass2_s: float
    spills: int
    peak_buffer: int   # the most readings held in memory at once in pass 1
    budget: int


@dataclass(frozen=True)
class GridCache:
    """A history gridded per asset on disk: `series`/`history` read back only the assets asked for."""

    folder: Path
    channels: tuple[str, ...]
    period_s: float
    fingerprint: str
    assets: tuple[CachedAsset, ...]
    stats: LoaderStats

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.assets)

    def entry(self, name: str) -> CachedAsset:
        return self.assets[self._index[name]]

    def series(self, name: str) -> AssetSeries:
        a = self.entry(name)
        c = len(self.channels)
        grid = np.fromfile(self.folder / CELLS_FILE, dtype=np.float64, count=a.cells * c,
                           offset=a.offset * c * 8).reshape(a.cells, c)
        return AssetSeries(a.name, a.start_cell, grid)

    def history(self, names: Sequence[str]) -> History:
        """A History of just these assets (in this order), as `load_history` would grid them."""
        return History(self.channels, self.period_s, tuple(self.series(n) for n in names), self.fingerprint)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {a.name: i for i, a in enumerate(self.assets)}

    def save(self) -> None:
        """Write the index beside the cells, so other processes can `open` the cache."""
        meta = {"channels": self.channels, "period_s": self.period_s, "fingerprint": self.fingerprint,
                "assets": [asdict(a) for a in self.assets], "stats": asdict(self.stats)}
        (self.folder / INDEX_FILE).write_text(json.dumps(meta))

    @classmethod
    def open(cls, folder: Path) -> GridCache:
        meta = json.loads((folder / INDEX_FILE).read_text())
        return cls(folder, tuple(meta["channels"]), float(meta["period_s"]), meta["fingerprint"],
                   tuple(CachedAsset(**a) for a in meta["assets"]), LoaderStats(**meta["stats"]))


@dataclass
class _Spill:
    """Pass 1's buffer: readings by asset, appended to per-asset segment files when it is full."""

    folder: Path
    budget: int
    buffer: list[Coded] = field(default_factory=list)
    held: int = 0
    peak: int = 0
    spills: int = 0
    pairs: set[tuple[int, int]] = field(default_factory=set)   # (asset, channel) codes seen

    def add(self, c: Coded) -> None:
        if len(c) == 0:
            return
        key = np.unique(c.asset * (1 << 32) + c.channel)
        self.pairs.update(zip((key >> 32).tolist(), (key & 0xFFFFFFFF).tolist(), strict=True))
        if self.held + len(c) > self.budget:
            self.flush()
        if len(c) > self.budget:   # a batch larger than the whole budget goes straight to disk
            self._write([c])
            return
        self.buffer.append(c)
        self.held += len(c)
        self.peak = max(self.peak, self.held)

    def flush(self) -> None:
        if self.buffer:
            self._write(self.buffer)
        self.buffer, self.held = [], 0

    def segment(self, asset: int) -> Path:
        return self.folder / f"{asset}.seg"

    def _write(self, parts: list[Coded]) -> None:
        asset = np.concatenate([p.asset for p in parts])
        # Stable: each asset's readings keep their reading order, as in `load_history`.
        order = np.argsort(asset, kind="stable")
        rec = np.empty(len(order), dtype=SEGMENT)
        rec["ts"] = np.concatenate([p.ts for p in parts])[order]
        rec["channel"] = np.concatenate([p.channel for p in parts])[order]
        rec["value"] = np.concatenate([p.value for p in parts])[order]
        asset = asset[order]
        starts = np.flatnonzero(np.r_[True, asset[1:] != asset[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], len(asset)], strict=True):
            with self.segment(int(asset[lo])).open("ab") as f:
                rec[lo:hi].tofile(f)
        self.spills += 1


def build_cache(path: Path, work: Path, *, fmt: Format = "long", period_s: float | None = None,
                channels: tuple[str, ...] | None = None, agg: Aggregation = "last",
                budget: int = DEFAULT_BUDGET, progress: bool = False) -> GridCache:
    """Stream a history (file or folder) into a gridded cache in `work` (created; must be empty).

    Gives the cells `load_history` gives for the same arguments, holding at most `budget`
    readings in memory at once while reading. `progress`: a bar per pass on stderr.
    """
    path = Path(path)
    if budget < 1:
        raise ValueError(f"the spill budget must be at least one reading, got {budget}")
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise ValueError(f"{work}: the work folder for the history cache must be empty")
    (work / "segments").mkdir()
    t0 = time.monotonic()
    names = Names()
    spill = _Spill(work / "segments", budget)
    readings = 0
    # Minutes on a large history: say how far each pass is.
    with tqdm(desc="reading history", unit=" readings", unit_scale=True, disable=not progress,
              file=sys.stderr, leave=False) as bar:
        for chunk in read_coded(path, fmt, names):
            spill.add(chunk)
            readings += len(chunk)
            bar.update(len(chunk))
    spill.flush()
    t1 = time.monotonic()
    if not spill.pairs:
        raise DataError(f"{path}: no rows")
    want, remap = channel_codes(path, fmt, names, channels)
    asset_names = names.asset_list()
    kept = sorted({asset_names[a] for a, c in spill.pairs if remap[c] >= 0})

    def readings_of(name: str) -> tuple[FloatArray, IntArray, FloatArray]:
        rec = np.fromfile(spill.segment(names.assets[name]), dtype=SEGMENT)
        chan = remap[rec["channel"]]
        keep = chan >= 0
        return rec["ts"][keep], chan[keep], rec["value"][keep]

    if period_s is None:
        period_s = _median_gap(series_gaps(ts, chan) for ts, chan, _ in map(readings_of, kept))
    entries = []
    offset = 0
    with (work / CELLS_FILE).open("wb") as out:
        for name in tqdm(kept, desc="gridding assets", unit=" assets", disable=not progress,
                         file=sys.stderr, leave=False):
            ts, chan, values = readings_of(name)
            spill.segment(names.assets[name]).unlink()
            start, grid = to_grid(cells_of(ts, period_s), chan, values, ts, len(want), agg)
            np.ascontiguousarray(grid, dtype=np.float64).tofile(out)
            entries.append(CachedAsset(name, start, offset, len(grid)))
            offset += len(grid)
    for seg in (work / "segments").iterdir():   # assets with none of the channels asked for
        seg.unlink()
    (work / "segments").rmdir()
    stats = LoaderStats(readings, t1 - t0, time.monotonic() - t1, spill.spills, spill.peak, budget)
    cache = GridCache(work, want, float(period_s), readers.fingerprint(*readers.files(path)),
                      tuple(entries), stats)
    cache.save()
    return cache


def _median_gap(per_asset: Iterator[FloatArray]) -> float:
    """`infer_period` over gaps that arrive asset by asset: an exact median from counts of distinct gaps."""
    values, counts = np.empty(0), np.empty(0, dtype=np.int64)
    for gaps in per_asset:
        u, c = np.unique(gaps, return_counts=True)
        values, inverse = np.unique(np.concatenate([values, u]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, c]).astype(np.float64)).astype(np.int64)
        if len(values) > MAX_DISTINCT_GAPS:
            raise DataError(f"cannot infer the sample period in bounded memory: over {MAX_DISTINCT_GAPS} "
                            "distinct gaps between readings; pass --period")
    n = int(counts.sum())
    if n == 0:
        raise DataError(NO_PERIOD)
    upto = np.cumsum(counts)
    at = values[np.searchsorted(upto, [(n - 1) // 2, n // 2], side="right")]
    return float((at[0] + at[1]) / 2) if n % 2 == 0 else float(at[1])


def events_by_asset(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for e in events:
        out.setdefault(e.asset, []).append(e)
    return out


@dataclass(frozen=True)
class TrainStats:
    """What fitting needs to know of the training windows, gathered asset by asset."""

    norm: Normalisation
    quantiles: tuple[tuple[float, ...], ...]
    windows: int
    positives: int          # windows with a failure within the horizon
    rul_labels: bool        # some window has an RUL target (with rul_cap > 0)


def fit_statistics(cache: GridCache, assets: Sequence[str], events: list[Event], windowing: Windowing, *,
                   regime_channels: tuple[int, ...] = (), n_regimes: int | None = None,
                   scaling: Scaling = "z", seed: int = 0, rul_cap: float = 0.0, clip: float = 0.0
                   ) -> TrainStats:
    """The normalisation (and drift quantiles) fitted on the rows `assets`' windows cover, as
    `fit_normalisation` fits them on the same assets in memory, one asset in memory at a time."""
    by_asset = events_by_asset(events)
    rows_path = cache.folder / ROWS_FILE
    n_rows, windows, positives, rul = 0, 0, 0, False
    with rows_path.open("wb") as out:
        for name in assets:
            ws = windowing.build(cache.history([name]), by_asset.get(name, []))
            rows = training_rows(ws)
            np.ascontiguousarray(rows, dtype=np.float64).tofile(out)
            n_rows += len(rows)
            windows += len(ws)
            positives += int(ws.fail.sum())
            rul = rul or (rul_cap > 0 and bool(np.isfinite(ws.rul_target(rul_cap)).any()))
    if windows == 0:
        raise ValueError(f"no whole window of {windowing.window} cells in the training assets")
    c = len(cache.channels)

    def blocks() -> Iterator[FloatArray]:
        for start in range(0, n_rows, ROW_BLOCK):
            count = min(ROW_BLOCK, n_rows - start)
            yield np.fromfile(rows_path, dtype=np.float64, count=count * c,
                              offset=start * c * 8).reshape(count, c)

    norm = fit_blocks(blocks, regime_channels, n_regimes, scaling, seed, clip)
    return TrainStats(norm, quantiles_of(blocks), windows, positives, rul)


@dataclass(frozen=True)
class StreamSource:
    """The `WindowSource` over a gridded cache: windows built asset by asset, normalised with `norm`."""

    cache: GridCache
    assets: tuple[str, ...]
    events: Mapping[str, list[Event]]
    windowing: Windowing
    norm: Normalisation

    def window_set(self, assets: Sequence[int]) -> WindowSet:
        """The raw (unnormalised) labelled windows of these assets, in `assets` order."""
        names = [self.assets[i] for i in sorted(set(assets))]
        events = [e for n in names for e in self.events.get(n, [])]
        return self.windowing.build(self.cache.history(names), events)

    def windows_of(self, assets: Sequence[int]) -> Inputs:
        return self.window_set(assets).inputs(self.norm)

    def cells(self, i: int) -> int:
        """How many grid cells asset i has (its windows take about as much memory)."""
        return self.cache.entry(self.assets[i]).cells


def pick_assets(sizes: Sequence[int], budget: int, seed: int) -> list[int]:
    """A seeded random choice of assets whose sizes add up to about `budget` (at least one asset)."""
    chosen: list[int] = []
    total = 0
    for i in np.random.default_rng(seed).permutation(len(sizes)):
        if chosen and total + sizes[i] > budget:
            continue
        chosen.append(int(i))
        total += sizes[i]
    return sorted(chosen)


def windows_rate(source: WindowSource, group: int = 16) -> tuple[int, float]:
    """Every window of `source`, built `group` assets at a time: (windows, seconds), the loader's
    output rate as a training loop would draw it."""
    t0 = time.monotonic()
    n = 0
    for start in range(0, len(source.assets), group):
        n += len(source.windows_of(range(start, min(start + group, len(source.assets)))).ws)
    return n, time.monotonic() - t0
