"""Ingest: topics mapped onto asset and channel, payloads decoded into readings or reasons.

A decoder is pure: (topic, payload, arrival time) in, readings and rejection reasons out.
It keeps nothing per reading, so the network side stays cheap and easy to test.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent.config import SubscriptionConfig
from agent.names import valid_name


class Reason(StrEnum):
    """Why a reading or message was rejected: the `reason` label of the rejection counter."""

    MALFORMED = "malformed"        # not decodable at all (counted once per message)
    PAYLOAD_SIZE = "payload_size"  # over max_payload_bytes
    TOPIC = "topic"                # topic does not fit the subscription's template
    NAME = "name"                  # asset or channel name that cannot reach a topic
    TYPE = "type"                  # value not a JSON number (bool, string, null...)
    NONFINITE = "nonfinite"        # NaN or infinity
    TS = "ts"                      # missing, null or unparseable timestamp
    FUTURE = "future"              # more than max_future_skew ahead of the wall clock
    TOO_OLD = "too_old"            # before the floor
    LATE = "late"                  # older than the asset's watermark minus allowed lateness
    DUPLICATE = "duplicate"        # same asset, channel and ts as a reading already held
    CHANNEL = "unknown_channel"    # not one of the model's channels
    ASSET_LIMIT = "asset_limit"    # a new asset beyond max_assets
    NOT_MINE = "not_mine"          # an asset this agent does not serve (not a rejection)

    @property
    def is_rejection(self) -> bool:
        return self is not Reason.NOT_MINE


# Beyond this a value is not a measurement; it would also overflow float32 once normalised.
MAX_ABS_VALUE = 1e15
_DEEP = re.compile(rb"[\[{](?:\s*[\[{]){100}")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class Reading:
    asset: str
    channel: int
    ts: float
    value: float


@dataclass(frozen=True)
class TopicTemplate:
    """Maps topic levels onto named parts, e.g. `plant/{line}/{asset}/{channel}`."""

    levels: tuple[str | None, ...]   # a literal level, or None where a part is named
    names: tuple[str | None, ...]

    @classmethod
    def parse(cls, template: str) -> TopicTemplate:
        levels: list[str | None] = []
        names: list[str | None] = []
        for part in template.split("/"):
            if part.startswith("{") and part.endswith("}"):
                levels.append(None)
                names.append(part[1:-1])
            else:
                levels.append(part)
                names.append(None)
        return cls(tuple(levels), tuple(names))

    def match(self, topic: str) -> dict[str, str] | None:
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            return None
        out: dict[str, str] = {}
        for part, lit, name in zip(parts, self.levels, self.names, strict=True):
            if lit is not None:
                if part != lit:
                    return None
            elif name is not None:
                out[name] = part
        return out


def _finite(raw: int | float) -> float | None:
    """`raw` as a float, or None if it is NaN, infinite, or too large for sensor data."""
    try:
        v = float(raw)  # a JSON integer of 400 digits overflows here
    except OverflowError:
        return None
    return v if math.isfinite(v) and abs(v) <= MAX_ABS_VALUE else None


def parse_ts(raw: Any, fmt: str) -> float | None:
    """Event time in epoch seconds, or None if `raw` is not a timestamp in `fmt`."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int | float):
        if _finite(raw) is None:
            return None
        if fmt == "epoch_ms" or (fmt == "auto" and abs(raw) >= 1e11):
            return float(raw) / 1000.0
        return float(raw) if fmt in ("auto", "epoch_s") else None
    if isinstance(raw, str) and fmt in ("auto", "rfc3339"):
        if not _RFC3339.match(raw):
            return None  # fromisoformat alone would take week dates and other ISO 8601 forms
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None  # RFC 3339 requires an offset; a naive time is ambiguous
        return dt.timestamp()
    return None


class Decoder:
    """Decodes messages of one subscription into readings onto the model's channels."""

    def __init__(self, sub: SubscriptionConfig, channels: tuple[str, ...]) -> None:
        self.sub = sub
        self.template = TopicTemplate.parse(sub.template)
        self._index = {c: i for i, c in enumerate(channels)}
        # Source channel name -> (model channel index, scale, offset), resolved once.
        self._cache: dict[str, tuple[int, float, float] | None] = {}

    def _channel(self, source: str) -> tuple[int, float, float] | None:
        hit = self._cache.get(source, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        target = self.sub.channel_map.get(source, source)
        idx = self._index.get(target)
        res = (None if idx is None
               else (idx, self.sub.scale.get(target, 1.0), self.sub.offset.get(target, 0.0)))
        if len(self._cache) < 4096:  # bounded: garbage channel names must not grow memory
            self._cache[source] = res
        return res

    def decode(self, topic: str, payload: bytes, arrival: float,
               rejects: list[Reason]) -> list[Reading]:
        """Readings in the message; each rejected reading (or the whole message) adds a reason."""
        parts = self.template.match(topic)
        if parts is None:
            rejects.append(Reason.TOPIC)
            return []
        asset = parts["asset"]
        if not valid_name(asset):
            rejects.append(Reason.NAME)
            return []
        if _DEEP.search(payload):
            rejects.append(Reason.MALFORMED)  # "[[[[..." would drive json.loads to its recursion limit
            return []
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..."
            rejects.append(Reason.MALFORMED)
            return []
        if self.sub.codec == "json":
            channel = parts.get("channel", self.sub.channel or "")
            return self._single(asset, channel, doc, arrival, rejects)
        items = doc if isinstance(doc, list) else [doc]
        out: list[Reading] = []
        for item in items:
            out.extend(self._multi(asset, item, arrival, rejects))
        if not out and not rejects:
            rejects.append(Reason.MALFORMED)  # `[]` or empty values: nothing in it, yet counted
        return out

    def _ts(self, doc: Any, arrival: float, rejects: list[Reason]) -> float | None:
        if self.sub.ts_format == "arrival":
            return arrival
        ts = parse_ts(doc.get(self.sub.ts_field), self.sub.ts_format)
        if ts is None:
            rejects.append(Reason.TS)
        return ts

    def _value(self, asset: str, source: str, raw: Any, ts: float,
               rejects: list[Reason]) -> Reading | None:
        if not valid_name(source):
            rejects.append(Reason.NAME)
            return None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            rejects.append(Reason.TYPE)
            return None
        ch = self._channel(source)
        if ch is None:
            rejects.append(Reason.CHANNEL)
            return None
        idx, scale, offset = ch
        value = _finite(raw)
        if value is not None:
            value = _finite(value * scale + offset)  # scaling must not push it out of range
        if value is None:
            rejects.append(Reason.NONFINITE)
            return None
        return Reading(asset, idx, ts, value)

    def _single(self, asset: str, channel: str, doc: Any, arrival: float,
                rejects: list[Reason]) -> list[Reading]:
        if isinstance(doc, int | float) and not isinstance(doc, bool):
            doc = {self.sub.value_field: doc}  # a bare number means "now"
            ts: float | None = arrival
        elif isinstance(doc, dict):
            ts = self._ts(doc, arrival, rejects)
        else:
            rejects.append(Reason.MALFORMED)
            return []
        if ts is None:
            return []
        if self.sub.value_field not in doc:
            rejects.append(Reason.TYPE)
            return []
        r = self._value(asset, channel, doc[self.sub.value_field], ts, rejects)
        return [] if r is None else [r]

    def _multi(self, asset: str, item: Any, arrival: float, rejects: list[Reason]) -> list[Reading]:
        if not isinstance(item, dict) or not isinstance(item.get(self.sub.values_field), dict):
            rejects.append(Reason.MALFORMED)
            return []
        ts = self._ts(item, arrival, rejects)
        if ts is None:
            return []
        out = []
        for source, raw in item[self.sub.values_field].items():
            r = self._value(asset, source, raw, ts, rejects)
            if r is not None:
                out.append(r)
        return out
