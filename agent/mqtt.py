"""The MQTT link: one paho-mqtt 2.x client, its callbacks kept short and non-blocking."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import AgentConfig, TLSConfig
from agent.errors import BrokerError, ConfigError
from agent.logs import RateLimited
from agent.topics import Filter, first_match


def status_topic(cfg: AgentConfig) -> str:
    return f"{cfg.outputs.prefix}/agents/{cfg.resolved_agent_id}/status"


def valid_topic(topic: str) -> bool:
    """Whether a message may be published to `topic` (no wildcards, not empty, not too long)."""
    return 0 < len(topic.encode()) <= 65535 and "+" not in topic and "#" not in topic and "\0" not in topic


def health_topic(cfg: AgentConfig) -> str:
    """Retained JSON beside the plain `status`: flood, chatter, maintenance, drift."""
    return f"{cfg.outputs.prefix}/agents/{cfg.resolved_agent_id}/health"


def control_filters(cfg: AgentConfig) -> list[str]:
    """What the operations loop listens to: CMMS events and operator commands."""
    p = cfg.outputs.prefix
    return [f"{p}/events/+", f"{p}/cmd/+/+", f"{p}/agents/{cfg.resolved_agent_id}/cmd/+"]


@dataclass(frozen=True)
class Control:
    """An event or command message: its topic, payload and what MQTT 5 says of its sender.

    `response_topic` and `correlation` are MQTT 5 request/response: where the sender wants the
    command's result, and what to echo so it can match the reply to its request.
    """

    topic: str
    payload: bytes
    user: list[tuple[str, str]] = field(default_factory=list)
    response_topic: str | None = None
    correlation: bytes | None = None
PUBLISH = 0x30     # the PUBLISH packet type, in the first byte of the fixed header
BATCH_MID = 0      # the message id of a batch of QoS 0 messages (paho's run 1-65535)


class Link:
    """Connects, keeps the connection, subscribes, publishes; reports events through callbacks.

    paho's network thread runs the callbacks: they only hand work over (queue, deque) and
    never wait for the worker.
    """

    def __init__(self, cfg: AgentConfig, *, on_message: Callable[[int, str, bytes], bool],
                 on_ack: Callable[[int, bool], None], on_state: Callable[[bool], None], log: Any,
                 on_control: Callable[[Control], bool] | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self._on_message = on_message
        self._on_ack = on_ack
        self._on_state = on_state
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self._stopping = False  # a disconnection we asked for is no news
        self._refusals = RateLimited(log, interval_s=60.0)
        self._failures = RateLimited(log, interval_s=60.0)
        b = cfg.broker
        self.v5 = b.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=b.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
            # Readings are acknowledged only once queued for processing (see _message).
            manual_ack=True)
        self.client.max_queued_messages_set(0)  # the outbox bounds what waits, not paho
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(b.reconnect_min_s, b.reconnect_max_s)  # type: ignore[arg-type]
        self.client.will_set(status_topic(cfg), b"offline", qos=1, retain=True)
        url = b.parsed_url
        self._tls = _tls_context(cfg) if url.tls else None
        if self._tls is not None:
            self.client.tls_set_context(self._tls)
        if b.username:
            self.client.username_pw_set(b.username, b.resolved_password())
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_publish = self._published
        self.client.on_connect_fail = self._connect_failed
        self._filters = [(i, s.filter, s.qos) for i, s in enumerate(cfg.subscriptions)]
        self._on_control = on_control
        # Control topics all live under the output prefix: one `startswith` per reading keeps
        # them off the readings' path (paho's own per-callback matcher would cost every message).
        self._control_prefix = f"{cfg.outputs.prefix}/"
        self._control_match: list[tuple[int, Filter]] = []
        if on_control is not None:
            for f in control_filters(cfg):
                self._control_match.append((-1, Filter(f)))
                self._filters.append((-1, f, 1))
        self._match = [(i, Filter(s.topic_filter)) for i, s in enumerate(cfg.subscriptions)]

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The TLS context of this link (None for mqtt://), for companion connections to reuse."""
        return self._tls

    def start(self) -> None:
        """Connect in the background; paho reconnects with capped exponential backoff."""
        url = self.cfg.broker.parsed_url
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.broker.session_expiry_s
        try:
            self.client.connect_async(url.host, url.port, keepalive=self.cfg.broker.keepalive_s,
                                      clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                                      properties=props)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {url}: {exc}") from exc
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            self._refusals.warning("mqtt_connect_refused", key="refused", reason=str(reason),
                                   broker=str(self.cfg.broker.parsed_url))
            return
        self.refused = None
        self.connected.set()
        self.log.info("mqtt_connected", session_present=bool(flags.session_present))
        client.publish(status_topic(self.cfg), b"online", qos=1, retain=True)
        if not flags.session_present or not self.subscribed.is_set():
            if self.v5:
                client.subscribe([(f, SubscribeOptions(qos=q)) for _, f, q in self._filters])
            else:
                client.subscribe([(f, int(q)) for _, f, q in self._filters])
        self.subscribed.set()
        self._on_state(True)

    def _connect_failed(self, client: mqtt.Client, userdata: Any) -> None:
        # paho does not say why a (re)connection failed; find out once a minute, by trying
        # the same TCP and TLS handshake ourselves, so the log names the cause.
        self._failures.warning("mqtt_connect_failed", key="failed", broker=str(self.cfg.broker.parsed_url),
                               reason=self.diagnose())

    def diagnose(self) -> str:
        """Why the broker cannot be reached right now, in one line."""
        url = self.cfg.broker.parsed_url
        try:
            sock = socket.create_connection((url.host, url.port), timeout=2.0)
        except OSError as exc:
            return f"cannot reach {url.host}:{url.port}: {exc.strerror or exc}"
        with sock:
            if self._tls is None:
                return "TCP connects; the MQTT handshake failed"
            try:
                with self._tls.wrap_socket(sock, server_hostname=url.host):
                    return "TLS handshake succeeds; the MQTT handshake failed"
            except (ssl.SSLError, OSError) as exc:
                return f"TLS: {exc}"

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and self._stopping:
            self.log.info("mqtt_disconnected", reason=str(reason))
        elif was:
            self.log.warning("mqtt_disconnected", reason=str(reason))
            # A fresh, jittered base delay per outage, so a fleet of gateways does not
            # reconnect in lock-step when their broker comes back.
            b = self.cfg.broker
            self.client.reconnect_delay_set(
                b.reconnect_min_s * random.uniform(0.5, 1.5), b.reconnect_max_s)  # type: ignore[arg-type]
        self._on_state(False)

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if (self._control_match and topic.startswith(self._control_prefix)
                and first_match(self._control_match, topic) is not None):
            self._control(client, userdata, msg)
            return
        take = True
        i = first_match(self._match, topic)
        if i is not None:
            take = self._on_message(i, topic, bytes(msg.payload))
        if take and msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _control(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        user = list(getattr(props, "UserProperty", None) or [])
        response = getattr(props, "ResponseTopic", None) or None
        correlation = getattr(props, "CorrelationData", None)
        assert self._on_control is not None
        take = self._on_control(Control(msg.topic, bytes(msg.payload), user, response,
                                        bytes(correlation) if correlation is not None else None))
        if take and msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                   properties: Any) -> None:
        if mid == BATCH_MID:
            return  # a batch of QoS 0 messages written out: nothing waits for it
        # A failure reason code (MQTT 5 only) means the broker did not take the message.
        self._on_ack(mid, not reason.is_failure)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Hand a message to paho (queued by paho while disconnected); returns its mid."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return int(info.mid)

    def reply(self, to: Control, payload: bytes) -> bool:
        """Answer a request on its MQTT 5 response topic (QoS 1, not retained); False if it gave none."""
        if not self.v5 or not to.response_topic or not valid_topic(to.response_topic):
            return False
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if to.correlation is not None:
            props.CorrelationData = to.correlation
        self.client.publish(to.response_topic, payload, qos=1, retain=False,
                            properties=props)
        return True

    def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 0, retain: bool = False) -> int:
        """Hand many messages to paho at once, in order; returns how many it took.

        `client.publish` hands each message to paho's network thread on its own: a lock, a
        write to the wake-up socket and so a wake-up of that thread (and a trip of the GIL)
        per message. QoS 0 needs no mid, no retry and no acknowledgement, so here the PUBLISH
        packets of all `messages` are encoded into one buffer and handed over in one
        `_packet_queue` call: one wake-up, and one socket write, for the whole batch. Like
        `client.publish` at QoS 0, nothing is taken while there is no connection. QoS 1 and
        2 go message by message through `client.publish`, which tracks and resends them.
        """
        if not messages:
            return 0
        queue = getattr(self.client, "_packet_queue", None)
        if qos or queue is None:  # `queue is None`: a paho without it: the plain way
            for topic, payload in messages:
                self.client.publish(topic, payload, qos=qos, retain=retain)
            return len(messages)
        if self.client._sock is None:  # what `client.publish` checks for QoS 0
            return 0
        parts: list[bytes] = []
        for topic, payload in messages:
            _packet_parts(parts, topic, payload, retain, self.v5)
        # mid 0 is never one of paho's (1-65535): the single on_publish it brings is ignored.
        queue(PUBLISH, b"".join(parts), BATCH_MID, 0, mqtt.MQTTMessageInfo(BATCH_MID))
        return len(messages)

    def stop(self, timeout: float = 2.0, offline: bool = True) -> None:
        """Publish the retained `offline` status ourselves (unless another link of this agent
        takes over at once: learning hands over to serving), then disconnect cleanly."""
        self._stopping = True
        if offline and self.connected.is_set():
            info = self.client.publish(status_topic(self.cfg), b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()


def publish_packet(topic: str, payload: bytes, *, retain: bool = False, v5: bool = True) -> bytes:
    """One MQTT PUBLISH packet at QoS 0 (MQTT 3.1.1 or 5, no properties), as paho writes it."""
    parts: list[bytes] = []
    _packet_parts(parts, topic, payload, retain, v5)
    return b"".join(parts)


def _packet_parts(parts: list[bytes], topic: str, payload: bytes, retain: bool, v5: bool) -> None:
    """Append the pieces of a QoS 0 PUBLISH packet to `parts` (joined once for a whole batch)."""
    name = topic.encode()
    if not name or b"+" in name or b"#" in name or len(name) > 65535:
        raise ValueError(f"cannot publish to topic {topic[:200]!r}")
    size = 2 + len(name) + v5 + len(payload)  # topic, property length (MQTT 5), payload
    first = PUBLISH | retain
    # The remaining length, 7 bits a byte, least significant first (a risk message: two bytes).
    if size < 128:
        parts.append(bytes((first, size)))
    elif size < 16_384:
        parts.append(bytes((first, size & 0x7F | 0x80, size >> 7)))
    else:
        head = bytearray((first,))
        while size:
            byte, size = size & 0x7F, size >> 7
            head.append(byte | 0x80 if size else byte)
        parts.append(bytes(head))
    parts += (len(name).to_bytes(2, "big"), name, b"\x00" if v5 else b"", payload)


def _tls_context(cfg: AgentConfig) -> ssl.SSLContext:
    return tls_context(cfg.broker.tls)


def tls_context(t: TLSConfig) -> ssl.SSLContext:
    """Certificate chain and hostname verified by default; optional client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
        ctx.check_hostname = t.verify_hostname
        if t.cert_file:
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker.tls: {exc}") from exc
    return ctx
