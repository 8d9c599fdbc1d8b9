"""How much history the recording holds: per asset, the event-time span and the readings.

Cheap enough to ask often (the learning mode's "is there enough to fit a first model?"): a
recorded file is written whole and never changed, so `HistoryIndex` reads each file once and
keeps a few numbers per asset for it; later scans read only new files and drop deleted ones.
A file of one asset is summed up from its Parquet footer alone (row-group statistics); a file
of several assets reads its `asset` and `ts` columns. No torch, no training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class AssetHistory:
    """One asset's recorded readings: the first and last event time, and how many."""

    first_ts: float
    last_ts: float
    readings: int

    @property
    def span_s(self) -> float:
        """Event time from the first reading to the last (gaps included)."""
        return self.last_ts - self.first_ts

    def joined(self, other: AssetHistory) -> AssetHistory:
        return AssetHistory(min(self.first_ts, other.first_ts), max(self.last_ts, other.last_ts),
                            self.readings + other.readings)


@dataclass(frozen=True)
class RecordedHistory:
    """What a recording folder holds, per asset."""

    assets: dict[str, AssetHistory]
    files: int
    unreadable: int = 0          # files that could not be read (skipped)

    @property
    def readings(self) -> int:
        return sum(a.readings for a in self.assets.values())

    @property
    def span_s(self) -> float:
        """The longest span of any one asset (0 without readings)."""
        return max((a.span_s for a in self.assets.values()), default=0.0)

    def spans(self) -> dict[str, float]:
        """Each asset's event-time span in seconds."""
        return {name: a.span_s for name, a in sorted(self.assets.items())}


FileSummary = dict[str, AssetHistory]


@dataclass
class HistoryIndex:
    """A recording folder's history, kept up to date file by file (see the module docstring)."""

    directory: Path
    _seen: dict[Path, tuple[int, FileSummary]] = field(default_factory=dict)

    def scan(self) -> RecordedHistory:
        """Read the files added since the last scan, forget deleted ones; the history now."""
        current = _part_files(Path(self.directory))
        for gone in set(self._seen) - set(current):
            del self._seen[gone]
        unreadable = 0
        for path, size in current.items():
            known = self._seen.get(path)
            if known is not None and known[0] == size:
                continue
            try:
                self._seen[path] = (size, summarise(path))
            except FileNotFoundError:  # deleted by the disk bound since the listing
                continue
            except (OSError, pa.ArrowException, ValueError):
                unreadable += 1
        assets: dict[str, AssetHistory] = {}
        for _, summary in self._seen.values():
            for name, a in summary.items():
                assets[name] = assets[name].joined(a) if name in assets else a
        return RecordedHistory(assets, len(self._seen), unreadable)


def recorded_history(directory: Path) -> RecordedHistory:
    """A recording folder's history from scratch (an agent asking often keeps a `HistoryIndex`)."""
    return HistoryIndex(Path(directory)).scan()


def _part_files(directory: Path) -> dict[Path, int]:
    """The recording's Parquet files at any depth and their sizes; hidden names (files being
    written) are skipped, as training skips them."""
    if not directory.is_dir():
        return {}
    out: dict[Path, int] = {}
    for f in directory.rglob("*"):
        rel = f.relative_to(directory).parts
        if f.suffix.lower() not in PARQUET_SUFFIXES or any(n.startswith((".", "_")) for n in rel):
            continue
        try:
            if f.is_file():
                out[f] = f.stat().st_size
        except FileNotFoundError:
            continue
    return out


def summarise(path: Path) -> FileSummary:
    """Per asset of one long-format Parquet file: first and last ts, and the readings."""
    pf = pq.ParquetFile(path)
    one = _single_asset(pf)
    if one is not None:
        return one
    table = pf.read(columns=["asset", "ts"])
    if table.num_rows == 0:
        return {}
    groups = table.group_by("asset").aggregate([("ts", "min"), ("ts", "max"), ("ts", "count")])
    return {str(a): AssetHistory(float(lo), float(hi), int(n)) for a, lo, hi, n in zip(
        groups["asset"].to_pylist(), groups["ts_min"].to_pylist(), groups["ts_max"].to_pylist(),
        groups["ts_count"].to_pylist(), strict=True)}


def _single_asset(pf: pq.ParquetFile) -> FileSummary | None:
    """The summary from the footer alone, when the file holds one asset and has statistics."""
    meta = pf.metadata
    names = pf.schema_arrow.names
    if "asset" not in names or "ts" not in names:
        raise ValueError(f"{pf}: not a long-format recording (needs asset and ts columns)")
    ia, it = names.index("asset"), names.index("ts")
    asset: str | None = None
    lo, hi, n = float("inf"), float("-inf"), 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        sa, st = rg.column(ia).statistics, rg.column(it).statistics
        if rg.num_rows == 0:
            continue
        if (sa is None or st is None or not sa.has_min_max or not st.has_min_max or sa.min != sa.max
                or sa.null_count or st.null_count or (asset is not None and sa.min != asset)):
            return None
        asset = str(sa.min)
        lo, hi, n = min(lo, float(st.min)), max(hi, float(st.max)), n + rg.num_rows
    return {} if asset is None else {asset: AssetHistory(lo, hi, n)}
