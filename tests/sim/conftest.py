"""Fixtures for simulator tests: a recording MQTT subscriber and a per-test topic prefix."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Broker, wait_until


@dataclass
class Received:
    """One message as the subscriber saw it."""

    topic: str
    payload: Any  # decoded JSON


@dataclass
class Subscriber:
    """A QoS 1 subscriber on the session broker that keeps every message in arrival order."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[Received]:
        """A copy of what arrived so far."""
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` messages arrived; return them all."""
        wait_until(lambda: len(self.snapshot()) >= count, timeout, what=f"{count} messages")
        return self.snapshot()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix unique to this test, so tests sharing the broker never see each other."""
    return "t-" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


@pytest.fixture
def subscribe(broker: Broker) -> Iterator[Callable[[str], Subscriber]]:
    """Factory: subscribe to a topic filter and return once the broker has confirmed it."""
    clients: list[mqtt.Client] = []

    def make(topic_filter: str) -> Subscriber:
        client_id = f"test-sub-{os.getpid()}-{len(clients)}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        sub = Subscriber(client)
        subscribed = threading.Event()

        def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            with sub.lock:
                sub.messages.append(Received(msg.topic, json.loads(msg.payload)))

        client.on_message = on_message
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        clients.append(client)
        client.subscribe(topic_filter, qos=1)
        wait_until(subscribed.is_set, 10.0, what=f"SUBACK for {topic_filter}")
        return sub

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()
