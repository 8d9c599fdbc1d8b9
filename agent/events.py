"""Plant events from the CMMS bridge, and the events file that labels the next refit.

A bridge publishes `{"ts", "event", "work_order"?}` to `{prefix}/events/{asset}`. Each event is
appended to `events.csv` in the state directory, in the training package's events-file format
(`ts,asset,event` with event `failure` or `maintenance`, the latter marking any service that
renews the machine), with the CMMS event and work order in extra columns that training ignores:
`vigil-train fit --events state/events.csv` reads it as it is.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.alerts import rfc3339_ms
from agent.config import WindowsConfig
from agent.ingest import loads, parse_ts
from agent.names import valid_name

EVENTS = ("maintenance_start", "maintenance_end", "failure", "repair")
# Training knows two kinds: a failure, and maintenance (a renewal: cells after it describe
# another machine). Every CMMS event bounds a machine's life, so each maps to one of them.
TRAINING_KIND = {"failure": "failure", "repair": "maintenance", "maintenance_start": "maintenance",
                 "maintenance_end": "maintenance"}
HEADER = ("ts", "asset", "event", "cmms_event", "work_order")


@dataclass(frozen=True)
class PlantEvent:
    """One CMMS event for one asset, at its event time."""

    asset: str
    ts: float
    event: str
    work_order: str = ""


def parse_event(asset: str, payload: bytes) -> PlantEvent | str:
    """The event in a message, or a one-line reason why it is not one."""
    if not valid_name(asset):
        return "invalid asset name"
    try:
        doc: Any = loads(payload)
    except ValueError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    event = doc.get("event")
    if event not in EVENTS:
        return f"event must be one of {', '.join(EVENTS)}"
    ts = parse_ts(doc.get("ts"), "auto")
    if ts is None:
        return "ts missing or not a timestamp"
    wo = doc.get("work_order", "")
    if not isinstance(wo, str | int) or isinstance(wo, bool):
        return "work_order must be a string"
    return PlantEvent(asset, ts, str(event), str(wo)[:200])


def within_time_bounds(ev: PlantEvent, windows: WindowsConfig, wall: float) -> PlantEvent | str:
    """Events obey the readings' time bounds; the event, or why it is refused."""
    why = windows.out_of_bounds(ev.ts, wall)
    if why == "future":
        return "ts is in the future"  # a repair "next year" would refuse every reading till then
    if why == "too_old":
        return f"ts is before {windows.ts_floor.date().isoformat()} ([windows] ts_floor)"
    return ev


class EventLog:
    """Appends events to a CSV file; each line is flushed and synced, since labels are precious."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            self._write(",".join(HEADER) + "\n")

    def _write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def append(self, ev: PlantEvent) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            [rfc3339_ms(ev.ts), ev.asset, TRAINING_KIND[ev.event], ev.event, ev.work_order])
        self._write(buf.getvalue())
