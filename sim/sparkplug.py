"""The plant as one Sparkplug B edge node: each pump a device, births, data by alias, deaths.

`EdgeNode` builds the messages (seq, bdSeq, aliases) and knows nothing of MQTT; `run_sparkplug`
connects with the NDEATH as its will, honours rebirth requests (NCMD `Node Control/Rebirth`)
and steps the plant as `vigil-sim live` does. Spec: Eclipse Sparkplug 3.0.0, §4-§6.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import BrokerError, ConfigError
from agent.names import BrokerURL, valid_name
from agent.sparkplug.codec import (
    BD_SEQ,
    NAMESPACE,
    REBIRTH,
    SEQ_MODULUS,
    MessageType,
    encode,
    new_metric,
    parse_payload,
    text,
)
from agent.sparkplug.sparkplug_b_pb2 import DataType
from sim.live import DEFAULT_FAIL_WITHIN_S, default_start, publish_at
from sim.plant import CHANNELS, FAILURE, Event, Plant, PlantConfig

log = structlog.get_logger(__name__)

Message = tuple[str, bytes]  # topic, payload


class EdgeNode:
    """Sparkplug messages of one edge node whose devices are the plant's assets.

    Aliases are unique across the node ([tck-id-payloads-alias-uniqueness]): device i's
    channel c is alias 1 + i * len(CHANNELS) + c. Births carry name, alias, datatype and
    value ([tck-id-payloads-alias-birth-requirement]); data carries aliases only
    ([tck-id-payloads-alias-data-cmd-requirement]).
    """

    def __init__(self, group: str, node: str, assets: tuple[str, ...], bd_seq: int = 0) -> None:
        if not (valid_name(group) and valid_name(node) and group != "STATE"):
            raise ConfigError(f"group {group!r} and node {node!r} must be valid topic levels")
        self.group = group
        self.node = node
        self.assets = assets
        self.bd_seq = bd_seq % SEQ_MODULUS
        self.seq = 0
        self.born: set[str] = set()  # devices with a DBIRTH in the current session

    def topic(self, kind: MessageType, device: str | None = None) -> str:
        tail = f"/{device}" if device is not None else ""
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}{tail}"

    def _next_seq(self) -> int:
        # [tck-id-payloads-sequence-num-incrementing]: +1 per message, 255 wraps to 0.
        seq, self.seq = self.seq, (self.seq + 1) % SEQ_MODULUS
        return seq

    def _alias(self, asset: str, channel: int) -> int:
        return 1 + self.assets.index(asset) * len(CHANNELS) + channel

    def ndeath(self) -> Message:
        """The death certificate: the bdSeq only, no seq.

        [tck-id-topics-ndeath-payload], [tck-id-topics-ndeath-seq].
        """
        metric = new_metric(DataType.Int64, self.bd_seq, name=BD_SEQ)
        return self.topic(MessageType.NDEATH), encode([metric], int(time.time() * 1000))

    def nbirth(self, ts_ms: int) -> Message:
        """A new session: seq 0, the bdSeq of the will, `Node Control/Rebirth` false.

        [tck-id-topics-nbirth-seq-num], [tck-id-topics-nbirth-bdseq-included],
        [tck-id-topics-nbirth-rebirth-metric] (no alias: [...-rebirth-name-aliases]).
        """
        self.seq = 0
        self.born.clear()
        metrics = [new_metric(DataType.Int64, self.bd_seq, name=BD_SEQ, ts_ms=ts_ms),
                   new_metric(DataType.Boolean, False, name=REBIRTH, ts_ms=ts_ms)]
        return self.topic(MessageType.NBIRTH), encode(metrics, ts_ms, self._next_seq())

    def dbirth(self, asset: str, values: list[float], ts_ms: int) -> Message:
        self.born.add(asset)
        metrics = [new_metric(DataType.Double, v, name=c, alias=self._alias(asset, i), ts_ms=ts_ms)
                   for i, (c, v) in enumerate(zip(CHANNELS, values, strict=True))]
        return self.topic(MessageType.DBIRTH, asset), encode(metrics, ts_ms, self._next_seq())

    def ddata(self, asset: str, values: list[float], ts_ms: int, historical: bool = False) -> Message:
        metrics = [new_metric(DataType.Double, v, alias=self._alias(asset, i), ts_ms=ts_ms,
                              historical=historical)
                   for i, v in enumerate(values)]
        return self.topic(MessageType.DDATA, asset), encode(metrics, ts_ms, self._next_seq())

    def ddeath(self, asset: str, ts_ms: int) -> Message:
        self.born.discard(asset)
        return self.topic(MessageType.DDEATH, asset), encode([], ts_ms, self._next_seq())

    def step(self, ts: float, values: list[list[float]], up: list[bool]) -> list[Message]:
        """One plant step: DBIRTH for a pump that is (back) up, DDATA while up, DDEATH once down."""
        ts_ms = round(ts * 1000)
        out = []
        for asset, row, is_up in zip(self.assets, values, up, strict=True):
            if is_up:
                born = asset in self.born
                out.append(self.ddata(asset, row, ts_ms) if born else self.dbirth(asset, row, ts_ms))
            elif asset in self.born:  # [tck-id-operational-behavior-device-ddeath]
                out.append(self.ddeath(asset, ts_ms))
        return out

    def births(self, ts: float, values: list[list[float]], up: list[bool]) -> list[Message]:
        """NBIRTH, then a DBIRTH for every pump that is up ([tck-id-payloads-dbirth-order])."""
        ts_ms = round(ts * 1000)
        out = [self.nbirth(ts_ms)]
        out += [self.dbirth(a, row, ts_ms) for a, row, ok in zip(self.assets, values, up, strict=True) if ok]
        return out


def is_rebirth_request(payload: bytes) -> bool:
    """An NCMD carrying `Node Control/Rebirth` = true (§5.17)."""
    p = parse_payload(payload)
    return p is not None and any(text(m.name) == REBIRTH and m.WhichOneof("value") == "boolean_value"
                                 and m.boolean_value for m in p.metrics)


@dataclass(frozen=True)
class SparkplugOptions:
    """Which edge node to be, how fast, and for how long (durations in wall seconds)."""

    broker: BrokerURL
    client_id: str
    group: str = "plant"
    node: str = "sim-edge"
    speed: float = 1.0
    start_ts: float | None = None
    duration_s: float | None = None
    fail: tuple[str, ...] = ()
    fail_within_s: float = DEFAULT_FAIL_WITHIN_S
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"speed must be positive, got {self.speed}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"duration must be a positive number, got {self.duration_s}")


@dataclass
class SparkplugSummary:
    start_ts: float
    end_ts: float | None = None
    steps: int = 0
    published: int = 0
    births: int = 0
    """Birth sequences sent: the first, one per reconnection, one per rebirth request."""
    events: list[Event] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [asset for _, asset, event in self.events if event == FAILURE]


class _Link:
    """The edge node's MQTT session: will = NDEATH, NCMD/DCMD subscribed, births on (re)connect."""

    def __init__(self, opts: SparkplugOptions, edge: EdgeNode) -> None:
        self.opts = opts
        self.edge = edge
        self.lock = threading.Lock()  # bdSeq changes on paho's thread, births read it on ours
        self.connected = threading.Event()
        self.rebirth = threading.Event()  # births due: a new connection or a rebirth request
        self.error: str | None = None
        self._connections = 0
        # Clean session ([tck-id-principles-persistence-clean-session-311]).
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=opts.client_id, clean_session=True)
        if opts.broker.tls:
            c.tls_set()
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self._set_will()

    def _set_will(self) -> None:
        # [tck-id-payloads-ndeath-will-message]: QoS 1, not retained, with this session's bdSeq.
        topic, payload = self.edge.ndeath()
        self.client.will_set(topic, payload, qos=1, retain=False)

    def connect(self, stop: threading.Event) -> None:
        b = self.opts.broker
        try:
            self.client.connect(b.host, b.port, keepalive=10)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to broker {b}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + self.opts.connect_timeout_s
        while not self.connected.wait(0.1):
            if self.error or stop.is_set() or time.monotonic() > deadline:
                self.close()
                raise BrokerError(f"broker {b}: {self.error or 'did not answer CONNECT in time'}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.error = f"refused the connection: {reason}"
            return
        e = self.edge
        client.subscribe([(e.topic(MessageType.NCMD), 1), (f"{e.topic(MessageType.DCMD)}/+", 1)])
        self._connections += 1
        self.rebirth.set()  # every new MQTT session starts with births
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self.connected.clear()
        # [tck-id-topics-nbirth-bdseq-increment]: the next CONNECT carries the next bdSeq.
        with self.lock:
            self.edge.bd_seq = (self.edge.bd_seq + 1) % SEQ_MODULUS
            self._set_will()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.edge.topic(MessageType.NCMD) and is_rebirth_request(bytes(msg.payload)):
            self.rebirth.set()

    def publish(self, messages: list[Message]) -> mqtt.MQTTMessageInfo | None:
        info = None
        for topic, payload in messages:  # births and data: QoS 0, not retained (§4.2)
            info = self.client.publish(topic, payload, qos=0)
        return info

    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye with an NDEATH, then DISCONNECT.

        [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath] and [...-packet].
        """
        if self.connected.is_set():
            with self.lock:
                topic, payload = self.edge.ndeath()
            info = self.client.publish(topic, payload, qos=1)
            with contextlib.suppress(RuntimeError, ValueError):  # not acknowledged: the will says it
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()


def run_sparkplug(cfg: PlantConfig, opts: SparkplugOptions, stop: threading.Event,
                  on_event: Callable[[Event], None] = lambda e: None,
                  clock: Callable[[], float] = time.time) -> SparkplugSummary:
    """Publish the plant as a Sparkplug edge node until the duration is over or `stop` is set."""
    names = cfg.asset_names
    unknown = [a for a in opts.fail if a not in names]
    if unknown:
        raise ConfigError(f"--fail {unknown[0]}: no such asset (assets are {names[0]}..{names[-1]})")
    start = opts.start_ts
    if start is None:
        start = default_start(clock(), cfg.period_s, opts.speed, opts.duration_s)
    plant = Plant(cfg, start)
    for asset in opts.fail:
        plant.force_failure(names.index(asset), opts.fail_within_s)
    edge = EdgeNode(opts.group, opts.node, names)
    link = _Link(opts, edge)
    summary = SparkplugSummary(start_ts=start)
    link.connect(stop)
    try:
        wall0 = clock()
        end_wall = wall0 + opts.duration_s if opts.duration_s is not None else math.inf
        while not stop.is_set():
            ts = start + summary.steps * cfg.period_s
            due = publish_at(ts, start, wall0, opts.speed)
            if due >= end_wall or clock() >= end_wall or stop.wait(max(0.0, due - clock())):
                break
            step = plant.step()
            summary.steps += 1
            summary.end_ts = step.ts
            for event in step.events:
                summary.events.append(event)
                on_event(event)
            values, up = step.values.tolist(), step.up.tolist()
            if link.rebirth.is_set():
                # [tck-id-operational-behavior-data-commands-rebirth-action-1/2/3]: stop data,
                # send NBIRTH (same bdSeq) and every DBIRTH, then go on.
                link.rebirth.clear()
                summary.births += 1
                with link.lock:
                    messages = edge.births(step.ts, values, up)
            else:
                messages = edge.step(step.ts, values, up)
            info = link.publish(messages)
            summary.published += len(messages)
            if info is not None:  # one step on the wire at a time: memory stays bounded
                with contextlib.suppress(RuntimeError, ValueError):  # not connected: QoS 0 is gone
                    info.wait_for_publish(opts.connect_timeout_s)
    finally:
        link.close()
    return summary
