"""Alerts: payloads, stable ids, and the disk-backed outbox they wait in until acknowledged."""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from agent.errors import VigilError
from agent.metrics import Metrics

_ID_NAMESPACE = uuid.UUID("6f0c1b8e-5a52-4c1e-9a57-0d3b4f1f7a10")


def rfc3339_ms(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, e.g. 2026-01-01T00:00:00.000Z.

    What `datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")` gives (the
    microsecond rounded half to even, then cut to the millisecond), at a third of its cost:
    every risk message carries one, and the date and time of day repeat from one to the next.
    """
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)  # half to even, like datetime's
    sec = int(whole)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    return f"{_second(sec)}.{us // 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _second(sec: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a whole epoch second (UTC)."""
    return datetime.fromtimestamp(sec, UTC).isoformat()[:19]


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
            # A short busy timeout: a write that cannot happen must fail fast and loudly,
            # not stall the worker thread.
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                       timeout=0.5)
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


# Made once: `json.dumps` with options builds a new encoder on every call (a third of its cost).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(doc: dict[str, Any]) -> bytes:
    """Compact JSON; NaN and infinities are refused (ValueError), never written."""
    return _ENCODER.encode(doc).encode()


def encode_fast(doc: dict[str, Any]) -> bytes:
    """`encode` through orjson, ~10x faster, for the one document every scored window makes.

    The same JSON values; a float below 1e-4 may be spelt differently (`5e-05` as `0.00005`).
    orjson writes NaN and infinities as `null` instead of refusing them, so a document in which
    `null` appears goes through `encode`, which refuses those and writes a real None as `null`
    (a surprise not known yet).
    """
    out = orjson.dumps(doc)
    return out if b"null" not in out else encode(doc)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int: ...


class AlertSender:
    """Alerts go into the outbox first and leave it only on the broker's PUBACK.

    Each outbox entry is handed to paho once per process: paho itself re-sends unacknowledged
    QoS 1 messages after a reconnect. Entries left by an earlier run are handed over at a
    bounded rate, so a long outage does not end in a flood. A PUBACK that carries a failure
    reason (MQTT 5: not authorised, quota exceeded...) is not a delivery: the alert stays in
    the outbox and is sent again after `retry_s`.
    """

    def __init__(self, outbox: Outbox, link: Publisher, metrics: Metrics, log: Any,
                 resend_per_s: float = 50.0, retry_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.link = link
        self.metrics = metrics
        self.log = log
        self.resend_per_s = resend_per_s
        self.retry_s = retry_s
        self.clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[int, Pending] = {}   # paho mid -> what it carries
        self.acks: deque[tuple[int, bool]] = deque()  # (mid, delivered), from paho's thread
        self._backlog: deque[Pending] = deque()
        self._retry: deque[tuple[float, Pending]] = deque()
        self._budget = 0.0
        self._last = clock()
        self._refused_logged = -1e9

    def _hand(self, p: Pending) -> None:
        # Publish and record under one lock; `drain` takes the same lock, so an ack is never
        # looked up before its mid is recorded.
        with self._lock:
            mid = self.link.publish(p.topic, p.payload, qos=1)
            if p.id >= 0:
                self._inflight[mid] = p

    def resume(self) -> int:
        """Queue what an earlier run left pending; `pump` hands it over. Returns how many."""
        self._backlog.extend(self.outbox.pending(limit=self.outbox.max_items))
        self.metrics.outbox_depth.set(len(self.outbox))
        return len(self._backlog)

    def pump(self) -> None:
        """Hand over backlog and due retries at no more than `resend_per_s` messages a second."""
        now = self.clock()
        while self._retry and self._retry[0][0] <= now:
            self._backlog.append(self._retry.popleft()[1])
        self._budget = min(self._budget + (now - self._last) * self.resend_per_s, self.resend_per_s)
        self._last = now
        while self._backlog and self._budget >= 1.0:
            self._hand(self._backlog.popleft())
            self._budget -= 1.0

    def send(self, topic: str, payload: bytes, level: str) -> bool:
        """Persist then publish an alert. Returns False if it could not be persisted.

        With the outbox full, returns to `ok` are dropped (counted); warnings and criticals
        are kept whatever the size. If the disk fails, the alert is still published, once.
        """
        if self.outbox.full and level == "ok":
            self.metrics.alerts_dropped.labels(level).inc()
            self.log.error("outbox_full_alert_dropped", topic=topic, pending=len(self.outbox))
            return False
        try:
            item_id = self.outbox.add(topic, payload)
        except (sqlite3.Error, OSError) as exc:
            self.log.error("outbox_write_failed", error=str(exc), topic=topic)
            self.metrics.outbox_errors.inc()
            self._hand(Pending(-1, topic, payload))  # best effort: not persisted, sent once
            return False
        if self.outbox.full:
            self.log.error("outbox_full", pending=len(self.outbox), limit=self.outbox.max_items)
        self._hand(Pending(item_id, topic, payload))
        self.metrics.outbox_depth.set(len(self.outbox))
        return True

    def drain(self) -> int:
        """Settle acknowledgements: delivered alerts leave the outbox, refused ones wait to retry."""
        done: list[int] = []
        with self._lock:
            while self.acks:
                mid, delivered = self.acks.popleft()
                item = self._inflight.pop(mid, None)
                if item is None:
                    continue
                if delivered:
                    done.append(item.id)
                else:
                    self._retry.append((self.clock() + self.retry_s, item))
        if self._retry and self.clock() - self._refused_logged > 60.0:
            self._refused_logged = self.clock()
            self.log.error("alerts_refused_by_broker", waiting=len(self._retry),
                           hint="check the broker's ACL for the alerts topic")
        for item_id in done:
            try:
                self.outbox.ack(item_id)
            except sqlite3.Error as exc:  # re-sent after a restart: a duplicate, never a loss
                self.log.error("outbox_ack_failed", error=str(exc))
        if done:
            self.metrics.outbox_depth.set(len(self.outbox))
        return len(done)

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + len(self._backlog)
