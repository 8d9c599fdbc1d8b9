"""The MQTT link's batched publishing: one hand-over to paho per batch, nothing lost, order kept."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, BrokerConfig, StateConfig, SubscriptionConfig
from agent.config import ModelConfig as ModelSection
from agent.mqtt import Link, publish_packet
from tests.broker import Broker, wait_until


def _link(broker: Broker, tmp: Path, client_id: str, protocol: str = "5") -> Link:
    sub = SubscriptionConfig(filter="none/+/+", template="none/{asset}/{channel}")
    cfg = AgentConfig(broker=BrokerConfig(url=broker.url, client_id=client_id, protocol=protocol),  # type: ignore[arg-type]
                      model=ModelSection(path=tmp / "unused.pt"), subscriptions=[sub],
                      state=StateConfig(dir=tmp / "state"))
    acks: list[tuple[int, bool]] = []
    return Link(cfg, on_message=lambda *a: True, on_ack=lambda mid, ok: acks.append((mid, ok)),
                on_state=lambda up: None, log=structlog.get_logger("test"))


class Subscriber:
    """Collects every message under `prefix/#`, in arrival order."""

    def __init__(self, broker: Broker, prefix: str, protocol: int = mqtt.MQTTv5) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{prefix}-{id(self)}",
                             protocol=protocol)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda client, *a: client.subscribe(f"{prefix}/#", qos=1)
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        assert ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def link(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    protocol = getattr(request, "param", "5")
    lk = _link(broker, tmp_path, f"gw-link-{protocol}", protocol)
    lk.start()
    assert lk.connected.wait(10)
    yield lk
    lk.stop()


def _batch(prefix: str, assets: int, per_asset: int) -> list[tuple[str, bytes]]:
    """Messages of several assets interleaved, each asset's numbered in order."""
    return [(f"{prefix}/risk/a{a}", f'{{"asset":"a{a}","n":{i}}}'.encode())
            for i in range(per_asset) for a in range(assets)]


@pytest.mark.integration
class TestPublishMany:
    @pytest.mark.parametrize("link", ["5", "3.1.1"], indirect=True)
    def test_every_message_arrives_in_order_with_one_hand_over(self, broker: Broker, link: Link) -> None:
        """A batch of QoS 0 messages of many assets reaches a subscriber whole and in order
        (so each asset's in the order scored), through one call into paho's out-queue."""
        prefix = f"mb{link.cfg.broker.protocol.replace('.', '')}"
        sub = Subscriber(broker, prefix)
        calls: list[int] = []
        queue = link.client._packet_queue

        def counting(*args: Any) -> Any:
            # Only hand-overs that carry this test's messages: the link sets `connected` before
            # its on-connect callback publishes its status and subscribes, through the same call.
            if prefix.encode() in bytes(args[1]):
                calls.append(len(args[1]))
            return queue(*args)

        link.client._packet_queue = counting  # type: ignore[method-assign]
        try:
            first, second = _batch(prefix, 7, 40), _batch(prefix, 3, 5)
            assert link.publish_many(first, qos=0, retain=False) == len(first)
            assert link.publish_many(second, qos=0, retain=False) == len(second)
            wait_until(lambda: len(sub.got) >= len(first) + len(second), 10, what="every message")
            assert [(t, p) for t, p, _ in sub.got] == first + second
            assert len(calls) == 2  # one hand-over per batch, not per message
        finally:
            sub.stop()

    def test_retained_flag_is_kept(self, broker: Broker, link: Link) -> None:
        """With retain, the broker keeps each topic's last message of the batch for a late subscriber."""
        batch = _batch("mbret", 2, 3)
        early = Subscriber(broker, "mbret")
        assert link.publish_many(batch, qos=0, retain=True) == len(batch)
        try:  # the broker has the whole batch (so its retained copies) before the late one subscribes
            wait_until(lambda: len(early.got) >= len(batch), 10, what="the batch at the broker")
        finally:
            early.stop()
        late = Subscriber(broker, "mbret")
        try:
            wait_until(lambda: len(late.got) >= 2, 10, what="retained messages")
            assert sorted(late.got) == [("mbret/risk/a0", b'{"asset":"a0","n":2}', True),
                                        ("mbret/risk/a1", b'{"asset":"a1","n":2}', True)]
        finally:
            late.stop()
            link.publish_many([("mbret/risk/a0", b""), ("mbret/risk/a1", b"")], retain=True)  # clear them

    def test_qos1_goes_message_by_message_and_is_acknowledged(self, broker: Broker, link: Link) -> None:
        """`risk_qos = 1`: every message is published and tracked by paho (each gets its PUBACK)."""
        acked: list[int] = []
        link._on_ack = lambda mid, ok: acked.append(mid)
        sub = Subscriber(broker, "mbq1")
        try:
            batch = _batch("mbq1", 3, 4)
            assert link.publish_many(batch, qos=1) == len(batch)
            wait_until(lambda: len(sub.got) >= len(batch) and len(acked) >= len(batch), 10,
                       what="delivery and acks")
            assert [(t, p) for t, p, _ in sub.got] == batch
            assert len(set(acked)) >= len(batch)  # (the retained `online` status may be among them)
        finally:
            sub.stop()

    def test_nothing_is_taken_without_a_connection(self, broker: Broker, tmp_path: Path) -> None:
        """Like paho's own QoS 0 publish, a batch is not queued while there is no connection."""
        lk = _link(broker, tmp_path, "gw-link-off")
        assert lk.publish_many(_batch("mboff", 2, 2)) == 0
        assert lk.publish_many([]) == 0

    def test_a_wildcard_topic_is_refused(self) -> None:
        """A topic that could not be published to is an error, as in paho, not a broken packet."""
        for topic in ("a/+/b", "a/#", ""):
            with pytest.raises(ValueError):
                publish_packet(topic, b"x")


class TestPublishPacket:
    @given(topic=st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",)),
                         min_size=1, max_size=80),
           size=st.sampled_from([0, 1, 100, 126, 127, 128, 16_000, 16_383, 16_384, 70_000]),
           retain=st.booleans(), v5=st.booleans())
    @settings(max_examples=150, deadline=None)
    def test_same_bytes_as_paho(self, topic: str, size: int, retain: bool, v5: bool) -> None:
        """The packet is byte for byte what paho's own QoS 0 publish writes, also where the
        remaining length takes two and three bytes."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        seen: list[bytes] = []
        c._sock = object()  # type: ignore[assignment]  # "connected", for _send_publish
        c._packet_queue = lambda command, packet, *a: seen.append(bytes(packet))  # type: ignore[method-assign,assignment,return-value]
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        c.publish(topic, payload, qos=0, retain=retain)
        c._sock = None  # nothing for paho to close
        assert seen == [publish_packet(topic, payload, retain=retain, v5=v5)]
