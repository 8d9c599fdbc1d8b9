"""deploy/mosquitto: the shipped broker config runs in a real Mosquitto with TLS, passwords and ACLs,
and the shipped systemd agent config connects to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.broker import free_port, wait_until
from tests.deploy.tools import DEPLOY, run_tool, tool
from tests.procs import BIN, cli, http_get, metric

pytestmark = pytest.mark.integration

USERS = {"plant-sensors": "s3nsors", "vigil-agent": "ag3nt", "vigil-consumer": "c0nsumer",
         "vigil-operator": "0perator", "cmms-bridge": "cmm5", "vigil-engineer": "eng1neer"}


def make_certs(d: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=vigil-test-ca"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "san.cnf"],
    ]
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for step in steps:
        proc = run_tool("openssl", *step, cwd=d)
        assert proc.returncode == 0, proc.stderr


def templated(text: str, replace: dict[str, str]) -> str:
    """`text` with whole lines replaced; fails if a line to replace is missing (the file drifted)."""
    lines = text.splitlines()
    for old, new in replace.items():
        assert old in lines, f"{old!r} is no longer in the shipped file"
        lines[lines.index(old)] = new
    return "\n".join(lines) + "\n"


@dataclass
class GatewayBroker:
    """Mosquitto running deploy/mosquitto/mosquitto.conf, with test ports, paths and certificates."""

    workdir: Path
    port: int  # loopback listener (1883 as shipped)
    tls_port: int  # TLS listener (8883 as shipped)
    acl: Path = DEPLOY / "mosquitto" / "acl"  # the shipped ACL unless a test changes it
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.workdir
        make_certs(d)
        passwd = d / "passwd"
        for i, (user, password) in enumerate(USERS.items()):
            flags = ["-c"] if i == 0 else []
            proc = run_tool("mosquitto_passwd", *flags, "-b", str(passwd), user, password)
            assert proc.returncode == 0, proc.stderr
        (d / "data").mkdir()
        conf = templated((DEPLOY / "mosquitto" / "mosquitto.conf").read_text(), {
            "persistence_location /var/lib/mosquitto/": f"persistence_location {d / 'data'}/",
            "password_file /etc/mosquitto/passwd": f"password_file {passwd}",
            "acl_file /etc/mosquitto/acl": f"acl_file {self.acl}",
            "listener 1883 127.0.0.1": f"listener {self.port} 127.0.0.1",
            "listener 8883": f"listener {self.tls_port} 127.0.0.1",
            "certfile /etc/mosquitto/certs/server.crt": f"certfile {d / 'server.crt'}",
            "keyfile /etc/mosquitto/certs/server.key": f"keyfile {d / 'server.key'}",
            "cafile /etc/mosquitto/certs/ca.crt": f"cafile {d / 'ca.crt'}",
            "log_dest syslog": f"log_dest file {d / 'mosquitto.log'}",
        })
        if os.geteuid() == 0:
            conf += "user root\n"  # as root, mosquitto would switch to `mosquitto`, who cannot read tmp_path
        (d / "mosquitto.conf").write_text(conf)
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(d / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited {self.proc.returncode}:\n{self.log()}")
            return all(_port_open(p) for p in (self.port, self.tls_port))
        wait_until(listening, 10, what="mosquitto listeners")

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Client:
    """A paho MQTT v5 client that records its CONNACK, PUBACKs and messages."""

    def __init__(self, port: int, user: str | None, ca: Path | None = None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{free_port()}",
                             protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, USERS[user])
        if ca:
            self.c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_until(lambda: self.connack is not None, 10, what=f"CONNACK for {user}")

    def publish(self, topic: str, payload: Any) -> ReasonCode:
        mid = self.c.publish(topic, json.dumps(payload), qos=1).mid
        wait_until(lambda: mid in self.acks, 10, what=f"PUBACK on {topic}")
        return self.acks[mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def gateway_broker(tmp_path: Path) -> Iterator[GatewayBroker]:
    b = GatewayBroker(tmp_path / "mosquitto", free_port(), free_port())
    b.workdir.mkdir()
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_shipped_broker_and_agent_configs_work_together(gateway_broker: GatewayBroker, trained: Path,
                                                        tmp_path: Path) -> None:
    """Mosquitto with the shipped config refuses anonymous clients and enforces the ACL; the agent with the
    shipped systemd config (password file, $STATE_DIRECTORY, VIGIL_BROKER_URL) becomes ready and scores
    sensor readings; a consumer over TLS (verifying the CA) receives the agent's status."""
    tool("mosquitto_passwd")
    b = gateway_broker
    ca = b.workdir / "ca.crt"

    anonymous = Client(b.port, None)
    assert anonymous.connack is not None and anonymous.connack.is_failure
    anonymous.close()

    # The agent as systemd would run it: /etc/vigil/agent.toml, the credential file, $STATE_DIRECTORY.
    http_port = free_port()
    (tmp_path / "broker-password").write_text(USERS["vigil-agent"] + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(templated((DEPLOY / "systemd" / "agent.toml").read_text(), {
        'password_file = "/run/credentials/vigil-agent.service/broker-password"':
            f'password_file = "{tmp_path / "broker-password"}"',
        'path = "/var/lib/vigil/models/model.pt"  # copy a new file here (or SIGHUP) to hot-swap':
            f'path = "{trained}"',
        'listen = "127.0.0.1:9108"                # /metrics, /healthz, /readyz; '
        '0.0.0.0 for a remote Prometheus':
            f'listen = "127.0.0.1:{http_port}"',
    }))
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state"),
           "VIGIL_BROKER_URL": f"mqtt://127.0.0.1:{b.port}"}
    (tmp_path / "state").mkdir()
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen([str(BIN / "vigil-agent"), "run", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
    consumer = sensors = None
    try:
        def ready() -> bool:
            if agent.poll() is not None:
                raise AssertionError((tmp_path / "agent.log").read_text()[-3000:] + b.log())
            return http_get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200
        wait_until(ready, 30, interval=0.1, what="agent /readyz through the shipped broker config")
        assert (tmp_path / "state" / "outbox.sqlite").exists()  # state went to $STATE_DIRECTORY

        consumer = Client(b.tls_port, "vigil-consumer", ca=ca)
        assert consumer.connack is not None and not consumer.connack.is_failure
        consumer.c.subscribe("vigil/#", qos=1)
        wait_until(lambda: ("vigil/agents/gw-01/status", b"online") in consumer.messages, 10,
                   what="the agent's retained status over TLS")
        # The ACL: consumers may not inject readings; sensors may.
        assert consumer.publish("plant/pump-001/bearing_temp", {"ts": time.time(), "value": 1.0}).is_failure

        channels = json.loads(cli("vigil-train", "inspect", str(trained)).stdout)["channels"]
        sensors = Client(b.port, "plant-sensors")
        now = int(time.time()) // 60 * 60
        for i in range(3):
            reading = {"ts": now - 120 + 60 * i, "value": 1.0}
            assert not sensors.publish(f"plant/pump-001/{channels[0]}", reading).is_failure

        def accepted() -> float:
            text = http_get(f"http://127.0.0.1:{http_port}/metrics")[1]
            return metric(text, "vigil_readings_accepted_total") or 0
        wait_until(lambda: accepted() == 3, 10, what="3 sensor readings accepted by the agent")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    finally:
        for client in (consumer, sensors):
            if client is not None:
                client.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)


def test_acl_keeps_operations_topics_to_operators(gateway_broker: GatewayBroker) -> None:
    """Only operators may acknowledge and shelve, only the CMMS bridge may report events, only
    engineers may promote a model; consumers and the agent itself may do none of it; only the
    agent answers on the reply topics."""
    tool("mosquitto_passwd")
    port = gateway_broker.port
    allowed = {
        "vigil-operator": ["vigil/cmd/pump-1/ack", "vigil/cmd/pump-1/shelve", "vigil/cmd/pump-1/unshelve"],
        "cmms-bridge": ["vigil/events/pump-1"],
        "vigil-engineer": ["vigil/agents/gw-01/cmd/promote", "vigil/agents/gw-01/cmd/refit"],
        "vigil-agent": ["vigil/alerts/pump-1", "vigil/alarms/flood", "vigil/alarms/active/pump-1",
                        "vigil/agents/gw-01/health", "vigil/replies/vigil-operator/console"],
    }
    everything = [t for topics in allowed.values() for t in topics if not t.startswith("vigil/al")
                  and not t.endswith("/health")]
    for user in [*allowed, "vigil-consumer"]:
        c = Client(port, user)
        try:
            for topic in everything + allowed.get(user, []):
                refused = c.publish(topic, {"ts": 1}).is_failure
                assert refused == (topic not in allowed.get(user, [])), (user, topic)
        finally:
            c.close()
