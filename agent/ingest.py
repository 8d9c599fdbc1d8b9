"""Ingest: topics mapped onto asset and channel, payloads decoded into readings or reasons.

A decoder is pure: (topic, payload, arrival time) in, readings and rejection reasons out.
It keeps nothing per reading, so the network side stays cheap and easy to test.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

from agent.config import SubscriptionConfig
from agent.names import valid_name

_orjson: Any
try:  # a speed-up (see `loads`); json alone gives the same results
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps it optional
    _orjson = None


class Reason(StrEnum):
    """Why a reading or message was not written: the `reason` label of the rejection counter, or
    of the ignored counter for readings that are normal traffic but not for the model."""

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
    ASSET_LIMIT = "asset_limit"    # a new asset beyond max_assets
    NOT_MINE = "not_mine"          # an asset this agent does not serve (not a rejection)
    # Sparkplug B session faults (agent.sparkplug): each also leads to a rebirth request.
    NO_BIRTH = "no_birth"          # data from an edge node or device with no current birth
    ALIAS = "unknown_alias"        # a metric alias (or name) its birth did not define
    SEQUENCE = "sequence"          # a seq number already passed: a duplicate or a message too late
    # Ignored, not rejected: normal traffic the model has no use for.
    UNMAPPED = "unmapped"          # a tag or channel that is not one of the model's (after channel_map)
    UNSUPPORTED = "unsupported"    # a Sparkplug datatype that is not a number (Boolean, String, DataSet...)
    QUALITY = "bad_quality"        # marked bad by its source (Sparkplug is_null or Quality, quality_field)

    @property
    def is_ignored(self) -> bool:
        """Counted in `vigil_readings_ignored_total`, not as bad input."""
        return self in _IGNORED

    @property
    def is_rejection(self) -> bool:
        return self is not Reason.NOT_MINE and self not in _IGNORED


IGNORED: tuple[Reason, ...] = (Reason.UNMAPPED, Reason.UNSUPPORTED, Reason.QUALITY)
_IGNORED = frozenset(IGNORED)


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


QualityKey: TypeAlias = tuple[str, object]


def quality_key(q: object) -> QualityKey:
    """A quality value as compared with `good_quality`: text without case, numbers by value."""
    if isinstance(q, bool):
        return ("bool", q)
    if isinstance(q, int | float):
        return ("number", float(q))
    if isinstance(q, str):
        return ("text", q.strip().casefold())
    return ("other", repr(q))


def good_set(values: Iterable[object]) -> frozenset[QualityKey]:
    """The `good_quality` values of a subscription, ready to look a reading's quality up."""
    return frozenset(quality_key(v) for v in values)


Cell: TypeAlias = tuple[float, list[int], list[float]]
"""The readings of one message that share an event time: (ts, model channel indices, values)."""


def loads(payload: bytes) -> Any:
    """`json.loads`, through orjson when it is installed and the payload is plain JSON.

    orjson parses a reading 5-10x faster. Whatever it refuses (NaN, Infinity, a BOM, UTF-16,
    lone surrogates...) goes to `json.loads`, so both paths accept and reject alike and return
    the same, but for one case: an integer past 64 bits comes back as the nearest float, not
    as an int. Such a number is far beyond MAX_ABS_VALUE, so a value gets the same reason
    either way, and a timestamp the same float.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(payload)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(payload)


class Decoder:
    """Decodes messages of one subscription into readings onto the model's channels.

    The hot path (`decode_cells`) keeps no object per reading: a topic is parsed and checked
    once and cached (bounded), channel names are resolved once, and a message comes out as
    lists of channel indices and values per event time, written straight into the window.
    """

    def __init__(self, sub: SubscriptionConfig, channels: tuple[str, ...],
                 topic_cache: int = 65_536) -> None:
        self.sub = sub
        self.template = TopicTemplate.parse(sub.template)
        self._index = {c: i for i, c in enumerate(channels)}
        # Source channel name -> (model channel index, scale, offset), resolved once.
        self._cache: dict[str, tuple[int, float, float] | None] = {}
        # Source channel name -> (valid name, resolution): both checks, once per name.
        self._sources: dict[str, tuple[bool, tuple[int, float, float] | None]] = {}
        # Topic -> (asset, source channel, None) or (None, "", reason): parsed once. Bounded
        # (~200 bytes an entry; 65,536 covers 4,600 assets of 14 one-reading topics each).
        self._topics: dict[str, tuple[str | None, str, Reason | None]] = {}
        self._topic_cache = topic_cache
        self._multi_codec = sub.codec != "json"
        self._fixed_channel = sub.channel or ""
        self._value_field = sub.value_field
        self._values_field = sub.values_field
        self._quality_field = sub.quality_field
        self._good = good_set(sub.good_quality)

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

    def _source(self, source: str) -> tuple[bool, tuple[int, float, float] | None]:
        hit = (valid_name(source), self._channel(source))
        if len(self._sources) < 4096:
            self._sources[source] = hit
        return hit

    def _topic(self, topic: str) -> tuple[str | None, str, Reason | None]:
        parts = self.template.match(topic)
        hit: tuple[str | None, str, Reason | None]
        if parts is None:
            hit = (None, "", Reason.TOPIC)
        elif not valid_name(parts["asset"]):
            hit = (None, "", Reason.NAME)
        else:  # interned: the 14 topics of an asset share one string, and dict lookups compare ids
            hit = (sys.intern(parts["asset"]), sys.intern(parts.get("channel", self._fixed_channel)), None)
        if len(self._topics) >= self._topic_cache:
            self._topics.clear()  # bounded: a flood of new topics costs time, never memory
        self._topics[topic] = hit
        return hit

    def forget(self, topic: str) -> None:
        """Drop a topic's parse from the cache (its asset is not held: no memory for it)."""
        self._topics.pop(topic, None)

    @property
    def cached_topics(self) -> int:
        return len(self._topics)

    def decode(self, topic: str, payload: bytes, arrival: float,
               rejects: list[Reason], bad: list[Cell] | None = None) -> list[Reading]:
        """Readings in the message; each rejected reading (or the whole message) adds a reason."""
        got = self.decode_cells(topic, payload, arrival, rejects, bad)
        if got is None:
            return []
        asset, cells = got
        return [Reading(asset, c, ts, v) for ts, chans, vals in cells
                for c, v in zip(chans, vals, strict=True)]

    def decode_cells(self, topic: str, payload: bytes, arrival: float, rejects: list[Reason],
                     bad: list[Cell] | None = None) -> tuple[str, list[Cell]] | None:
        """The message's asset and its readings grouped by event time (None: nothing to write).

        Each rejected or ignored reading (or the whole message) adds a reason to `rejects`. With a
        `quality_field`, readings of bad quality add `bad_quality` and go to `bad` (their values
        NaN): they are not written, and their channels stop holding.
        """
        asset, source, why = self._topics.get(topic) or self._topic(topic)
        if asset is None:
            rejects.append(why)  # type: ignore[arg-type]
            return None
        if _DEEP.search(payload):
            rejects.append(Reason.MALFORMED)  # "[[[[..." would drive json.loads to its recursion limit
            return None
        try:
            doc = loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..."
            rejects.append(Reason.MALFORMED)
            return None
        if bad is None:
            bad = []
        n_bad = len(bad)
        if not self._multi_codec:
            cell = self._single(source, doc, arrival, rejects, bad)
            if cell is None:
                return (asset, []) if len(bad) > n_bad else None
            return asset, [cell]
        out = []
        for item in doc if type(doc) is list else (doc,):
            cell = self._multi(item, arrival, rejects, bad)
            if cell is not None:
                out.append(cell)
        if not out:
            if len(bad) > n_bad:
                return asset, []
            if not rejects:
                rejects.append(Reason.MALFORMED)  # `[]` or empty values: nothing in it, yet counted
            return None
        return asset, out

    def _ts(self, doc: Any, arrival: float, rejects: list[Reason]) -> float | None:
        if self.sub.ts_format == "arrival":
            return arrival
        ts = parse_ts(doc.get(self.sub.ts_field), self.sub.ts_format)
        if ts is None:
            rejects.append(Reason.TS)
        return ts

    def _bad_quality(self, doc: Any) -> Any:
        """The item's quality field if it is present and not good (None: good, or no quality)."""
        q = doc.get(self._quality_field)
        if q is None or type(q) is dict:
            return q
        return None if quality_key(q) in self._good else q

    def _bad_channel(self, source: str, rejects: list[Reason]) -> int | None:
        """The model channel a reading of bad quality is for, or None with the reason added."""
        ok, ch = self._sources.get(source) or self._source(source)
        if not ok:
            rejects.append(Reason.NAME)
            return None
        if ch is None:
            rejects.append(Reason.UNMAPPED)
            return None
        rejects.append(Reason.QUALITY)
        return ch[0]

    def _value(self, source: str, raw: Any, rejects: list[Reason]) -> tuple[int, float] | None:
        """One value onto its model channel, or None with the reason added."""
        ok, ch = self._sources.get(source) or self._source(source)
        if not ok:
            rejects.append(Reason.NAME)
            return None
        kind = type(raw)  # JSON gives exactly int, float, bool, str, None, list or dict
        if kind is not float and kind is not int:
            rejects.append(Reason.TYPE)
            return None
        if ch is None:
            rejects.append(Reason.UNMAPPED)
            return None
        idx, scale, offset = ch
        value = _finite(raw)
        if value is not None and (scale != 1.0 or offset != 0.0):
            value = _finite(value * scale + offset)  # scaling must not push it out of range
        if value is None:
            rejects.append(Reason.NONFINITE)
            return None
        return idx, value

    def _single(self, source: str, doc: Any, arrival: float, rejects: list[Reason],
                bad: list[Cell]) -> Cell | None:
        kind = type(doc)
        if kind is int or kind is float:
            ts = arrival  # a bare number means "now"
            raw = doc
        elif kind is dict:
            got_ts = self._ts(doc, arrival, rejects)
            if got_ts is None:
                return None
            ts = got_ts
            if self._quality_field is not None and self._bad_quality(doc) is not None:
                # Bad quality: whatever the value field holds (often null) is not a measurement.
                idx = self._bad_channel(source, rejects)
                if idx is not None:
                    bad.append((ts, [idx], [math.nan]))
                return None
            if self._value_field not in doc:
                rejects.append(Reason.TYPE)
                return None
            raw = doc[self._value_field]
        else:
            rejects.append(Reason.MALFORMED)
            return None
        got = self._value(source, raw, rejects)
        return None if got is None else (ts, [got[0]], [got[1]])

    def _multi(self, item: Any, arrival: float, rejects: list[Reason], bad: list[Cell]) -> Cell | None:
        if type(item) is not dict or type(values := item.get(self._values_field)) is not dict:
            rejects.append(Reason.MALFORMED)
            return None
        ts = self._ts(item, arrival, rejects)
        if ts is None:
            return None
        if self._quality_field is not None and (q := self._bad_quality(item)) is not None:
            # One quality for the whole message, or {channel: quality} for some of its channels.
            per_channel = type(q) is dict
            bad_chans: list[int] = []
            for source in list(values):
                if per_channel and (source not in q or quality_key(q[source]) in self._good):
                    continue
                idx = self._bad_channel(source, rejects)
                del values[source]
                if idx is not None:
                    bad_chans.append(idx)
            if bad_chans:
                bad.append((ts, bad_chans, [math.nan] * len(bad_chans)))
        chans: list[int] = []
        vals: list[float] = []
        sources = self._sources
        for source, raw in values.items():
            # `_value` inlined for the common case (a known channel, a plain finite float,
            # no scaling): 14 readings a message make the call itself count.
            hit = sources.get(source)
            if (hit is not None and hit[0] and type(raw) is float and -MAX_ABS_VALUE <= raw <= MAX_ABS_VALUE
                    and (ch := hit[1]) is not None and ch[1] == 1.0 and ch[2] == 0.0):
                chans.append(ch[0])
                vals.append(raw)
                continue
            got = self._value(source, raw, rejects)
            if got is not None:
                chans.append(got[0])
                vals.append(got[1])
        return (ts, chans, vals) if chans else None
