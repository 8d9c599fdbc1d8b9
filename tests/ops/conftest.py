"""The operations loop end to end: scripted models whose risk is a reading, a plant, a consumer.

The model files here are TorchScript modules whose failure probability is one input channel
(scaled and shifted), so a test sets the risk of each grid cell by the value it publishes and
every level transition happens exactly where the test says.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import torch
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.spec import METADATA_FILE, Combiner, ModelSpec, Normalisation, SurpriseStats, Thresholds
from tests.broker import Broker, free_port, wait_until
from tests.procs import AgentProcess, Capture, metric

CHANNELS = ("x", "y")
HORIZON_S = 60.0  # fail_horizon 60 cells of 1 s
T0 = float(int(time.time()) // 1000 * 1000 - 500_000)  # event time well in the past, whole seconds
_counter = itertools.count()


class Scripted(torch.nn.Module):
    """fail_prob = clamp(scale * x[:, -1, channel] + bias): the risk is what the test sends."""

    def __init__(self, channel: int, scale: float, bias: float) -> None:
        super().__init__()
        self.channel = channel
        self.scale = scale
        self.bias = bias

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = torch.clamp(x[:, -1, self.channel] * self.scale + self.bias, 0.001, 0.999)
        return {"fail_prob": p}


def scripted_model(path: Path, *, scale: float = 1.0, bias: float = 0.0, channel: int = 0,
                   mean: tuple[float, float] = (0.0, 0.0),
                   std: tuple[float, float] = (1.0, 1.0)) -> ModelSpec:
    """Write a model file whose risk is `scale * x + bias` of the newest cell (normalised)."""
    spec = ModelSpec(
        channels=CHANNELS, period_s=1.0, window=2, horizon=1, fail_horizon=int(HORIZON_S),
        normalisation=Normalisation(mean=mean, std=std), heads=("fail_prob",),
        thresholds=Thresholds(warning=0.5, critical=0.8, hysteresis=0.05, dwell=1, cooldown=0),
        surprise=SurpriseStats(ewma_alpha=0.5, quantiles=(0.0, 1.0)),
        combiner=Combiner(w_fail=1.0, w_surprise=0.0, bias=0.0), fingerprint="ops-test",
    ).with_version(f"{scale}/{bias}/{channel}/{mean}/{std}".encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Scripted(channel, scale, bias))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={METADATA_FILE: spec.to_json()})
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return spec


def ts(k: float) -> float:
    """Event time of grid cell k."""
    return T0 + k


@dataclass
class Ops:
    """An agent with its broker, a plant publisher, a consumer, and the topics of this test."""

    broker: Broker
    agent: AgentProcess
    capture: Capture
    prefix: str
    plant: str
    state: Path
    client: mqtt.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ops-plant-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.capture.stop()

    def _pub(self, topic: str, doc: Any, sender: str | None = None, reply_to: str | None = None,
             correlation: bytes | None = None) -> None:
        props = None
        if sender is not None or reply_to is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if sender is not None:
                props.UserProperty = [("operator", sender)]
            if reply_to is not None:
                props.ResponseTopic = reply_to
                props.CorrelationData = correlation or b""
        info = self.client.publish(topic, json.dumps(doc), qos=1, properties=props)
        info.wait_for_publish(10)

    def sync(self, tries: int = 100) -> None:
        """Wait until the agent's subscription is in place at the broker.

        /readyz says "subscribed" once the SUBSCRIBE is sent, not once the broker has it: feed
        an asset of its own (long before the test's event times) until it is scored.
        """
        for i in range(tries):
            self.reading("sync", -100_000 + i, 0.1)
            try:
                wait_until(lambda: bool(self.risks("sync")), 0.2, what="the sync asset scored")
                return
            except TimeoutError:
                continue
        raise AssertionError("the agent never scored the sync asset")

    def reading(self, asset: str, k: float, x: float, y: float = 0.0) -> None:
        self._pub(f"{self.plant}/{asset}", {"ts": ts(k), "values": {"x": x, "y": y}})

    def readings(self, asset: str, cells: list[tuple[float, float]] | list[float], start: int) -> int:
        """Publish values at cells start, start+1, ...; returns the next free cell."""
        k = start
        for v in cells:
            x, y = (v, 0.0) if isinstance(v, int | float) else v
            self.reading(asset, k, x, y)
            k += 1
        return k

    def event(self, asset: str, k: float, event: str, **extra: Any) -> None:
        self._pub(f"{self.prefix}/events/{asset}", {"ts": ts(k), "event": event, **extra})

    def command(self, asset: str, name: str, doc: Any = None, sender: str = "alice") -> None:
        self._pub(f"{self.prefix}/cmd/{asset}/{name}", doc if doc is not None else {}, sender)

    def request(self, topic: str, doc: Any, correlation: bytes, sender: str = "alice") -> dict[str, Any]:
        """Publish a command or event with an MQTT 5 response topic; wait for the agent's reply."""
        reply_to = f"{self.prefix}/replies/test"

        def reply() -> dict[str, Any] | None:
            with self.capture._lock:
                got = [p for t, c, p in self.capture.correlations if t == reply_to and c == correlation]
            return json.loads(got[-1]) if got else None
        self._pub(topic, doc, sender, reply_to, correlation)
        wait_until(lambda: reply() is not None, 10, what=f"reply to {topic}")
        got = reply()
        assert got is not None
        return got

    def standing(self, asset: str) -> dict[str, Any] | None:
        """The latest retained alarm summary of `asset` seen (None: cleared or never sent)."""
        topic = f"{self.prefix}/alarms/active/{asset}"
        with self.capture._lock:
            got = [p for t, p, _ in self.capture.messages if t == topic]
        if not got:
            return None
        return json.loads(got[-1]) if got[-1] else None

    # -- what came out ---------------------------------------------------------------------------

    def alerts(self, asset: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.capture.json(f"{self.prefix}/alerts/") if asset in (None, a["asset"])]

    def risks(self, asset: str) -> list[dict[str, Any]]:
        return self.capture.json(f"{self.prefix}/risk/{asset}")

    def risk_at(self, asset: str, k: float, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for the risk message of the window ending at cell k."""
        from agent.alerts import rfc3339_ms

        want = rfc3339_ms(ts(k))

        def found() -> dict[str, Any] | None:
            hits = [r for r in self.risks(asset) if r["ts"] == want]
            return hits[-1] if hits else None
        wait_until(lambda: found() is not None, timeout, what=f"risk of {asset} at cell {k}")
        got = found()
        assert got is not None
        return got

    def health(self) -> dict[str, Any] | None:
        with self.capture._lock:
            docs = [json.loads(p) for t, p, _ in self.capture.messages if t.endswith("/health")]
        return docs[-1] if docs else None

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.agent.scrape(), name, labels) or 0.0

    def wait_metric(self, name: str, labels: str, value: float, timeout: float = 15.0) -> None:
        wait_until(lambda: self.metric(name, labels) >= value, timeout, what=f"{name}{{{labels}}} >= {value}")


def write_config(path: Path, *, broker: Broker, model: Path, state: Path, port: int, prefix: str,
                 plant: str, extra: str = "", model_extra: str = "") -> Path:
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "gw-{prefix}"

[model]
path = "{model}"
watch_interval_s = 0.3
{model_extra}

[[subscriptions]]
filter = "{plant}/+"
template = "{plant}/{{asset}}"
codec = "json-multi"

[outputs]
prefix = "{prefix}"

[http]
listen = "127.0.0.1:{port}"

[state]
dir = "{state}"
checkpoint_interval_s = 1

[log]
format = "json"
{extra}
""")
    return path


@pytest.fixture
def ops_factory(broker: Broker, tmp_path: Path) -> Iterator[Any]:
    """Start an agent on a scripted model with extra config; yields a function returning Ops."""
    started: list[Ops] = []

    def start(extra: str = "", model_extra: str = "", model: Path | None = None) -> Ops:
        n = next(_counter)
        prefix, plant = f"ops{n}-{free_port()}", f"plant{n}"
        if model is None:
            model = tmp_path / "model.pt"
            scripted_model(model)
        port = free_port()
        state = tmp_path / "state"
        config = write_config(tmp_path / f"agent{n}.toml", broker=broker, model=model, state=state,
                              port=port, prefix=prefix, plant=plant, extra=extra, model_extra=model_extra)
        capture = Capture(broker.port, [f"{prefix}/#"]).start()
        agent = AgentProcess(config, port, tmp_path / f"agent{n}.log")
        agent.start()
        ops = Ops(broker, agent, capture, prefix, plant, state)
        started.append(ops)
        agent.wait_ready(60)
        ops.sync()
        return ops

    yield start
    for o in started:
        o.agent.kill()
        o.close()
