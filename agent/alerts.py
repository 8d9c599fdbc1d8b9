"""Alerts: payloads, stable ids, and the disk-backed outbox they wait in until acknowledged."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import VigilError

_ID_NAMESPACE = uuid.UUID("6f0c1b8e-5a52-4c1e-9a57-0d3b4f1f7a10")


def rfc3339_ms(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, e.g. 2026-01-01T00:00:00.000Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_id(agent_id: str, asset: str, cell: int, level: str, previous: str) -> str:
    """A transition's id: derived from what decided it, so a re-sent or re-decided
    transition (after a crash, a replay) keeps the same id and consumers can drop duplicates."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{agent_id}/{asset}/{cell}/{previous}/{level}"))


@dataclass(frozen=True)
class Pending:
    id: int
    topic: str
    payload: bytes


class Outbox:
    """A SQLite (WAL) queue of messages that leave only when the broker acknowledges them."""

    def __init__(self, path: Path, max_items: int) -> None:
        self.max_items = max_items
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                             " topic TEXT NOT NULL, payload BLOB NOT NULL)")
            self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            raise VigilError(f"outbox {path}: {exc}") from exc

    def add(self, topic: str, payload: bytes) -> int:
        """Persist a message before it is published; returns its id."""
        with self._lock:
            cur = self._db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            self._count += 1
            return int(cur.lastrowid or 0)

    def ack(self, item_id: int) -> None:
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._count -= cur.rowcount

    def pending(self, limit: int = 1000) -> list[Pending]:
        """Oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [Pending(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.max_items

    def close(self) -> None:
        with self._lock:
            self._db.close()


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
