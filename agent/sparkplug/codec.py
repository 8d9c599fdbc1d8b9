"""Sparkplug B wire format: topics, protobuf payloads, metric values, and encoders for them.

Everything here is stateless. What a message means in its session (aliases, seq, deaths)
is the host's business (agent.sparkplug.host).
Spec: Eclipse Sparkplug 3.0.0, §4.1 (topic namespace) and §6.4 (Sparkplug B payload).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from google.protobuf.message import DecodeError

from agent.ingest import MAX_ABS_VALUE, Reading, Reason
from agent.names import valid_name
from agent.sparkplug.sparkplug_b_pb2 import DataType, Payload

Metric = Payload.Metric

NAMESPACE: Final = "spBv1.0"  # [tck-id-topic-structure-namespace-a]
BD_SEQ: Final = "bdSeq"
REBIRTH: Final = "Node Control/Rebirth"
SEQ_MODULUS: Final = 256  # seq runs 0..255 and wraps to 0 ([tck-id-payloads-sequence-num-incrementing])


class MessageType(StrEnum):
    """The message_type topic level (§4.1.3)."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"
    NDATA = "NDATA"
    DDATA = "DDATA"
    NCMD = "NCMD"
    DCMD = "DCMD"
    STATE = "STATE"

    @property
    def is_device(self) -> bool:
        """Whether the topic carries a device_id level.

        [tck-id-topic-structure-namespace-device-id-associated-message-types]
        """
        return self in (MessageType.DBIRTH, MessageType.DDEATH, MessageType.DDATA, MessageType.DCMD)


@dataclass(frozen=True, slots=True)
class Topic:
    """`spBv1.0/{group}/{type}/{node}[/{device}]`, or `spBv1.0/STATE/{host}` (group empty, node = host)."""

    group: str
    type: MessageType
    node: str
    device: str | None = None

    def __str__(self) -> str:
        if self.type is MessageType.STATE:
            return f"{NAMESPACE}/STATE/{self.node}"
        tail = f"/{self.device}" if self.device is not None else ""
        return f"{NAMESPACE}/{self.group}/{self.type}/{self.node}{tail}"


def parse_topic(topic: str) -> Topic | None:
    """The Sparkplug topic, or None when `topic` is not one (§4.1, [tck-id-topic-structure])."""
    parts = topic.split("/")
    if parts[0] != NAMESPACE:
        return None
    if len(parts) == 3 and parts[1] == "STATE":
        return Topic("", MessageType.STATE, parts[2]) if parts[2] else None
    if len(parts) not in (4, 5):
        return None
    try:
        kind = MessageType(parts[2])
    except ValueError:
        return None
    if kind is MessageType.STATE or (len(parts) == 5) != kind.is_device:
        return None
    if not all(parts[1:]) or parts[1] == "STATE":
        return None
    return Topic(parts[1], kind, parts[3], parts[4] if kind.is_device else None)


def ids_valid(t: Topic) -> bool:
    """Group, edge node and device ids fit as names (printable, at most 128 characters)."""
    return all(valid_name(p) for p in (t.group, t.node, t.device) if p)


def parse_payload(data: bytes) -> Payload | None:
    """The decoded payload, or None if `data` is not a Sparkplug B protobuf."""
    msg = Payload()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError):
        return None
    return msg


def text(value: str | bytes) -> str | None:
    """A proto2 string field as str; upb hands back bytes when they are not valid UTF-8."""
    return value if isinstance(value, str) else None


# §6.4.16/§6.4.17: integer types travel in int_value (uint32) or long_value (uint64) as two's
# complement. Producers differ in the width they sign-extend to (Tahu Java: 32/64 bits, Tahu
# Python: the type's own width), so the value is masked to the type's width, then signed.
_INTEGERS: Final[Mapping[int, tuple[int, bool]]] = {
    DataType.Int8: (8, True), DataType.Int16: (16, True), DataType.Int32: (32, True),
    DataType.Int64: (64, True), DataType.UInt8: (8, False), DataType.UInt16: (16, False),
    DataType.UInt32: (32, False), DataType.UInt64: (64, False),
}
_FLOATS: Final = frozenset((DataType.Float, DataType.Double))
NUMERIC: Final = frozenset(_INTEGERS) | _FLOATS
KNOWN_TYPES: Final = frozenset(DataType.values())


def metric_value(m: Metric, datatype: int) -> float | Reason:
    """A numeric metric's value as a float, or Reason.TYPE for anything else.

    Booleans, strings, dates, data sets, templates, arrays, null values, unknown datatypes
    and a value field that does not fit the datatype are all `type`: not a measurement.
    """
    if m.is_null or datatype not in NUMERIC:
        return Reason.TYPE
    kind = m.WhichOneof("value")
    if datatype in _FLOATS:
        if kind == "float_value":
            return m.float_value  # float32 on the wire: ~7 significant digits
        return m.double_value if kind == "double_value" else Reason.TYPE
    if kind == "int_value":
        raw = m.int_value
    elif kind == "long_value":
        raw = m.long_value
    else:
        return Reason.TYPE
    bits, signed = _INTEGERS[datatype]
    raw &= (1 << bits) - 1
    if signed and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return float(raw)


QUALITY_PROPERTY: Final = "quality"  # compared without case: Ignition writes "Quality"


def _property_value(v: Payload.PropertyValue) -> object:
    """A property's value as a plain Python value (None: null or a kind a quality never is)."""
    if v.is_null:
        return None
    kind = v.WhichOneof("value")
    if kind in ("int_value", "long_value"):
        raw = v.int_value if kind == "int_value" else v.long_value
        width = _INTEGERS.get(v.type, (64 if kind == "long_value" else 32, True))
        bits, signed = width
        raw &= (1 << bits) - 1
        if signed and raw >= 1 << (bits - 1):
            raw -= 1 << bits  # Ignition 8 quality codes are signed 32-bit: bad ones are negative
        return raw
    if kind in ("float_value", "double_value", "boolean_value", "string_value"):
        return getattr(v, kind)
    return None


def metric_quality(m: Metric) -> object | None:
    """The metric's Quality property (e.g. 192, Ignition's and OPC DA's "good"), or None."""
    if not m.HasField("properties"):
        return None
    props = m.properties
    for key, value in zip(props.keys, props.values, strict=False):
        if isinstance(key, str) and key.casefold() == QUALITY_PROPERTY:
            return _property_value(value)
    return None


def event_ts(m: Metric, payload: Payload, arrival: float) -> float:
    """Epoch seconds of a metric: its own timestamp, else the payload's, else arrival (all UTC ms)."""
    if m.HasField("timestamp"):
        return m.timestamp / 1000.0
    if payload.HasField("timestamp"):
        return payload.timestamp / 1000.0
    return arrival


class ChannelMap:
    """Metric names onto the model's channels: `channel_map` first, then the name itself.

    The same rules as the JSON codecs (agent.ingest.Decoder): per-channel `scale` and
    `offset` apply to the mapped channel, and only finite values within bounds pass.
    """

    def __init__(self, channels: tuple[str, ...], channel_map: Mapping[str, str] | None = None,
                 scale: Mapping[str, float] | None = None, offset: Mapping[str, float] | None = None) -> None:
        self._index = {c: i for i, c in enumerate(channels)}
        self._map = dict(channel_map or {})
        self._scale = dict(scale or {})
        self._offset = dict(offset or {})
        self._cache: dict[str, tuple[int, float, float] | None] = {}

    def lookup(self, name: str) -> tuple[int, float, float] | None:
        """(channel index, scale, offset) for a metric name, or None if the model lacks it."""
        if name in self._cache:
            return self._cache[name]
        target = self._map.get(name, name)
        idx = self._index.get(target)
        res = None if idx is None else (idx, self._scale.get(target, 1.0), self._offset.get(target, 0.0))
        if len(self._cache) < 4096:  # bounded: garbage metric names must not grow memory
            self._cache[name] = res
        return res

    def reading(self, asset: str, name: str, value: float, ts: float) -> Reading | Reason:
        """The reading for one numeric metric value, or why it cannot be one."""
        ch = self.lookup(name)
        if ch is None:
            return Reason.UNMAPPED
        idx, scale, offset = ch
        v = value * scale + offset
        if not (math.isfinite(v) and abs(v) <= MAX_ABS_VALUE):
            return Reason.NONFINITE
        return Reading(asset, idx, ts, v)


# -- encoding: the simulator's edge node and the host's rebirth requests ----------------------


def new_metric(datatype: int, value: float | int | bool | str | None, *, name: str | None = None,
               alias: int | None = None, ts_ms: int | None = None, historical: bool = False,
               quality: int | str | None = None) -> Metric:
    """One metric with its value in the field §6.4.17 assigns to its datatype (None: is_null),
    and a Quality property (Int32 or String) as Ignition sends it."""
    m = Metric(datatype=datatype)
    if quality is not None:
        m.properties.keys.append("Quality")
        if isinstance(quality, str):
            m.properties.values.add(type=DataType.String, string_value=quality)
        else:
            m.properties.values.add(type=DataType.Int32, int_value=quality & 0xFFFFFFFF)
    if name is not None:
        m.name = name
    if alias is not None:
        m.alias = alias
    if ts_ms is not None:
        m.timestamp = ts_ms
    if historical:
        m.is_historical = True
    if value is None:
        m.is_null = True
    elif datatype in _INTEGERS:
        bits, _ = _INTEGERS[datatype]
        raw = int(value) & ((1 << bits) - 1)  # two's complement at the type's own width
        if bits == 64:
            m.long_value = raw
        else:
            m.int_value = raw
    elif datatype == DataType.DateTime:
        m.long_value = int(value)
    elif datatype == DataType.Float:
        m.float_value = float(value)
    elif datatype == DataType.Double:
        m.double_value = float(value)
    elif datatype == DataType.Boolean:
        m.boolean_value = bool(value)
    elif datatype in (DataType.String, DataType.Text, DataType.UUID):
        m.string_value = str(value)
    else:
        raise ValueError(f"cannot encode a value of datatype {datatype}")
    return m


def encode(metrics: Iterable[Metric], ts_ms: int, seq: int | None = None) -> bytes:
    """A serialised payload; `seq` None leaves it out (NDEATH, NCMD, DCMD)."""
    p = Payload(timestamp=ts_ms)
    p.metrics.extend(metrics)
    if seq is not None:
        p.seq = seq
    data: bytes = p.SerializeToString()
    return data


def rebirth_request(ts_ms: int) -> bytes:
    """An NCMD payload asking an edge node to be born again (§5.17 Commands).

    [tck-id-operational-behavior-data-commands-ncmd-rebirth-name] and [...-ncmd-rebirth-value]:
    one metric `Node Control/Rebirth`, Boolean true; no seq ([tck-id-payloads-ncmd-seq]).
    """
    return encode([new_metric(DataType.Boolean, True, name=REBIRTH, ts_ms=ts_ms)], ts_ms)


def bd_seq_of(payload: Payload) -> int | None:
    """The bdSeq metric's value in an NBIRTH or NDEATH, or None if it has none."""
    for m in payload.metrics:
        if text(m.name) == BD_SEQ:
            v = metric_value(m, m.datatype if m.HasField("datatype") else DataType.Int64)
            return int(v) if isinstance(v, float) else None
    return None
