"""Crash-safe per-asset state: windows, levels, dwell and surprise, checkpointed to SQLite.

A restart resumes from the last checkpoint, so it neither re-raises an alert already raised
nor forgets a level. Only assets that changed since the previous checkpoint are written.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import numpy as np

from agent.baseline import BaselineLearner
from agent.errors import VigilError
from agent.risk import LevelMachine, SurpriseTracker
from agent.windows import AssetWindow

# 2: window values float32 (`last`), event times for recent cells only, forecasts float32.
# Rows of format 1 (float64 arrays, event times for every slot) are converted on loading; an
# agent of format 1 refuses rows of format 2 (and starts those assets afresh) rather than
# misread them.
_FORMAT = 2
_READS = (1, 2)
_HEADER = struct.Struct("<I")


def _arrays(arrs: dict[str, np.ndarray | None]) -> tuple[dict[str, Any], bytes]:
    meta: dict[str, Any] = {}
    parts = []
    for name, a in arrs.items():
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        meta[name] = [a.dtype.str, list(a.shape)]
        parts.append(a.tobytes())
    return meta, b"".join(parts)


def dump_asset(window: AssetWindow, level: LevelMachine, surprise: SurpriseTracker, stale: bool,
               risk: float, baseline: BaselineLearner | None = None) -> bytes:
    """One asset's state as bytes: a JSON header, then raw arrays."""
    arrays, counters = window.state()
    b_arrays, b_meta = baseline.state() if baseline is not None else ({}, None)
    meta, body = _arrays({**arrays, "s_mean": surprise.mean, "s_logvar": surprise.logvar,
                          "s_ewma": surprise.ewma, "s_level": surprise.level, **b_arrays})
    header = json.dumps({
        "format": _FORMAT, "arrays": meta, "window": counters, "level": level.state(),
        "forecast_cell": surprise.forecast_cell, "stale": stale, "risk": risk,
        **({"baseline": b_meta} if b_meta is not None else {}),
    }).encode()
    return _HEADER.pack(len(header)) + header + body


def load_asset(blob: bytes, window: AssetWindow, level: LevelMachine, surprise: SurpriseTracker,
               baseline: BaselineLearner | None = None) -> tuple[bool, float]:
    """Fill freshly made state objects from `dump_asset` bytes; returns (stale, risk).

    A baseline being learnt (or learnt) resumes where it was; a row without one leaves the
    learner fresh."""
    (n,) = _HEADER.unpack_from(blob)
    head = json.loads(blob[_HEADER.size : _HEADER.size + n])
    if head.get("format") not in _READS:
        raise ValueError(f"checkpoint format {head.get('format')}")
    offset = _HEADER.size + n
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, shape) in head["arrays"].items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += count * dt.itemsize
    window.restore(arrays, head["window"])
    level.restore(head["level"])
    surprise.forecast_cell = head["forecast_cell"]
    # Forecasts were written as float64 by format 1: the model's float32 values, so exact here.
    surprise.mean = _float32(arrays.get("s_mean"))
    surprise.logvar = _float32(arrays.get("s_logvar"))
    surprise.ewma = arrays.get("s_ewma")
    surprise.level = arrays.get("s_level")
    if baseline is not None and "baseline" in head:
        baseline.restore(arrays, head["baseline"])
    return bool(head["stale"]), float(head["risk"])


def _float32(a: np.ndarray | None) -> np.ndarray | None:
    """A kept forecast as float32, what the pipeline keeps (format 1 wrote float64)."""
    return None if a is None else a.astype(np.float32)


class Checkpoint:
    """A SQLite file of per-asset blobs, tagged with the contract they were written under."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS assets (asset TEXT PRIMARY KEY, state BLOB)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            # Operations state (maintenance, shelves, acknowledgements, pending accounting): per
            # asset JSON that does not depend on the model, so a model change keeps it.
            self._db.execute("CREATE TABLE IF NOT EXISTS ops (asset TEXT PRIMARY KEY, state TEXT)")
            # Whole-agent state kept now and then rather than per asset (the drift histograms).
            self._db.execute("CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB)")
        except sqlite3.Error as exc:
            raise VigilError(f"state checkpoint {path}: {exc}") from exc

    def contract(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'contract'").fetchone()
        return None if row is None else str(row[0])

    def save(self, contract: str, rows: dict[str, bytes], removed: set[str] | None = None) -> None:
        """Write changed assets (and drop removed ones) in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('contract', ?)", (contract,))
            db.executemany("INSERT OR REPLACE INTO assets VALUES (?, ?)", rows.items())
            if removed:
                db.executemany("DELETE FROM assets WHERE asset = ?", ((a,) for a in removed))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    def clear(self) -> None:
        self._db.execute("DELETE FROM assets")

    def load(self) -> dict[str, bytes]:
        return {str(a): bytes(b) for a, b in self._db.execute("SELECT asset, state FROM assets")}

    def save_ops(self, rows: dict[str, str | None]) -> None:
        """Write per-asset operations state in one transaction (None deletes the asset's row)."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO ops VALUES (?, ?)",
                           ((a, v) for a, v in rows.items() if v is not None))
            db.executemany("DELETE FROM ops WHERE asset = ?", ((a,) for a, v in rows.items() if v is None))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    def load_ops(self) -> dict[str, str]:
        return {str(a): str(v) for a, v in self._db.execute("SELECT asset, state FROM ops")}

    def save_blob(self, key: str, value: bytes, family: str = "") -> None:
        """Replace the blob under `key`; with a `family` (a key prefix, e.g. "drift:"), drop the
        family's other blobs (they belonged to other models)."""
        db = self._db
        db.execute("BEGIN")
        try:
            if family:
                db.execute("DELETE FROM blobs WHERE key != ? AND substr(key, 1, ?) = ?",
                           (key, len(family), family))
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (key, value))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    def load_blob(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()
