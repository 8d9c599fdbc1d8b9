"""A paho MQTT publisher that bounds unacknowledged messages and can wait for every PUBACK."""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import BrokerError, ConfigError
from agent.names import BrokerURL, valid_name

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = 1000
_POLL_S = 0.1  # how often blocked waits look at the stop event


def check_topic_prefix(prefix: str) -> None:
    """ConfigError unless `prefix` is one or more valid topic levels joined by '/'."""
    if not all(valid_name(level) for level in prefix.split("/")):
        raise ConfigError(
            f"topic prefix {prefix!r}: levels must be non-empty, without + # or NUL"
        )


def default_client_id(role: str) -> str:
    """A client id unique to this process, so two simulators never kick each other off."""
    return f"vigil-sim-{role}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class PublisherOptions:
    """Where and how to publish."""

    broker: BrokerURL
    client_id: str
    qos: int = 1
    window: int = DEFAULT_WINDOW
    """Most messages published but not yet acknowledged; publish() blocks beyond it."""
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.window < 1:
            raise ConfigError(f"window must be at least 1, got {self.window}")


class Publisher:
    """Connects on enter, publishes with a bounded window of unacknowledged messages.

    Acknowledgements are counted in paho's on_publish (PUBACK for QoS 1, PUBCOMP for QoS 2,
    written to the socket for QoS 0). Counting, rather than matching mids, has no race with a
    PUBACK that arrives before publish() returns its mid.
    """

    def __init__(self, opts: PublisherOptions, stop: threading.Event | None = None) -> None:
        self.opts = opts
        self._stop = stop if stop is not None else threading.Event()
        self._cond = threading.Condition()
        self._published = 0
        self._acked = 0
        self._connected = False
        self._connect_error: str | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=opts.client_id, clean_session=True
        )
        if opts.broker.tls:
            client.tls_set()
        # Our own window bounds memory; paho may keep all of it on the wire at once.
        client.max_inflight_messages_set(min(opts.window, 65535))
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    @property
    def published(self) -> int:
        """Messages handed to paho."""
        with self._cond:
            return self._published

    @property
    def acked(self) -> int:
        """Messages the broker has acknowledged."""
        with self._cond:
            return self._acked

    def __enter__(self) -> Publisher:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and wait for CONNACK; BrokerError when the broker is unreachable or refuses."""
        broker = self.opts.broker
        try:
            self._client.connect(broker.host, broker.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to broker {broker}: {exc}") from exc
        self._client.loop_start()
        deadline = time.monotonic() + self.opts.connect_timeout_s
        with self._cond:
            while not self._connected and self._connect_error is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                self._cond.wait(min(left, _POLL_S))
            error = self._connect_error
            connected = self._connected
        if not connected:
            self.close()
            if error is None:
                error = "interrupted" if self._stop.is_set() else "did not answer CONNECT in time"
            raise BrokerError(f"broker {broker}: {error}")
        log.debug("broker_connected", broker=str(broker), client_id=self.opts.client_id)

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue one message once the window has room; False if stopped while waiting."""
        with self._cond:
            while self._published - self._acked >= self.opts.window:
                if self._stop.is_set():
                    return False
                self._cond.wait(_POLL_S)
            self._published += 1
        info = self._client.publish(topic, payload, qos=self.opts.qos)
        # NO_CONN: paho keeps the message and sends it after reconnecting.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return True

    def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until every published message is acknowledged; True if so."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._acked < self._published:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, _POLL_S))
            return True

    def close(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._connect_error = f"refused the connection: {reason}"
            else:
                self._connected = True
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            # paho's loop thread reconnects by itself and resends what was in flight.
            log.warning("broker_disconnected", broker=str(self.opts.broker), reason=str(reason))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._cond:
            self._acked += 1
            self._cond.notify_all()
