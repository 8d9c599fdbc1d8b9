"""The operator view's MQTT connection: subscribes to what the agents publish, sends commands.

paho's network thread only puts what happens on a queue; the view's loop takes it from there
and feeds the `Fleet`, so the fleet state has one thread. Commands go out as MQTT 5 requests
(QoS 1, response topic, correlation data, the operator in a user property).
"""

from __future__ import annotations

import json
import queue
import secrets
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import BrokerConfig
from agent.errors import BrokerError
from agent.mqtt import tls_context
from agent.names import MAX_NAME_LEN
from agent.top.fleet import Fleet

CONNECT_TIMEOUT_S = 10.0


def reply_topic(prefix: str, username: str | None, tag: str) -> str:
    """Where the agents answer this view: under the login's own name, which a broker ACL can
    grant to each user alone (Mosquitto: `pattern read {prefix}/replies/%u/#`)."""
    if username:
        # One topic level whatever the login is; a %u pattern cannot grant one to a name with + # /.
        level = "".join("_" if c in "+#/" or not c.isprintable() else c for c in username)
        return f"{prefix}/replies/{level[:MAX_NAME_LEN]}/top-{tag}"
    return f"{prefix}/replies/top-{tag}"


def topics(prefix: str) -> list[str]:
    """The filters the view reads: risk, alerts, standing and shelved alarms, agents."""
    return [f"{prefix}/risk/+", f"{prefix}/alerts/+", f"{prefix}/alarms/active/+",
            f"{prefix}/alarms/shelved/+", f"{prefix}/agents/+/status", f"{prefix}/agents/+/health"]


@dataclass(frozen=True)
class Event:
    """Something paho reported, for the view's loop to apply: one of the kinds below."""

    kind: str            # message | reply | connected | disconnected | denied | puback
    topic: str = ""
    payload: bytes = b""
    correlation: bytes | None = None
    mid: int = 0
    reason: str = ""


class TopLink:
    """One MQTT 5 client for the view."""

    def __init__(self, broker: BrokerConfig, prefix: str, operator: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.operator = operator
        self.url = broker.parsed_url
        tag = secrets.token_hex(4)
        self.reply_topic = reply_topic(prefix, broker.username, tag)
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._connack = threading.Event()
        self._refused: str | None = None
        self._filters = [*topics(prefix), self.reply_topic]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"vigil-top-{tag}",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type]  # paho types them as int
        if self.url.tls:
            self.client.tls_set_context(tls_context(broker.tls))
        if broker.username:
            self.client.username_pw_set(broker.username, broker.resolved_password())
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self.client.on_publish = self._published

    def connect(self) -> None:
        """Connect and wait for the broker's answer; BrokerError with the reason if it fails."""
        where = f"{self.url.host}:{self.url.port}"
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30, clean_start=True)
        except ssl.SSLError as exc:
            raise BrokerError(f"cannot connect to {self.url}: TLS: {exc.reason or exc}") from exc
        except OSError as exc:
            raise BrokerError(f"cannot reach {where}: {exc.strerror or exc}") from exc
        self.client.loop_start()
        if not self._connack.wait(CONNECT_TIMEOUT_S) or self._refused is not None:
            self.client.disconnect()
            self.client.loop_stop()
            if self._refused is not None:
                raise BrokerError(f"the broker at {self.url} refused the connection: {self._refused}")
            raise BrokerError(f"no answer from the broker at {self.url} within {CONNECT_TIMEOUT_S:g} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread): hand over and return ----------------------------------

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._connack.set()
            return
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self._filters])
        self._connack.set()
        self.events.put(Event("connected"))

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        self.events.put(Event("disconnected", reason=str(reason)))

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                    properties: Any) -> None:
        denied = [f for f, rc in zip(self._filters, reasons, strict=False) if rc.is_failure]
        self.events.put(Event("denied", topic="\n".join(denied)))

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.reply_topic:
            corr = getattr(msg.properties, "CorrelationData", None)
            self.events.put(Event("reply", msg.topic, bytes(msg.payload),
                                  bytes(corr) if corr is not None else None))
        else:
            self.events.put(Event("message", msg.topic, bytes(msg.payload)))

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                   properties: Any) -> None:
        self.events.put(Event("puback", mid=mid, reason="" if not reason.is_failure else str(reason)))

    # -- commands ------------------------------------------------------------------------------

    def command(self, asset: str, name: str, doc: dict[str, Any]) -> tuple[bytes, int]:
        """Publish `{prefix}/cmd/{asset}/{name}`; returns its correlation data and message id."""
        corr = secrets.token_bytes(8)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        props.UserProperty = [("operator", self.operator)]
        info = self.client.publish(f"{self.prefix}/cmd/{asset}/{name}", json.dumps(doc).encode(),
                                   qos=1, properties=props)
        return corr, int(info.mid)


def apply(fleet: Fleet, ev: Event, sent: dict[int, bytes]) -> None:
    """Apply one event of the link to the fleet; `sent` maps our commands' mids to correlations."""
    if ev.kind == "message":
        fleet.message(ev.topic, ev.payload)
    elif ev.kind == "reply":
        fleet.reply(ev.correlation, ev.payload)
    elif ev.kind == "connected":
        fleet.connected = True
    elif ev.kind == "disconnected":
        fleet.connected = False
    elif ev.kind == "denied":
        fleet.denied = [f for f in ev.topic.split("\n") if f]
    elif ev.kind == "puback":
        corr = sent.pop(ev.mid, None)
        if corr is not None and ev.reason:
            fleet.refused(corr, ev.reason)
