"""`vigil-agent top` as `vigil-operator` through the shipped broker config (TLS, passwords, ACL): it
reads everything it shows, its commands reach the agent's user with who sent them, and the agent's
reply on the response topic under the operator's user name comes back to the screen; it is the
ACL's `pattern read vigil/replies/%u/#` that lets it through."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import free_port, wait_until
from tests.deploy.test_mosquitto import USERS, GatewayBroker
from tests.deploy.tools import DEPLOY, tool
from tests.procs import BIN
from tests.terminal import section, tmux

pytestmark = pytest.mark.integration


REPLY_PATTERN = "pattern read vigil/replies/%u/#"


@pytest.fixture(params=["shipped", "without the reply pattern"])
def shipped_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayBroker]:
    """The shipped broker config; its ACL as shipped, or less the line granting each user its replies."""
    tool("mosquitto_passwd")
    acl = DEPLOY / "mosquitto" / "acl"
    if request.param != "shipped":
        lines = acl.read_text().splitlines()
        assert REPLY_PATTERN in lines, "the shipped ACL no longer grants replies by that pattern"
        acl = tmp_path / "acl"
        acl.write_text("\n".join(line for line in lines if line != REPLY_PATTERN) + "\n")
    b = GatewayBroker(tmp_path / "mosquitto", free_port(), free_port(), acl=acl)
    b.workdir.mkdir()
    b.start()
    try:
        yield b
    finally:
        b.stop()


class AgentUser:
    """An MQTT 5 client logged in as `vigil-agent`: publishes what an agent does, reads commands."""

    def __init__(self, port: int) -> None:
        self.commands: list[tuple[str, dict[str, Any], Any]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-agent-{free_port()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set("vigil-agent", USERS["vigil-agent"])
        self.c.on_message = self._message
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe("vigil/cmd/#", qos=1)
        wait_until(self.subscribed.is_set, 10, what="the agent user's subscription")

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.commands.append((msg.topic, json.loads(msg.payload), msg.properties))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                correlation: bytes | None = None) -> None:
        props = None
        if correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        info = self.c.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)
        assert info.rc == 0

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_top_as_operator_through_the_shipped_acl_over_tls(shipped_broker: GatewayBroker,
                                                          tmp_path: Path) -> None:
    """The view reads all it shows and gets the agent's reply; without the ACL's reply pattern
    the reply never reaches it: the view says none came."""
    b = shipped_broker
    shipped = b.acl == DEPLOY / "mosquitto" / "acl"
    agent = AgentUser(b.port)
    try:
        agent.publish("vigil/agents/gw-01/status", b"online", retain=True)
        agent.publish("vigil/risk/pump-1", json.dumps(
            {"asset": "pump-1", "ts": "2026-03-02T07:31:00.000Z", "risk": 0.62, "level": "warning",
             "stale": False, "signals": {}, "model_version": "abc123"}).encode(), retain=True)
        (tmp_path / "pw").write_text(USERS["vigil-operator"] + "\n")
        rc_file = tmp_path / "top.rc"
        cmd = (f"{BIN / 'vigil-agent'} top --broker mqtts://127.0.0.1:{b.tls_port} "
               f"--ca-file {b.workdir / 'ca.crt'} --username vigil-operator "
               f"--password-file {tmp_path / 'pw'} --operator alice --shelve-for 2h; echo $? > {rc_file}")
        with tmux(cmd) as term:
            screen = term.wait(lambda s: section(s, "Assets by risk")[0].startswith("▶  pump-1"),
                               "pump-1 on screen")
            assert "gw-01 online" in screen
            term.keys("s")
            wait_until(lambda: len(agent.commands) == 1, 10, what="the shelve command at the agent's user")
            topic, doc, props = agent.commands[0]
            assert topic == "vigil/cmd/pump-1/shelve" and doc["for_s"] == 7200
            assert ("operator", "alice") in props.UserProperty
            assert props.ResponseTopic.startswith("vigil/replies/vigil-operator/top-")
            # Every filter but the reply topic is readable; that one only through the pattern (a
            # broker may refuse the subscription, or take it and deliver nothing).
            denied = [line.strip() for line in term.screen().splitlines() if "not allowed to read" in line]
            assert denied in ([], [] if shipped else [f"not allowed to read: {props.ResponseTopic}"]), denied

            agent.publish(props.ResponseTopic, json.dumps(
                {"command": "shelve", "asset": "pump-1", "result": "rejected",
                 "reason": "longer than max_shelve_s", "agent_id": "gw-01"}).encode(),
                correlation=props.CorrelationData)
            shown = "shelve pump-1: rejected (longer than max_shelve_s) from gw-01"
            if shipped:
                term.wait(lambda s: shown in s, "the agent's reply on screen")
            else:
                screen = term.wait(lambda s: "shelve pump-1: no reply within 5 s" in s,
                                   "the view to give up on the reply")
                assert shown not in screen
            term.keys("q")
            wait_until(rc_file.exists, 10, what="the view to exit")
            assert rc_file.read_text().strip() == "0"
    finally:
        agent.close()
