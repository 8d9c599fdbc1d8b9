"""History and events files: read, check, and resample per asset onto the agent's grid."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from agent.errors import DataError
from agent.windows import Aggregation, cells_of, to_grid

FloatArray = npt.NDArray[np.float64]
EVENT_KINDS = ("failure", "maintenance")


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


def _read_table(path: Path, columns: tuple[str, ...]) -> pa.Table:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"asset": pa.string(), "channel": pa.string(), "event": pa.string()}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {str(exc).splitlines()[0]}") from exc
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; header must be {','.join(columns)}")
    return table.select(list(columns))


def _epoch_seconds(col: pa.ChunkedArray, path: Path) -> FloatArray:
    """`ts` as epoch seconds from numbers or RFC 3339 strings."""
    if pa.types.is_timestamp(col.type):
        return np.asarray(pc.cast(col, pa.timestamp("us", "UTC")).cast(pa.int64()), dtype=np.float64) / 1e6
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # A text column may mix RFC 3339 and epoch numbers; each row may be either.
        col = col.combine_chunks()
        parsed = pc.strptime(col, format="%Y-%m-%dT%H:%M:%S%z", unit="us", error_is_null=True)
        out = np.asarray(parsed.cast(pa.int64()).fill_null(0), dtype=np.float64) / 1e6
        numeric = np.asarray(pc.match_substring_regex(col, r"^\s*-?\d+(\.\d*)?\s*$").fill_null(False))
        if numeric.any():
            out[numeric] = np.asarray(pc.cast(pc.filter(col, pa.array(numeric)), pa.float64()))
        bad = np.asarray(pc.is_null(parsed)) & ~numeric
        for i in np.flatnonzero(bad):  # what Arrow's strptime cannot: fractional seconds
            ts = _iso_seconds(col[int(i)].as_py())
            if ts is not None:
                out[i], bad[i] = ts, False
        if bad.any():
            row = int(np.argmax(bad)) + 2  # +1 for the header, +1 for 1-based rows
            raise DataError(f"{path}: row {row}, column ts: not epoch seconds or RFC 3339")
        return out
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(col.cast(pa.float64()), dtype=np.float64)
    raise DataError(f"{path}: column ts has type {col.type}, expected numbers or RFC 3339 text")


def _iso_seconds(text: str | None) -> float | None:
    try:
        dt = datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def _check_finite(arr: FloatArray, path: Path, column: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{path}: row {int(np.argmax(bad)) + 2}, column {column}: empty or not a number")


def infer_period(ts: FloatArray, keys: npt.NDArray[np.int64]) -> float:
    """The sample period: the median positive gap between readings of the same series."""
    order = np.lexsort((ts, keys))
    t, k = ts[order], keys[order]
    gaps = np.diff(t)[(np.diff(k) == 0)]
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        raise DataError("cannot infer the sample period: no series has two readings; pass --period")
    return float(np.median(gaps))


def load_history(path: Path, *, period_s: float | None = None,
                 channels: tuple[str, ...] | None = None, agg: Aggregation = "last") -> History:
    """Read a long-format history (`ts,asset,channel,value`) and resample it per asset."""
    path = Path(path)
    table = _read_table(path, ("ts", "asset", "channel", "value"))
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows")
    ts = _epoch_seconds(table["ts"], path)
    _check_finite(ts, path, "ts")
    try:
        values = np.asarray(table["value"].cast(pa.float64()), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: column value: {exc}") from exc
    _check_finite(values, path, "value")
    asset_codes = table["asset"].combine_chunks().dictionary_encode()
    chan_codes = table["channel"].combine_chunks().dictionary_encode()
    chan_names = tuple(str(c) for c in chan_codes.dictionary.to_pylist())
    chan_idx = np.asarray(chan_codes.indices, dtype=np.int64)
    if channels is None:
        channels = tuple(sorted(chan_names))
    remap = np.array([channels.index(c) if c in channels else -1 for c in chan_names], dtype=np.int64)
    chan_idx = remap[chan_idx]
    keep = chan_idx >= 0
    asset_idx = np.asarray(asset_codes.indices, dtype=np.int64)
    if period_s is None:
        period_s = infer_period(ts[keep], asset_idx[keep] * len(channels) + chan_idx[keep])
    cells = cells_of(ts, period_s)
    series = []
    for a, name in enumerate(asset_codes.dictionary.to_pylist()):
        m = keep & (asset_idx == a)
        if not m.any():
            continue
        start, grid = to_grid(cells[m], chan_idx[m], values[m], ts[m], len(channels), agg)
        series.append(AssetSeries(str(name), start, grid))
    series.sort(key=lambda s: s.asset)
    fp = _fingerprint(path)
    return History(channels, period_s, tuple(series), fp)


def _fingerprint(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


def load_events(path: Path) -> list[Event]:
    """Read an events file (`ts,asset,event`)."""
    path = Path(path)
    table = _read_table(path, ("ts", "asset", "event"))
    ts = _epoch_seconds(table["ts"], path)
    _check_finite(ts, path, "ts")
    assets = table["asset"].to_pylist()
    kinds = table["event"].to_pylist()
    out = []
    for i, (t, a, e) in enumerate(zip(ts, assets, kinds, strict=True)):
        if e not in EVENT_KINDS:
            raise DataError(f"{path}: row {i + 2}, column event: {e!r} is not one of {EVENT_KINDS}")
        out.append(Event(float(t), str(a), str(e)))
    return out
