"""Tables read in chunks from CSV or Parquet, with errors that name the file, row and column.

A source is one file, or a folder of Parquet files read through `pyarrow.dataset`: plain,
or hive-partitioned (`asset=pump-001/`, `date=2026-01-01/`), where a partition key stands
for a column its files leave out. Every column is read as it comes (text for CSV) and
converted here, so a bad value is reported where it is instead of as an Arrow conversion
error somewhere in a block.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from agent.errors import DataError

FloatArray = npt.NDArray[np.float64]
# About 16 MiB of CSV text, or 256k Parquet rows, per chunk: memory stays flat for any file size.
CSV_BLOCK_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 1 << 18
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Chunk:
    """Some consecutive rows of a table; `row0` is how the file names the first of them."""

    table: pa.Table
    row0: int
    path: Path

    def row(self, i: int) -> int:
        return self.row0 + i


@dataclass(frozen=True)
class Part:
    """One Parquet file of a folder source and the partition values its directories give."""

    path: Path
    keys: dict[str, str]


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def parts(folder: Path) -> list[Part]:
    """The Parquet files of a folder, sorted by path, with their hive partition values (as text).

    Names starting with `.` or `_` (files being written, `_SUCCESS`) and files that are not
    `.parquet`/`.pq` are left out, at any depth.
    """
    _exists(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and is_parquet(f)
                   and not any(n.startswith((".", "_")) for n in f.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no Parquet files (*.parquet) in the folder")
    # pyarrow.dataset resolves the hive partitions (URI-decoded); values stay text: `asset=007`
    # is asset "007", not the number 7.
    keys = sorted({d.split("=", 1)[0] for f in files for d in f.relative_to(folder).parts[:-1] if "=" in d})
    dataset = ds.dataset([str(f) for f in files], format="parquet", partition_base_dir=str(folder),
                         partitioning=ds.partitioning(pa.schema([(k, pa.string()) for k in keys]),
                                                      flavor="hive"))
    return [Part(Path(f.path), {k: str(v) for k, v in ds.get_partition_keys(f.partition_expression).items()})
            for f in dataset.get_fragments()]


def partition_keys(path: Path) -> set[str]:
    """The hive partition keys of a folder source (none for a file)."""
    return {k for part in parts(path) for k in part.keys} if path.is_dir() else set()


def files(path: Path) -> list[Path]:
    """The files a source is read from: the file itself, or a folder's Parquet files."""
    return [p.path for p in parts(path)] if path.is_dir() else [path]


def header(path: Path) -> list[str]:
    """The column names of a CSV or Parquet file (a folder: its first file, with partition keys),
    without reading rows."""
    _exists(path)
    if path.is_dir():
        first = parts(path)[0]
        names = header(first.path)
        return names + [k for k in first.keys if k not in names]
    try:
        if is_parquet(path):
            return list(pq.ParquetFile(path).schema_arrow.names)
        with path.open("r", encoding="utf-8", newline="") as f:
            line = f.readline()
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {str(exc).splitlines()[0]}") from exc
    names = [c.strip() for c in line.rstrip("\r\n").split(",")]
    if not line or names == [""]:
        raise DataError(f"{path}: empty file, expected a header row")
    return names


def read_chunks(path: Path, columns: list[str], *, exact: bool = False) -> Iterator[Chunk]:
    """The named columns of a CSV or Parquet file, or of every file of a folder, a chunk at a time.

    In a folder, every file must hold the columns (a partition key counts as one); with
    `exact`, it must hold no other columns either (a wide file's channels must agree).
    """
    if path.is_dir():
        for part in parts(path):
            yield from _part_chunks(part, columns, exact)
        return
    _exists(path)
    try:
        if is_parquet(path):
            pf = pq.ParquetFile(path)
            row = 1
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                table = pa.Table.from_batches([batch])
                yield Chunk(table, row, path)
                row += table.num_rows
            return
        # CSV: every column as text, converted by us with row numbers (header is row 1).
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns}))
        row = 2
        for batch in reader:
            table = pa.Table.from_batches([batch])
            yield Chunk(table, row, path)
            row += table.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: {str(exc).splitlines()[0]}") from exc


def _part_chunks(part: Part, columns: list[str], exact: bool) -> Iterator[Chunk]:
    names = header(part.path)
    missing = [c for c in columns if c not in names and c not in part.keys]
    extra = [c for c in names if c not in columns] if exact else []
    if missing or extra:
        what = f"missing column(s) {missing}" if missing else f"column(s) {extra} not in the other files"
        raise DataError(f"{part.path}: {what}; every file must have {','.join(columns)}")
    from_keys = [c for c in columns if c not in names]
    # Each file is read on its own, so a bad one is named, in batches without read-ahead, so
    # memory stays at one batch.
    for chunk in read_chunks(part.path, [c for c in columns if c in names]):
        table = chunk.table
        for c in from_keys:  # a partition key is the same value on every row of the file
            table = table.append_column(c, pa.repeat(part.keys[c], table.num_rows))
        yield Chunk(table, chunk.row0, chunk.path)


def seconds(chunk: Chunk, column: str = "ts") -> FloatArray:
    """A time column as epoch seconds, from numbers, numeric text or RFC 3339 text."""
    col = chunk.table[column].combine_chunks()
    where = f"{chunk.path}: column {column}"
    if pa.types.is_timestamp(col.type):
        out = np.asarray(pc.cast(col, pa.timestamp("us", "UTC")).cast(pa.int64()).fill_null(0),
                         dtype=np.float64) / 1e6
        bad = np.asarray(col.is_null())
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        out = np.asarray(col.cast(pa.float64()).fill_null(np.nan), dtype=np.float64)
        bad = ~np.isfinite(out)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        out, bad = _text_seconds(col)
    else:
        raise DataError(f"{where} has type {col.type}, expected numbers or RFC 3339 text")
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{chunk.path}: row {chunk.row(i)}, column {column}: "
                        "not epoch seconds or RFC 3339")
    return out


def _text_seconds(col: pa.Array) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    # A text column may mix RFC 3339 and epoch numbers; each row may be either.
    parsed = pc.strptime(col, format="%Y-%m-%dT%H:%M:%S%z", unit="us", error_is_null=True)
    out = np.asarray(parsed.cast(pa.int64()).fill_null(0), dtype=np.float64) / 1e6
    numeric = np.asarray(pc.match_substring_regex(col, _NUMBER).fill_null(False))
    if numeric.any():
        out[numeric] = np.asarray(pc.cast(pc.filter(col, pa.array(numeric)), pa.float64()))
    bad = np.asarray(pc.is_null(parsed).fill_null(True)) & ~numeric
    for i in np.flatnonzero(bad):  # what Arrow's strptime cannot: fractional seconds
        ts = _iso_seconds(col[int(i)].as_py())
        if ts is not None:
            out[i], bad[i] = ts, False
    return out, bad


def _iso_seconds(text: str | None) -> float | None:
    try:
        dt = datetime.fromisoformat((text or "").strip())
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


def numbers(chunk: Chunk, column: str, *, empty_is_missing: bool = False) -> FloatArray:
    """A value column as float64; an empty cell is NaN when allowed, else an error naming its row."""
    col = chunk.table[column].combine_chunks()
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
        out = np.asarray(col.cast(pa.float64()).fill_null(np.nan), dtype=np.float64)
        bad = np.zeros(len(out), dtype=bool) if empty_is_missing else np.isnan(out)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.utf8_trim_whitespace(col)
        empty = np.asarray(pc.equal(text, "").fill_null(True))
        ok = np.asarray(pc.match_substring_regex(text, _NUMBER).fill_null(False))
        out = np.full(len(col), np.nan)
        if ok.any():
            out[ok] = np.asarray(pc.cast(pc.filter(text, pa.array(ok)), pa.float64()))
        bad = ~ok & ~(empty & empty_is_missing)
    else:
        raise DataError(f"{chunk.path}: column {column} has type {col.type}, expected numbers")
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{chunk.path}: row {chunk.row(i)}, column {column}: empty or not a number")
    return out


def texts(chunk: Chunk, column: str) -> pa.DictionaryArray:
    """A name column (asset, channel) dictionary-encoded; an empty name is an error."""
    col = chunk.table[column].combine_chunks()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    empty = np.asarray(pc.equal(pc.utf8_length(col), 0).fill_null(True))
    if empty.any():
        raise DataError(f"{chunk.path}: row {chunk.row(int(np.argmax(empty)))}, column {column}: empty")
    return col.dictionary_encode()


def fingerprint(*paths: Path) -> str:
    """A content hash of the data files, stored in the model file."""
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


def _exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
