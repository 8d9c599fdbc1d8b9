"""Histories and events: read long, wide or C-MAPSS files and resample per asset onto the agent's grid.

Formats (`--format`):
- `long`: `ts,asset,channel,value`, one reading per row (CSV or Parquet).
- `wide`: `ts,asset,<one column per channel>`, one row per asset and time; an empty cell is
  a reading that did not happen (CSV or Parquet).
- `cmapss`: the NASA C-MAPSS text files (see `training.cmapss`).
A long or wide history may also be a folder of Parquet files, plain or hive-partitioned by
asset or date (`training.readers.parts`).
Readings are gathered chunk by chunk into compact numeric arrays, then put on the grid
with the agent's own `to_grid`, so a training window is what the agent would have held.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.errors import DataError
from agent.windows import Aggregation, cells_of, to_grid
from training import readers

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Format = Literal["long", "wide", "cmapss"]
FORMATS: tuple[Format, ...] = ("long", "wide", "cmapss")
EVENT_KINDS = ("failure", "maintenance")
LONG_COLUMNS = ("ts", "asset", "channel", "value")
NO_PERIOD = "cannot infer the sample period: no series has two readings; pass --period"


@dataclass(frozen=True)
class AssetSeries:
    """One asset's history on the grid: raw aggregated cells (NaN where nothing fell)."""

    asset: str
    start_cell: int
    grid: FloatArray


@dataclass(frozen=True)
class History:
    """A whole history resampled onto the grid."""

    channels: tuple[str, ...]
    period_s: float
    assets: tuple[AssetSeries, ...]
    fingerprint: str


@dataclass(frozen=True)
class Event:
    ts: float
    asset: str
    event: str


@dataclass(frozen=True)
class Coded:
    """Some readings as numbers: asset and channel are codes into a `Names`."""

    ts: FloatArray
    asset: IntArray
    channel: IntArray
    value: FloatArray

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class Names:
    """Asset and channel names coded through growing dictionaries, as chunks arrive."""

    assets: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def codes(names: list[str], table: dict[str, int]) -> IntArray:
        return np.array([table.setdefault(str(n), len(table)) for n in names], dtype=np.int64)

    def asset_list(self) -> list[str]:
        return sorted(self.assets, key=self.assets.__getitem__)


def read_coded(path: Path, fmt: Format, names: Names) -> Iterator[Coded]:
    """A long or wide history (file or folder), chunk by chunk, as readings coded through `names`
    (then `channel_codes` picks the channels to grid)."""
    if fmt == "long":
        yield from _read_long(path, names)
    elif fmt == "wide":
        yield from _read_wide(path, names)
    else:
        raise DataError(f"{path}: format {fmt!r} is not a long or wide history")


def channel_codes(path: Path, fmt: Format, names: Names, channels: tuple[str, ...] | None
                  ) -> tuple[tuple[str, ...], IntArray]:
    """The channels to grid (those asked, or all by default) and a map from channel code to
    their index (-1: a channel left out)."""
    found = sorted(names.channels, key=names.channels.__getitem__)
    want = (tuple(sorted(found)) if fmt == "long" else tuple(found)) if channels is None else tuple(channels)
    missing = [c for c in want if c not in names.channels]
    if missing:
        raise DataError(f"{path}: channel(s) {missing} not in the file")
    return want, np.array([want.index(c) if c in want else -1 for c in found], dtype=np.int64)


def series_gaps(ts: FloatArray, keys: IntArray) -> FloatArray:
    """The positive gaps between consecutive readings of the same series (`keys`)."""
    order = np.lexsort((ts, keys))
    t, k = ts[order], keys[order]
    gaps: FloatArray = np.diff(t)[(np.diff(k) == 0)]
    return gaps[gaps > 0]


def infer_period(ts: FloatArray, keys: IntArray) -> float:
    """The sample period: the median positive gap between readings of the same series."""
    gaps = series_gaps(ts, keys)
    if len(gaps) == 0:
        raise DataError(NO_PERIOD)
    return float(np.median(gaps))


def load_history(path: Path, *, fmt: Format = "long", period_s: float | None = None,
                 channels: tuple[str, ...] | None = None, agg: Aggregation = "last") -> History:
    """Read a long- or wide-format history (CSV or Parquet file, or a folder of Parquet files)
    and resample it per asset.

    `channels` picks and orders the channels (the model's, at evaluation); by default all
    of them, sorted by name for long format and in header order for wide format.
    """
    path = Path(path)
    names = Names()
    chunks = list(read_coded(path, fmt, names))
    if not chunks:
        raise DataError(f"{path}: no rows")
    want, remap = channel_codes(path, fmt, names, channels)
    ts, values = np.concatenate([c.ts for c in chunks]), np.concatenate([c.value for c in chunks])
    chan = remap[np.concatenate([c.channel for c in chunks])]
    asset = np.concatenate([c.asset for c in chunks])
    del chunks
    keep = chan >= 0
    ts, values, chan, asset = ts[keep], values[keep], chan[keep], asset[keep]
    if period_s is None:
        period_s = infer_period(ts, asset * len(want) + chan)
    return grid_history(ts, asset, chan, values, names.asset_list(), want, period_s, agg,
                        readers.fingerprint(*readers.files(path)))


def grid_history(ts: FloatArray, asset: IntArray, chan: IntArray, values: FloatArray,
                 asset_names: list[str], channels: tuple[str, ...], period_s: float,
                 agg: Aggregation, fingerprint: str) -> History:
    """Readings as numbers into a History, one grid per asset (assets sorted by name)."""
    cells = cells_of(ts, period_s)
    order = np.argsort(asset, kind="stable")
    bounds = np.searchsorted(asset[order], np.arange(len(asset_names) + 1))
    series = []
    for a, name in enumerate(asset_names):
        m = order[bounds[a]:bounds[a + 1]]
        if len(m) == 0:
            continue
        start, grid = to_grid(cells[m], chan[m], values[m], ts[m], len(channels), agg)
        series.append(AssetSeries(name, start, grid))
    series.sort(key=lambda s: s.asset)
    return History(tuple(channels), float(period_s), tuple(series), fingerprint)


def _check_header(path: Path, names: list[str], required: tuple[str, ...], layout: str) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        # A folder's header is its first file's: name that file.
        where = readers.files(path)[0] if path.is_dir() else path
        raise DataError(f"{where}: missing column(s) {missing}; header must be {layout}")


def _read_long(path: Path, names: Names) -> Iterator[Coded]:
    _check_header(path, readers.header(path), LONG_COLUMNS, ",".join(LONG_COLUMNS))
    for chunk in readers.read_chunks(path, list(LONG_COLUMNS)):
        if chunk.table.num_rows == 0:
            continue
        ts = readers.seconds(chunk)
        values = readers.numbers(chunk, "value")
        assets = readers.texts(chunk, "asset")
        chans = readers.texts(chunk, "channel")
        a = names.codes(assets.dictionary.to_pylist(), names.assets)[np.asarray(assets.indices)]
        c = names.codes(chans.dictionary.to_pylist(), names.channels)[np.asarray(chans.indices)]
        yield Coded(ts, a, c, values)


def _read_wide(path: Path, names: Names) -> Iterator[Coded]:
    header = readers.header(path)
    _check_header(path, header, ("ts", "asset"), "ts,asset,<channel>,...")
    keys = readers.partition_keys(path)
    chans = [c for c in header if c not in ("ts", "asset") and c not in keys]
    if not chans:
        raise DataError(f"{path}: no channel columns besides ts and asset")
    if len(set(chans)) != len(chans):
        raise DataError(f"{path}: repeated channel column names")
    codes = names.codes(chans, names.channels)
    for chunk in readers.read_chunks(path, ["ts", "asset", *chans], exact=True):
        if chunk.table.num_rows == 0:
            continue
        ts = readers.seconds(chunk)
        assets = readers.texts(chunk, "asset")
        a = names.codes(assets.dictionary.to_pylist(), names.assets)[np.asarray(assets.indices)]
        for code, name in zip(codes, chans, strict=True):
            v = readers.numbers(chunk, name, empty_is_missing=True)
            have = ~np.isnan(v)
            yield Coded(ts[have], a[have], np.full(int(have.sum()), code, dtype=np.int64), v[have])


def load_events(path: Path) -> list[Event]:
    """Read an events file (`ts,asset,event`, event one of failure|maintenance)."""
    path = Path(path)
    _check_header(path, readers.header(path), ("ts", "asset", "event"), "ts,asset,event")
    out: list[Event] = []
    for chunk in readers.read_chunks(path, ["ts", "asset", "event"]):
        ts = readers.seconds(chunk)
        assets = chunk.table["asset"].to_pylist()
        kinds = chunk.table["event"].to_pylist()
        for i, (t, a, e) in enumerate(zip(ts, assets, kinds, strict=True)):
            if e not in EVENT_KINDS:
                raise DataError(f"{path}: row {chunk.row(i)}, column event: {e!r} is not one of "
                                f"{EVENT_KINDS}")
            if not a:
                raise DataError(f"{path}: row {chunk.row(i)}, column asset: empty")
            out.append(Event(float(t), str(a), str(e)))
    return out
