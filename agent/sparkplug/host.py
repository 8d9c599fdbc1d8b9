"""The Sparkplug host-side state machine: edge node sessions in, readings and rebirth requests out.

Pure: messages and a clock go in; readings, rejection reasons, rebirth requests (NCMD) and
stale/alive notices come out. It never touches MQTT, so every rule is a unit test; the agent
publishes the commands and applies the notices (docs/sparkplug-integration.patch).

Per edge node (group, node) it keeps what the current session's births defined: the NBIRTH's
bdSeq, an alias -> (name, datatype) map for the node and for each device born, the next
expected seq, and the messages held back while a gap in seq waits to close.
Spec: Eclipse Sparkplug 3.0.0, §5 (operational behaviour) and §6.4 (payloads).
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import DEFAULT_GOOD_QUALITY
from agent.ingest import Reading, Reason, good_set, quality_key
from agent.names import valid_name
from agent.sparkplug.codec import (
    BD_SEQ,
    KNOWN_TYPES,
    NAMESPACE,
    NUMERIC,
    SEQ_MODULUS,
    ChannelMap,
    MessageType,
    Topic,
    bd_seq_of,
    event_ts,
    ids_valid,
    metric_quality,
    metric_value,
    parse_payload,
    parse_topic,
    rebirth_request,
    text,
)
from agent.sparkplug.reasons import SparkplugReason
from agent.sparkplug.sparkplug_b_pb2 import Payload

Rejection = Reason | SparkplugReason
_PLACEHOLDERS = frozenset(("group", "node", "device"))
_HALF = SEQ_MODULUS // 2  # seq ahead by less than this is a gap; otherwise it is behind


@dataclass(frozen=True)
class HostOptions:
    """How the host treats edge node sessions; the `[subscriptions.sparkplug]` table."""

    reorder_timeout_s: float = 2.0
    """How long a gap in seq may stay open before a rebirth is requested (§5.9)."""
    rebirth_interval_s: float = 10.0
    """At least this long between two rebirth requests to one edge node."""
    send_rebirth: bool = True
    """False where this host may not command edge nodes (ACLs, or another Primary Host)."""
    asset: str = "{device}"
    """Asset name from {group}, {node}, {device}; node-level metrics use the node id as {device}."""
    max_pending: int = 64
    """Out-of-order messages held per edge node; one more closes the gap at once."""
    max_nodes: int = 10_000
    max_devices: int = 10_000
    hold: bool = True
    """Values hold until a new one (the subscription's `hold`): a birth's values are current at the
    birth, whatever timestamp each metric carries (Ignition sends when the value last changed)."""
    good_quality: tuple[bool | int | float | str, ...] = DEFAULT_GOOD_QUALITY
    """Values of a metric's Quality property that are good; any other marks the reading bad."""

    def __post_init__(self) -> None:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.asset) if f is not None}
        if not fields or not fields <= _PLACEHOLDERS:
            raise ValueError(f"asset {self.asset!r}: use {{group}}, {{node}} and/or {{device}}")
        if self.reorder_timeout_s < 0 or self.rebirth_interval_s < 0:
            raise ValueError("reorder_timeout_s and rebirth_interval_s must not be negative")
        if min(self.max_pending, self.max_nodes, self.max_devices) < 1:
            raise ValueError("max_pending, max_nodes and max_devices must be at least 1")


@dataclass(frozen=True, slots=True)
class Command:
    """A message the host asks to be published: QoS 0, not retained ([tck-id-topics-ncmd-mqtt])."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Birth:
    """A birth at `ts` redefined `asset`: channels it did not list (`listed` None: none) stop holding."""

    asset: str
    ts: float
    listed: frozenset[int] | None


@dataclass
class Output:
    """What one message (or a tick) produced."""

    readings: list[Reading] = field(default_factory=list)
    historical: list[Reading] = field(default_factory=list)
    """Metrics flagged is_historical: into the windows in event time, never a live alert."""
    rejects: list[Rejection] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """Assets whose edge node or device died: their data is STALE until the next birth."""
    alive: list[str] = field(default_factory=list)
    """Assets just born (NBIRTH with mapped node metrics, or DBIRTH)."""
    bad: list[Reading] = field(default_factory=list)
    """Readings of bad quality (is_null, or a Quality property not good); value NaN, not written."""
    births: list[Birth] = field(default_factory=list)
    """Births in order: what each asset's held values were redefined by."""


@dataclass(frozen=True, slots=True)
class _Def:
    name: str
    datatype: int


class _Scope:
    """What one birth defined: the node's own metrics, or one device's."""

    __slots__ = ("asset", "by_alias", "by_name", "used")

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self.by_alias: dict[int, _Def] = {}
        self.by_name: dict[str, _Def] = {}
        self.used = False  # a reading came from it: the node's own asset is stale on NDEATH


@dataclass(slots=True)
class _Held:
    topic: Topic
    payload: Payload
    arrival: float


class _Node:
    __slots__ = ("bd_seq", "devices", "expected", "gap_since", "group", "held", "last_rebirth", "name",
                 "scope")

    def __init__(self, group: str, name: str) -> None:
        self.group = group
        self.name = name
        self.scope: _Scope | None = None   # None: no NBIRTH in this session
        self.bd_seq: int | None = None
        self.expected: int | None = None   # next seq due
        self.devices: dict[str, _Scope] = {}
        self.held: dict[int, _Held] = {}   # seq -> message that came before its turn
        self.gap_since: float | None = None
        self.last_rebirth: float | None = None


class Host:
    """Sparkplug B host application logic for every edge node behind one subscription.

    `channels` may be replaced (a new model) without losing any edge node's session.
    """

    def __init__(self, channels: ChannelMap, options: HostOptions | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.channels = channels
        self.options = options or HostOptions()
        self._good = good_set(self.options.good_quality)
        self.clock = clock   # the reorder timeout and the rebirth rate limit
        self.wall = wall     # the timestamp of rebirth requests
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._timers: dict[tuple[str, str], _Node] = {}  # nodes with a gap open
        self._n_devices = 0
        self.rebirths_sent = 0
        self.rebirths_suppressed = 0
        self.deaths_ignored = 0

    # -- input ---------------------------------------------------------------------------------

    def receive(self, topic: str, payload: bytes, arrival: float) -> Output:
        """Handle one MQTT message; `arrival` (epoch s) stands in for missing timestamps."""
        out = Output()
        t = parse_topic(topic)
        if t is None:
            out.rejects.append(Reason.TOPIC)
            return out
        if t.type in (MessageType.STATE, MessageType.NCMD, MessageType.DCMD):
            return out  # host states and commands (ours among them) carry no readings
        if not ids_valid(t):
            out.rejects.append(Reason.NAME)
            return out
        p = parse_payload(payload)
        if p is None:
            out.rejects.append(Reason.MALFORMED)
            return out
        key = (t.group, t.node)
        node = self._nodes.get(key)
        if t.type is MessageType.NDEATH:
            if node is not None:
                self._death(node, p, out)
            return out
        # [tck-id-payloads-sequence-num-always-included]: every other message has a seq 0..255.
        if not p.HasField("seq") or p.seq >= SEQ_MODULUS:
            out.rejects.append(Reason.MALFORMED)
            return out
        if node is None:
            if len(self._nodes) >= self.options.max_nodes:
                out.rejects.append(Reason.ASSET_LIMIT)
                return out
            node = self._nodes[key] = _Node(t.group, t.node)
        msg = _Held(t, p, arrival)
        if t.type is MessageType.NBIRTH:
            self._nbirth(node, msg, out)
        elif node.expected is None:
            self._hold(node, msg, out)  # before any birth: its NBIRTH may just be late
        else:
            ahead = (p.seq - node.expected) % SEQ_MODULUS
            if ahead == 0:
                self._process(node, msg, out)
                self._drain(node, out)
            elif ahead < _HALF:
                self._hold(node, msg, out)
            else:
                out.rejects.append(SparkplugReason.SEQUENCE)  # already passed: duplicate or too late
        return out

    def tick(self) -> Output:
        """Close the gaps whose reorder timeout has run out (call it often, e.g. every 100 ms)."""
        out = Output()
        now = self.clock()
        expired = [n for n in self._timers.values()
                   if n.gap_since is not None and now - n.gap_since >= self.options.reorder_timeout_s]
        for node in expired:
            self._expire(node, out)
        return out

    # -- sequence ------------------------------------------------------------------------------

    def _hold(self, node: _Node, msg: _Held, out: Output) -> None:
        seq = msg.payload.seq
        if seq in node.held:
            out.rejects.append(SparkplugReason.SEQUENCE)
            return
        node.held[seq] = msg
        if node.gap_since is None:  # [tck-id-operational-behavior-host-reordering-start]
            node.gap_since = self.clock()
            self._timers[(node.group, node.name)] = node
        if len(node.held) > self.options.max_pending or self.options.reorder_timeout_s == 0:
            self._expire(node, out)

    def _drain(self, node: _Node, out: Output) -> None:
        """Process held messages whose turn has come.

        [tck-id-operational-behavior-host-reordering-success]: a gap that closes stops the timer.
        """
        while node.expected is not None and node.expected in node.held:
            self._process(node, node.held.pop(node.expected), out)
        if not node.held:
            self._stop_timer(node)

    def _expire(self, node: _Node, out: Output) -> None:
        """The gap did not close in time: request a rebirth.

        [tck-id-operational-behavior-host-reordering-rebirth].

        Held messages of a born node are still valid messages of its session: they are
        processed in seq order, skipping what is missing. Without a birth nothing can be
        decoded, and they are dropped.
        """
        self._release(node, out)
        self._rebirth(node, out)

    def _release(self, node: _Node, out: Output) -> None:
        held, node.held = node.held, {}
        self._stop_timer(node)
        if node.expected is None:
            out.rejects.extend(SparkplugReason.NO_BIRTH for _ in held)
            return
        base = node.expected
        for seq in sorted(held, key=lambda s: (s - base) % SEQ_MODULUS):
            if node.expected is None:  # a message released before it ended the session
                out.rejects.append(SparkplugReason.NO_BIRTH)
                continue
            node.expected = seq
            self._process(node, held[seq], out)

    def _stop_timer(self, node: _Node) -> None:
        node.gap_since = None
        self._timers.pop((node.group, node.name), None)

    # -- messages in their turn ----------------------------------------------------------------

    def _process(self, node: _Node, msg: _Held, out: Output) -> None:
        node.expected = (msg.payload.seq + 1) % SEQ_MODULUS
        kind, device = msg.topic.type, msg.topic.device
        if node.scope is None:
            out.rejects.append(SparkplugReason.NO_BIRTH)
            self._rebirth(node, out)
        elif kind is MessageType.NDATA:
            self._data(node, node.scope, msg, out)
        elif kind is MessageType.DBIRTH and device is not None:
            self._dbirth(node, device, msg, out)
        elif kind is MessageType.DDATA and device is not None:
            scope = node.devices.get(device)
            if scope is None:  # data from a device never born in this session
                out.rejects.append(SparkplugReason.NO_BIRTH)
                self._rebirth(node, out)
            else:
                self._data(node, scope, msg, out)
        elif kind is MessageType.DDEATH and device is not None:
            gone = node.devices.pop(device, None)
            # [tck-id-operational-behavior-edge-node-termination-host-action-ddeath-devices-tags-stale]
            if gone is not None:
                self._n_devices -= 1
                out.stale.append(gone.asset)

    def _nbirth(self, node: _Node, msg: _Held, out: Output) -> None:
        """A new session ([tck-id-topics-nbirth-seq-num], [tck-id-topics-nbirth-bdseq-included]).

        Whatever the previous session defined is gone: devices must be born again.
        """
        asset = self._asset(node, None)
        if asset is None:
            out.rejects.append(Reason.NAME)
            return
        ts = msg.payload.timestamp / 1000.0 if msg.payload.HasField("timestamp") else msg.arrival
        # A new session: the devices of the last one are no longer born, their values no longer held.
        out.births.extend(Birth(d.asset, ts, None) for d in node.devices.values())
        self._n_devices -= len(node.devices)
        node.devices = {}
        node.scope = _Scope(asset)
        node.bd_seq = bd_seq_of(msg.payload)
        node.expected = (msg.payload.seq + 1) % SEQ_MODULUS
        self._birth(node.scope, msg, out)
        if node.scope.used:
            out.alive.append(asset)
        self._drain(node, out)
        if node.held:  # held before this birth and not next in line: cannot be placed
            out.rejects.extend(SparkplugReason.NO_BIRTH for _ in node.held)
            node.held = {}
            self._stop_timer(node)

    def _dbirth(self, node: _Node, device: str, msg: _Held, out: Output) -> None:
        asset = self._asset(node, device)
        if asset is None:
            out.rejects.append(Reason.NAME)
            return
        if device not in node.devices:
            if self._n_devices >= self.options.max_devices:
                out.rejects.append(Reason.ASSET_LIMIT)
                return
            self._n_devices += 1
        scope = node.devices[device] = _Scope(asset)
        self._birth(scope, msg, out)
        out.alive.append(asset)

    def _birth(self, scope: _Scope, msg: _Held, out: Output) -> None:
        """Learn each metric's name, alias and datatype; births carry current values too.

        A birth's metric definitions are not readings: a tag the model cannot use is ignored
        without being counted (its data messages are counted).
        """
        ts = msg.payload.timestamp / 1000.0 if msg.payload.HasField("timestamp") else msg.arrival
        listed: set[int] = set()
        for m in msg.payload.metrics:
            name = text(m.name)
            if not name:
                out.rejects.append(Reason.NAME)
                continue
            d = _Def(name, m.datatype)
            scope.by_name[name] = d
            if m.HasField("alias"):
                scope.by_alias[m.alias] = d
            ch = self._emit(scope, d, m, msg, out, birth_ts=ts)
            if ch is not None:
                listed.add(ch)
        out.births.append(Birth(scope.asset, ts, frozenset(listed)))

    def _data(self, node: _Node, scope: _Scope, msg: _Held, out: Output) -> None:
        unknown = False
        for m in msg.payload.metrics:
            if m.HasField("alias"):  # [tck-id-payloads-alias-data-cmd-requirement]
                d = scope.by_alias.get(m.alias)
            else:
                name = text(m.name)
                d = scope.by_name.get(name) if name else None
            if d is None:
                out.rejects.append(SparkplugReason.ALIAS)
                unknown = True
                continue
            self._emit(scope, d, m, msg, out)
        if unknown:
            self._rebirth(node, out)

    def _emit(self, scope: _Scope, d: _Def, m: Payload.Metric, msg: _Held, out: Output,
              birth_ts: float | None = None) -> int | None:
        """One metric's reading into `out` (or why not); returns its model channel, if it has one.

        Tags the model cannot use are ignored: non-numeric datatypes (`unsupported`) and numbers
        that are not model channels (`unmapped`), counted only in data messages. A null value (how Ignition
        reports a bad quality) or a Quality property that is not good is `bad_quality`.
        """
        if d.name == BD_SEQ or d.name.startswith(("Node Control/", "Device Control/")):
            return None  # session bookkeeping, not measurements
        birth = birth_ts is not None
        if d.datatype not in NUMERIC:
            if d.datatype not in KNOWN_TYPES:
                out.rejects.append(Reason.TYPE)  # not a Sparkplug datatype at all: bad input
            elif not birth:
                out.rejects.append(Reason.UNSUPPORTED)
            return None
        ch = self.channels.lookup(d.name)
        if ch is None:
            if not birth:
                out.rejects.append(Reason.UNMAPPED)
            return None
        ts = event_ts(m, msg.payload, msg.arrival)
        if birth and self.options.hold and not m.is_historical and birth_ts is not None:
            ts = max(ts, birth_ts)  # the value stands at the birth, however long it has not changed
        q = metric_quality(m)
        if m.is_null or (q is not None and quality_key(q) not in self._good):
            out.rejects.append(Reason.QUALITY)
            out.bad.append(Reading(scope.asset, ch[0], ts, math.nan))
            return ch[0]
        value = metric_value(m, d.datatype)
        if isinstance(value, Reason):
            out.rejects.append(value)
            return ch[0]
        r = self.channels.reading(scope.asset, d.name, value, ts)
        if isinstance(r, Reason):
            out.rejects.append(r)
            return ch[0]
        scope.used = True
        (out.historical if m.is_historical else out.readings).append(r)
        return ch[0]

    def _death(self, node: _Node, p: Payload, out: Output) -> None:
        """NDEATH: the session ends only if its bdSeq is the current birth's.

        §5.4 and [tck-id-payloads-ndeath-bdseq].

        A will from an older connection can arrive after the new NBIRTH; it is ignored.
        """
        if node.scope is None or bd_seq_of(p) != node.bd_seq:
            self.deaths_ignored += 1
            return
        self._release(node, out)  # what the node said before it died still counts
        # [tck-id-operational-behavior-edge-node-termination-host-action-ndeath-node-tags-stale]
        # and [...-ndeath-devices-tags-stale]: the node's assets and all its devices' go stale.
        if node.scope is not None and node.scope.used:
            out.stale.append(node.scope.asset)
        out.stale.extend(d.asset for d in node.devices.values())
        self._n_devices -= len(node.devices)
        node.devices = {}
        node.scope = None
        node.bd_seq = None
        node.expected = None

    # -- output --------------------------------------------------------------------------------

    def _rebirth(self, node: _Node, out: Output) -> None:
        """Ask for a new NBIRTH/DBIRTH sequence, at most once per rebirth_interval_s per node."""
        if not self.options.send_rebirth:
            return
        now = self.clock()
        if node.last_rebirth is not None and now - node.last_rebirth < self.options.rebirth_interval_s:
            self.rebirths_suppressed += 1
            return
        node.last_rebirth = now
        self.rebirths_sent += 1
        topic = f"{NAMESPACE}/{node.group}/{MessageType.NCMD}/{node.name}"
        out.commands.append(Command(topic, rebirth_request(int(self.wall() * 1000))))

    def _asset(self, node: _Node, device: str | None) -> str | None:
        name = self.options.asset.format(group=node.group, node=node.name,
                                         device=device if device is not None else node.name)
        return name if valid_name(name) else None

    @property
    def n_nodes(self) -> int:
        return len(self._nodes)

    def online(self) -> dict[str, list[str]]:
        """Assets of every edge node now in a session, by `group/node` (for logs and tests)."""
        return {f"{g}/{n}": ([node.scope.asset] if node.scope.used else [])
                + [d.asset for d in node.devices.values()]
                for (g, n), node in self._nodes.items() if node.scope is not None}
