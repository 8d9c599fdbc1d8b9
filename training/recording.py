"""The agent's recording in memory: one snapshot of its Parquet files, split by event time.

A refit reads the recording once (files the agent deletes meanwhile, to keep its disk bound,
are skipped), then writes the part it trains on to a file of its own, so training never
races the agent's writer, and judges both models on the most recent part it held back.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent.errors import DataError
from agent.history import PARQUET_SUFFIXES
from training import readers
from training.data import LONG_COLUMNS, Event, History, grid_history

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Readings:
    """Long-format readings as numbers: asset and channel are codes into `assets`, `channels`."""

    ts: FloatArray
    asset: IntArray
    channel: IntArray
    value: FloatArray
    assets: tuple[str, ...]
    channels: tuple[str, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.ts)

    def history(self, channels: tuple[str, ...], period_s: float) -> History:
        """The readings on a model's grid and channels (as training and `evaluate` grid them)."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise DataError(f"the recording has no readings of channel(s) {missing}")
        remap = np.array([channels.index(c) if c in channels else -1 for c in self.channels], dtype=np.int64)
        chan = remap[self.channel]
        keep = chan >= 0
        return grid_history(self.ts[keep], self.asset[keep], chan[keep], self.value[keep], list(self.assets),
                            channels, period_s, "last", self.fingerprint)

    def before(self, cut: dict[str, float]) -> BoolArray:
        """Readings stamped before their asset's cut (assets without one: all of theirs)."""
        cuts = np.array([cut.get(a, math.inf) for a in self.assets], dtype=np.float64)
        mask: BoolArray = self.ts < cuts[self.asset]
        return mask

    def span(self) -> dict[str, tuple[float, float]]:
        """Each asset's first and last event time."""
        out: dict[str, tuple[float, float]] = {}
        for a, name in enumerate(self.assets):
            ts = self.ts[self.asset == a]
            if len(ts):
                out[name] = (float(ts.min()), float(ts.max()))
        return out

    def write(self, path: Path, mask: BoolArray) -> int:
        """The readings under `mask` as one long-format Parquet file; returns how many."""
        table = pa.Table.from_arrays([
            pa.array(self.ts[mask]),
            pa.DictionaryArray.from_arrays(pa.array(self.asset[mask].astype(np.int32)),
                                           pa.array(self.assets, pa.string())),
            pa.DictionaryArray.from_arrays(pa.array(self.channel[mask].astype(np.int32)),
                                           pa.array(self.channels, pa.string())),
            pa.array(self.value[mask])], names=list(LONG_COLUMNS))
        pq.write_table(table, path, compression="zstd", store_schema=False)
        return int(mask.sum())


def recording_files(directory: Path) -> list[Path]:
    """The recording's whole Parquet files at any depth (hidden names are files being written)."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no recording (the agent writes it with [record] enabled = true)")
    return sorted(f for f in directory.rglob("*") if f.suffix.lower() in PARQUET_SUFFIXES
                  and not any(n.startswith((".", "_")) for n in f.relative_to(directory).parts))


def load_recording(directory: Path) -> Readings:
    """Every reading of the recording folder, as one snapshot."""
    tables, read = [], []
    for f in recording_files(directory):
        try:
            t = pq.read_table(f, columns=list(LONG_COLUMNS))
        except FileNotFoundError:  # the agent's disk bound deleted it since the listing
            continue
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{f}: {str(exc).splitlines()[0]}") from exc
        tables.append(t.cast(pa.schema([("ts", pa.float64()), ("asset", pa.string()),
                                        ("channel", pa.string()), ("value", pa.float64())])))
        read.append(f)
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise DataError(f"{directory}: the recording holds no readings yet")
    table = pa.concat_tables(tables)
    asset = pc.dictionary_encode(table["asset"]).combine_chunks()
    channel = pc.dictionary_encode(table["channel"]).combine_chunks()
    ts = table["ts"].to_numpy()
    value = table["value"].to_numpy()
    finite = np.isfinite(ts)
    return Readings(ts[finite], np.asarray(asset.indices, dtype=np.int64)[finite],
                    np.asarray(channel.indices, dtype=np.int64)[finite], value[finite],
                    tuple(str(a) for a in asset.dictionary.to_pylist()),
                    tuple(str(c) for c in channel.dictionary.to_pylist()), readers.fingerprint(*read))


def write_events(path: Path, events: list[Event]) -> None:
    """Events in the training events format (`ts,asset,event`, ts in epoch seconds)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["ts", "asset", "event"])
        w.writerows([repr(e.ts), e.asset, e.event] for e in sorted(events, key=lambda e: e.ts))
