"""Long-format history files (CSV or Parquet) read back in chunks with validated columns."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from agent.errors import ConfigError, DataError
from agent.names import valid_name
from sim.history import HISTORY_COLUMNS
from sim.timestamps import parse_time

PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_BLOCK_BYTES = 1 << 20  # ~25k rows a chunk: small enough for steady progress
_PARQUET_BATCH_ROWS = 32_768


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of a history file; `first_row` is the 1-based data row of the first."""

    first_row: int
    ts: npt.NDArray[np.float64]
    asset: list[str]
    channel: list[str]
    value: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.asset)


def count_rows(path: Path) -> int | None:
    """Rows in the file when cheap to know (Parquet metadata), else None."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return int(pq.ParquetFile(str(path)).metadata.num_rows)
    return None


def read_history(path: Path) -> Iterator[Chunk]:
    """Yield chunks of a long-format file; DataError naming the row for anything malformed."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    parquet = path.suffix.lower() in PARQUET_SUFFIXES
    batches = _parquet_batches(path) if parquet else _csv_batches(path)
    row = 1
    for batch in batches:
        if batch.num_rows:
            yield _to_chunk(path, batch, row)
            row += batch.num_rows


def _csv_batches(path: Path) -> Iterator[pa.RecordBatch]:
    with path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    _check_columns(path, header)
    convert = pacsv.ConvertOptions(
        # ts stays text here: it may be epoch seconds or RFC 3339, decided per chunk.
        column_types={"ts": pa.string(), "asset": pa.string(), "channel": pa.string(),
                      "value": pa.float64()},
        include_columns=list(HISTORY_COLUMNS),
        # Only an empty cell is missing; "nan" or "NA" are bad values, reported as such.
        null_values=[""],
        strings_can_be_null=True,
    )
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            convert_options=convert,
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: {_first_line(exc)}") from exc


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(str(path))
        _check_columns(path, pf.schema_arrow.names)
        yield from pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(HISTORY_COLUMNS))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {_first_line(exc)}") from exc


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in HISTORY_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected header "
            f"{','.join(HISTORY_COLUMNS)}"
        )


def _to_chunk(path: Path, batch: pa.RecordBatch, first_row: int) -> Chunk:
    for name in HISTORY_COLUMNS:
        col = batch.column(name)
        if col.null_count:
            bad = int(pc.index(pc.is_null(col), True).as_py())
            raise DataError(f"{path} row {first_row + bad}: empty {name}")
    ts = _ts_seconds(path, batch.column("ts"), first_row)
    try:
        value = np.asarray(pc.cast(batch.column("value"), pa.float64()).to_numpy(), np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: value column: {_first_line(exc)}") from exc
    not_finite = ~np.isfinite(value)
    if not_finite.any():
        bad = int(np.argmax(not_finite))
        raise DataError(f"{path} row {first_row + bad}: value {value[bad]} is not a finite number")
    asset = batch.column("asset").to_pylist()
    channel = batch.column("channel").to_pylist()
    for name_col, kind in ((batch.column("asset"), "asset"), (batch.column("channel"), "channel")):
        for name in pc.unique(name_col).to_pylist():
            if not valid_name(str(name)):
                bad = int(pc.index(name_col, name).as_py())
                raise DataError(
                    f"{path} row {first_row + bad}: {kind} {name!r} cannot be a topic level"
                )
    return Chunk(first_row, ts, [str(a) for a in asset], [str(c) for c in channel], value)


def _ts_seconds(path: Path, col: pa.Array, first_row: int) -> npt.NDArray[np.float64]:
    if pa.types.is_timestamp(col.type):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        return np.asarray(micros.to_numpy(), np.float64) / 1e6
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(), np.float64)
    text = pc.cast(col, pa.string())
    try:
        return np.asarray(pc.cast(text, pa.float64()).to_numpy(), np.float64)
    except pa.ArrowInvalid:
        pass
    try:
        stamps = pc.cast(pc.utf8_upper(text), pa.timestamp("us", tz="UTC"))
        return np.asarray(pc.cast(stamps, pa.int64()).to_numpy(), np.float64) / 1e6
    except pa.ArrowInvalid:
        pass
    # Mixed or malformed: the slow path finds and names the offending row.
    out = np.empty(len(text))
    for i, raw in enumerate(text.to_pylist()):
        try:
            out[i] = parse_time(str(raw))
        except ConfigError as exc:
            raise DataError(f"{path} row {first_row + i}: {exc}") from exc
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
