"""Helpers for end-to-end tests: the real CLIs as subprocesses, configs, scrapes, MQTT capture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.broker import free_port, wait_until

BIN = Path(sys.executable).parent


def cli(name: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one of the project's console scripts to completion."""
    proc = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def write_agent_config(path: Path, *, broker_url: str, model: Path, state: Path, http_port: int,
                       client_id: str = "gw-test", extra: str = "") -> Path:
    path.write_text(f"""
[broker]
url = "{broker_url}"
client_id = "{client_id}"

[model]
path = "{model}"
watch_interval_s = 0.5

[[subscriptions]]
filter = "plant/+/+"
template = "plant/{{asset}}/{{channel}}"
codec = "json"

[outputs]
prefix = "vigil"

[http]
listen = "127.0.0.1:{http_port}"

[state]
dir = "{state}"

[log]
format = "json"
{extra}
""")
    return path


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str, labels: str = "") -> float | None:
    """A sample's value from a Prometheus text scrape.

    e.g. metric(t, 'vigil_alerts_total', 'level="warning"')
    """
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class AgentProcess:
    """`vigil-agent run` as a subprocess we can scrape, signal and kill."""

    config: Path
    http_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(BIN / "vigil-agent"), "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return http_get(self.base + "/readyz")[0] == 200
        wait_until(ready, timeout, interval=0.1, what="agent /readyz")

    def scrape(self) -> str:
        code, body = http_get(self.base + "/metrics")
        assert code == 200, f"/metrics answered {code}"
        return body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def running_agent(config: Path, http_port: int, log_path: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(config, http_port, log_path)
    a.start()
    try:
        yield a
    finally:
        a.kill()


def publish_all(port: int, messages: list[tuple[str, bytes]], client_id: str) -> None:
    """Publish each (topic, payload) at QoS 1, in order, each acknowledged before the next."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for topic, payload in messages:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


@dataclass
class Capture:
    """A separate paho client that records every message on some topics."""

    url_port: int
    topics: list[str]
    client_id: str = field(default_factory=lambda: f"capture-{os.getpid()}-{free_port()}")
    persistent: bool = False  # a session that outlives disconnects and broker restarts
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    # (topic, MQTT 5 CorrelationData, payload) of every message that carried correlation data
    correlations: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *a: Any) -> None:
        client.subscribe([(t, mqtt.SubscribeOptions(qos=1)) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            if correlation is not None:
                self.correlations.append((msg.topic, bytes(correlation), msg.payload))

    def start(self) -> Capture:
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", self.url_port, clean_start=not self.persistent,
                            properties=props)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, what="capture subscription")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ids(self) -> list[str]:
        """alert_id of every alert received, duplicates included."""
        return [a["alert_id"] for a in self.json("vigil/alerts/")]

    def json(self, prefix: str) -> list[dict[str, Any]]:
        with self._lock:  # an empty payload clears a retained message: not a document
            return [json.loads(p) for t, p, _ in self.messages if t.startswith(prefix) and p]


def logged(log_text: str, event: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines for one event (its own record of what it did)."""
    out = []
    for line in log_text.splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
