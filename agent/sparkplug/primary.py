"""Primary Host Application STATE: `spBv1.0/STATE/{host_id}`, retained, with a will that says offline.

Edge nodes configured with a Primary Host wait for its STATE to say online before they are
born, and walk away from a server where it says offline (Sparkplug 3.0.0 §5.10). MQTT allows
one will per connection and the agent's own connection carries the agent status will, so
STATE travels on a second, small connection that lives and dies with the agent.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import BrokerError
from agent.names import BrokerURL, valid_name
from agent.sparkplug.codec import NAMESPACE


def state_topic(host_id: str) -> str:
    """[tck-id-host-topic-phid-birth-topic]: spBv1.0/STATE/sparkplug_host_id."""
    if not valid_name(host_id):
        raise ValueError(f"host_id {host_id!r}: must be a valid topic level")
    return f"{NAMESPACE}/STATE/{host_id}"


def state_payload(online: bool, ts_ms: int) -> bytes:
    """[tck-id-host-topic-phid-birth-payload]: JSON UTF-8 {"online": bool, "timestamp": UTC ms}."""
    return json.dumps({"online": online, "timestamp": ts_ms}, separators=(",", ":")).encode()


class PrimaryHost:
    """Publishes this host's STATE birth on every connection, with the matching death as its will.

    Birth and will of one connection carry the same timestamp
    ([tck-id-host-topic-phid-birth-payload-timestamp]); both are QoS 1 and retained
    ([tck-id-host-topic-phid-birth-qos], [...-birth-retain], [...-death-qos], [...-death-retain]).
    The birth goes out only once the subscription to its own STATE topic is granted
    ([tck-id-host-topic-phid-birth-sub-required]). Clean session, as §5 requires of every client.
    """

    def __init__(self, broker: BrokerURL, host_id: str, *, client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: ssl.SSLContext | None = None, wall: Callable[[], float] = time.time,
                 log: Any = None) -> None:
        self.broker = broker
        self.topic = state_topic(host_id)
        self.wall = wall
        self.log = log
        self.online = threading.Event()  # our birth is acknowledged by the broker
        self._ts = self._now_ms()
        self._birth_mid: int | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{host_id}-state",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if tls is not None:
            self.client.tls_set_context(tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 5)
        self._set_will()
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribed
        self.client.on_publish = self._published
        self.client.on_disconnect = self._disconnected

    def _now_ms(self) -> int:
        return int(self.wall() * 1000)

    def _set_will(self) -> None:
        self.client.will_set(self.topic, state_payload(False, self._ts), qos=1, retain=True)

    def start(self) -> None:
        """Connect in the background; paho reconnects by itself."""
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {self.broker}: {exc}") from exc
        self.client.loop_start()

    def stop(self, timeout: float = 1.0) -> None:
        """Publish the death ourselves (a will fires only on an unclean loss), then disconnect."""
        if self.client.is_connected():
            info = self.client.publish(self.topic, state_payload(False, self._ts), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent in time: the will says it
                info.wait_for_publish(timeout)
        self.online.clear()
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if reason.is_failure:
            if self.log is not None:
                self.log.warning("sparkplug_state_refused", reason=str(reason))
            return
        client.subscribe(self.topic, qos=1)

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                    properties: Any) -> None:
        info = client.publish(self.topic, state_payload(True, self._ts), qos=1, retain=True)
        self._birth_mid = info.mid

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                   properties: Any) -> None:
        if mid == self._birth_mid:
            self.online.set()
            if self.log is not None:
                self.log.info("sparkplug_state_online", topic=self.topic, timestamp=self._ts)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        # The next connection is a new host session: a new timestamp, in its will and its birth.
        self.online.clear()
        self._ts = self._now_ms()
        self._set_will()
