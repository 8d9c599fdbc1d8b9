"""Historical logs from the plant: long-format readings (CSV or Parquet) and an events CSV.

Parquet histories may be written as a hive-partitioned folder, one file per asset
(`history/asset=pump-001/part-0.parquet`, the asset column left to the folder name) or per
UTC day (`history/date=2026-01-01/part-0.parquet`), as large plants keep them.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from agent.errors import ConfigError
from sim.plant import CHANNELS, DAY, Event, Plant, PlantConfig, Step
from sim.timestamps import DEFAULT_START_TS

HistoryFormat: TypeAlias = Literal["csv", "parquet"]
FORMATS: tuple[HistoryFormat, ...] = ("csv", "parquet")
Partition: TypeAlias = Literal["none", "asset", "date"]
PARTITIONS: tuple[Partition, ...] = ("none", "asset", "date")
HISTORY_COLUMNS = ("ts", "asset", "channel", "value")
EVENTS_COLUMNS = ("ts", "asset", "event")
# About 10 MB of rows per chunk at 50 assets; memory stays flat whatever the run length.
DEFAULT_CHUNK_STEPS = 1440


class _TableWriter(Protocol):
    def write_table(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


def write_history(
    cfg: PlantConfig,
    days: float,
    out_dir: Path,
    *,
    start_ts: float = DEFAULT_START_TS,
    fmt: HistoryFormat = "csv",
    progress: bool | None = None,
    chunk_steps: int = DEFAULT_CHUNK_STEPS,
    partition: Partition = "none",
) -> tuple[Path, Path]:
    """Simulate `days` of the plant into `out_dir`; return (history path, events path).

    Rows are sorted by ts, then asset index, then channel in CHANNELS order (within each file
    of a partitioned folder). ts is written as integer epoch seconds when start_ts and the
    period are whole seconds. `progress=None` shows a bar only when stderr is a terminal.
    With `partition` "asset" or "date" (Parquet only) the history is the folder
    `out_dir/history`, which must not exist yet.
    """
    if not (math.isfinite(days) and days > 0):
        raise ConfigError(f"days must be a positive number, got {days}")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if partition not in PARTITIONS:
        raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}, got {partition!r}")
    if partition != "none" and fmt != "parquet":
        raise ConfigError(f"a history partitioned by {partition} is written as Parquet: add --format parquet")
    if chunk_steps < 1:
        raise ConfigError(f"chunk_steps must be at least 1, got {chunk_steps}")
    n_steps = int(days * 86400.0 / cfg.period_s)
    if n_steps < 1:
        raise ConfigError(f"{days} days is shorter than one period of {cfg.period_s} s")
    whole = float(start_ts).is_integer() and float(cfg.period_s).is_integer()
    schema = _history_schema(whole)

    out_dir.mkdir(parents=True, exist_ok=True)
    history_path = out_dir / (f"history.{fmt}" if partition == "none" else "history")
    if partition != "none" and history_path.exists():
        # Files of an earlier, longer run would silently join this one.
        raise ConfigError(f"{history_path} already exists; remove it or write elsewhere")
    events_path = out_dir / "events.csv"
    plant = Plant(cfg, start_ts)
    show = sys.stderr.isatty() if progress is None else progress

    with ExitStack() as stack:
        writer = (_open_writer(history_path, fmt, schema, stack) if partition == "none"
                  else _Partitioned(history_path, schema, partition))
        stack.callback(writer.close)
        events_file = stack.enter_context(events_path.open("w", newline="", encoding="utf-8"))
        events_csv = csv.writer(events_file, lineterminator="\n")
        events_csv.writerow(EVENTS_COLUMNS)
        bar = stack.enter_context(
            tqdm(total=n_steps, unit="step", desc="history", file=sys.stderr, disable=not show)
        )
        for steps in _chunks(plant, n_steps, chunk_steps):
            writer.write_table(_to_table(steps, cfg.asset_names, schema, whole))
            for ts, asset, event in (e for s in steps for e in s.events):
                events_csv.writerow((_fmt_ts(ts, whole), asset, event))
            bar.update(len(steps))
    return history_path, events_path


def _history_schema(whole: bool) -> pa.Schema:
    return pa.schema(
        [
            ("ts", pa.int64() if whole else pa.float64()),
            ("asset", pa.string()),
            ("channel", pa.string()),
            ("value", pa.float64()),
        ]
    )


def _open_writer(
    path: Path, fmt: HistoryFormat, schema: pa.Schema, stack: ExitStack
) -> _TableWriter:
    if fmt == "parquet":
        writer: _TableWriter = pq.ParquetWriter(str(path), schema, compression="zstd")
    else:
        # Names never hold commas or quotes, so nothing is quoted, the header included (arrow
        # would quote it): the file reads as plain `ts,asset,channel,value`.
        sink = stack.enter_context(pa.OSFile(str(path), "wb"))
        sink.write((",".join(HISTORY_COLUMNS) + "\n").encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        writer = pacsv.CSVWriter(sink, schema, write_options=options)
    return writer


class _Partitioned:
    """Writes each chunk's rows into one Parquet file per asset or per UTC day, under `root`.

    A file per asset stays open for the whole run (one row group per chunk); a day's file is
    closed once the simulation has moved past that day, so few files are open at a time.
    """

    def __init__(self, root: Path, schema: pa.Schema, by: Partition) -> None:
        self.root, self.by = root, by
        self.schema = schema.remove(schema.get_field_index("asset")) if by == "asset" else schema
        self.writers: dict[str, pq.ParquetWriter] = {}

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self.by == "asset":
            codes = table["asset"].combine_chunks().dictionary_encode()
            key = np.asarray(codes.indices)
            names = [f"asset={a}" for a in codes.dictionary.to_pylist()]
            table = table.drop_columns(["asset"])
        else:
            days = np.asarray(table["ts"]).astype(np.float64) // DAY
            key = (days - days[0]).astype(np.int64)
            first = datetime.fromtimestamp(float(days[0] * DAY), UTC).date()
            names = [f"date={first + timedelta(days=int(d))}" for d in range(int(key[-1]) + 1)]
        # Rows of one partition stay in their order (stable sort), so every file is sorted too.
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(len(names) + 1))
        table = table.take(pa.array(order))
        for k, name in enumerate(names):
            if bounds[k + 1] > bounds[k]:
                self._writer(name).write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))

    def _writer(self, name: str) -> pq.ParquetWriter:
        if name not in self.writers:
            if self.by == "date":  # time only moves forward: earlier days are done
                for old in [n for n in self.writers if n < name]:
                    self.writers.pop(old).close()
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[name] = pq.ParquetWriter(str(folder / "part-0.parquet"), self.schema,
                                                  compression="zstd")
        return self.writers[name]

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()


def _chunks(plant: Plant, n_steps: int, chunk_steps: int) -> Iterator[list[Step]]:
    done = 0
    while done < n_steps:
        size = min(chunk_steps, n_steps - done)
        yield [plant.step() for _ in range(size)]
        done += size


def _to_table(
    steps: list[Step], names: tuple[str, ...], schema: pa.Schema, whole: bool
) -> pa.Table:
    n_assets, n_channels = len(names), len(CHANNELS)
    per_step = n_assets * n_channels
    ts = np.repeat(np.array([s.ts for s in steps]), per_step)
    values = np.concatenate([s.values.reshape(-1) for s in steps])
    # A reading exists only for assets that are up; a down asset leaves a gap, not NaNs.
    keep = np.concatenate([np.repeat(s.up, n_channels) for s in steps])
    asset_idx = np.tile(np.repeat(np.arange(n_assets), n_channels), len(steps))[keep]
    channel_idx = np.tile(np.arange(n_channels), n_assets * len(steps))[keep]
    ts_col = np.rint(ts[keep]).astype(np.int64) if whole else ts[keep]
    return pa.table(
        [
            pa.array(ts_col),
            pa.array(names).take(pa.array(asset_idx)),
            pa.array(CHANNELS).take(pa.array(channel_idx)),
            pa.array(values[keep]),
        ],
        schema=schema,
    )


def _fmt_ts(ts: float, whole: bool) -> str:
    return str(round(ts)) if whole else repr(ts)


def read_events(path: Path) -> list[Event]:
    """Events from an events CSV written by write_history, in file order."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [(float(r["ts"]), r["asset"], r["event"]) for r in csv.DictReader(fh)]
