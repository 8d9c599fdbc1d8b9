"""Through a real broker: `vigil-sim sparkplug` publishes, a paho client running the host reads it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.names import BrokerURL
from agent.sparkplug.codec import ChannelMap
from agent.sparkplug.host import Host, HostOptions, Output
from agent.sparkplug.primary import PrimaryHost, state_topic
from sim.plant import CHANNELS
from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN

pytestmark = pytest.mark.integration

PUMPS = ("pump-001", "pump-002", "pump-003")


class HostClient:
    """A Sparkplug host application: paho in, the state machine in between, NCMDs out."""

    def __init__(self, port: int, group: str, reorder_timeout_s: float = 2.0) -> None:
        self.host = Host(ChannelMap(CHANNELS), HostOptions(reorder_timeout_s=reorder_timeout_s))
        self.lock = threading.Lock()
        self.out = Output()
        self.rebirths = 0
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"host-{group}-{free_port()}")
        self.client.on_connect = lambda c, *a: c.subscribe(f"spBv1.0/{group}/#", qos=0)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, what="host subscription")

    def _apply(self, got: Output) -> None:
        self.out.readings += got.readings
        self.out.rejects += got.rejects
        self.out.stale += got.stale
        for c in got.commands:  # NCMD: QoS 0, not retained ([tck-id-topics-ncmd-mqtt])
            self.client.publish(c.topic, c.payload, qos=0, retain=False)
            self.rebirths += 1

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self._apply(self.host.receive(msg.topic, bytes(msg.payload), time.time()))

    def tick(self) -> None:
        with self.lock:
            self._apply(self.host.tick())

    def covered(self) -> set[tuple[str, int]]:
        """(asset, channel) pairs seen so far; ticks the reorder timer (wait_until polls it)."""
        self.tick()
        with self.lock:
            return {(r.asset, r.channel) for r in self.out.readings}

    def count(self) -> int:
        with self.lock:
            return len(self.out.readings)

    def stale(self) -> set[str]:
        with self.lock:
            return set(self.out.stale)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def edge_node(broker: Broker, group: str) -> Iterator[subprocess.Popen[str]]:
    """`vigil-sim sparkplug` with three pumps, a minute of plant time per 1/60 s."""
    proc = subprocess.Popen(
        [str(BIN / "vigil-sim"), "sparkplug", "--broker", broker.url, "--assets", str(len(PUMPS)),
         "--group", group, "--node", "edge-1", "--speed", "3600", "--seed", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


EVERY = {(p, c) for p in PUMPS for c in range(len(CHANNELS))}


def test_births_data_and_will(broker: Broker) -> None:
    """Births and data of every pump are decoded; killing the edge node fires its will (NDEATH,
    bdSeq of its NBIRTH), and every pump's asset goes stale."""
    host = HostClient(broker.port, "it-will")
    try:
        with edge_node(broker, "it-will") as sim:
            wait_until(lambda: host.covered() >= EVERY, 20, what="readings for every pump and channel")
            n = host.count()
            wait_until(lambda: host.count() > n + 100, 20, what="data after the births")
            assert host.rebirths == 0 and host.out.rejects == []
            sim.send_signal(signal.SIGKILL)
            sim.wait(10)
            wait_until(lambda: host.stale() == set(PUMPS), 10, what="all pumps stale after the will")
    finally:
        host.stop()


def test_late_host_requests_rebirth(broker: Broker) -> None:
    """§5.17 A host that joins mid-session sees data without births, requests a rebirth, and the
    edge node answers with NBIRTH and DBIRTHs; a clean stop publishes the NDEATH itself."""
    watch = HostClient(broker.port, "it-late")  # only to know the edge node is running
    with edge_node(broker, "it-late") as sim:
        wait_until(lambda: watch.covered() >= EVERY, 20, what="the edge node running")
        watch.stop()
        host = HostClient(broker.port, "it-late", reorder_timeout_s=0.2)
        try:
            wait_until(lambda: host.covered() >= EVERY, 20, what="readings after a rebirth")
            assert host.rebirths >= 1
            sim.send_signal(signal.SIGTERM)
            out, _ = sim.communicate(timeout=20)
            assert sim.returncode == 0
            assert re.search(r"[23] birth sequences", out), out
            wait_until(lambda: host.stale() == set(PUMPS), 10, what="all pumps stale after NDEATH")
        finally:
            host.stop()


class TestPrimaryHost:
    def _retained(self, port: int, topic: str) -> dict[str, Any]:
        got: list[bytes] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"state-reader-{free_port()}")
        c.on_message = lambda cl, u, m: got.append(m.payload)
        c.connect("127.0.0.1", port)
        c.subscribe(topic, qos=1)
        c.loop_start()
        try:
            wait_until(lambda: bool(got), 10, what=f"retained {topic}")
        finally:
            c.disconnect()
            c.loop_stop()
        doc: dict[str, Any] = json.loads(got[-1])
        return doc

    def test_birth_and_clean_death(self, broker: Broker) -> None:
        """[tck-id-host-topic-phid-birth-payload] [tck-id-host-topic-phid-birth-retain] The STATE birth
        is retained JSON {"online": true, "timestamp"}; a clean stop leaves {"online": false} with
        the same timestamp ([tck-id-host-topic-phid-birth-payload-timestamp])."""
        ph = PrimaryHost(BrokerURL("127.0.0.1", broker.port, False), "vigil-clean")
        ph.start()
        try:
            wait_until(ph.online.is_set, 10, what="STATE birth acknowledged")
            birth = self._retained(broker.port, state_topic("vigil-clean"))
            assert birth["online"] is True and isinstance(birth["timestamp"], int)
        finally:
            ph.stop()
        death = self._retained(broker.port, state_topic("vigil-clean"))
        assert death == {"online": False, "timestamp": birth["timestamp"]}

    def test_will_on_unclean_loss(self, broker: Broker) -> None:
        """[tck-id-host-topic-phid-death-qos] [tck-id-host-topic-phid-death-retain] A host that dies
        leaves its will: retained {"online": false} with its birth's timestamp."""
        script = ("import threading\n"
                  "from agent.names import BrokerURL\n"
                  "from agent.sparkplug.primary import PrimaryHost\n"
                  f"ph = PrimaryHost(BrokerURL('127.0.0.1', {broker.port}, False), 'vigil-dies')\n"
                  "ph.start()\n"
                  "ph.online.wait(10)\n"
                  "print('online', flush=True)\n"
                  "threading.Event().wait(60)\n")
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "online"
            birth = self._retained(broker.port, state_topic("vigil-dies"))
            proc.kill()
            proc.wait(10)
            wait_until(lambda: self._retained(broker.port, state_topic("vigil-dies"))["online"] is False,
                       10, what="the STATE will")
            assert self._retained(broker.port, state_topic("vigil-dies"))["timestamp"] == birth["timestamp"]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)  # reaps it and closes its stdout
