"""The gateway learns its own machines, end to end on a real broker with the simulator: an agent
without a model records, fits its first model in a child process, serves it and alerts on the
failing pump; a refit after a maintenance event makes a candidate that becomes the shadow; a
refit that cannot train leaves the live model alone; a kill -9 during a refit leaves a state
the next start serves from."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.runtime import read_spec
from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, AgentProcess, Capture, cli, logged, metric, write_agent_config

pytestmark = pytest.mark.integration

FAILING = "pump-002"
LEARN = """
[learn]
min_history = "2d"
fit_options = {epochs = 3, windows_per_epoch = 6000, hidden = 16}
"""


def request(port: int, topic: str, correlation: bytes, capture: Capture, doc: Any = None) -> dict[str, Any]:
    """Publish with an MQTT 5 response topic; the agent's reply."""
    reply_to = "vigil/replies/test/learning"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"req-{free_port()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = reply_to
    props.CorrelationData = correlation
    c.publish(topic, json.dumps(doc or {}), qos=1, properties=props).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()

    def got() -> list[bytes]:
        with capture._lock:
            return [p for t, c2, p in capture.correlations if t == reply_to and c2 == correlation]
    wait_until(lambda: bool(got()), 300, interval=0.5, what=f"reply to {topic}")
    return dict(json.loads(got()[-1]))


def publish_events(port: int, events_csv: Path) -> int:
    """The simulated CMMS: the history's failures and services as events, as a bridge would send."""
    with events_csv.open() as f:
        rows = list(csv.DictReader(f))
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmms-{free_port()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for r in rows:
        kind = "failure" if r["event"] == "failure" else "repair"
        c.publish(f"vigil/events/{r['asset']}", json.dumps({"ts": r["ts"], "event": kind}), qos=1
                  ).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()
    return len(rows)


def health(capture: Capture) -> list[dict[str, Any]]:
    return capture.json("vigil/agents/gw-learn/health")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_agent_without_a_model_learns_serves_and_refits(broker: Broker, tmp_path: Path) -> None:
    hist = tmp_path / "history"
    cli("vigil-sim", "history", "--assets", "4", "--days", "3", "--seed", "5", "--out", str(hist))
    port = free_port()
    state, model = tmp_path / "state", tmp_path / "models" / "pump.pt"
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=model, state=state,
                                http_port=port, client_id="gw-learn", extra=LEARN)
    capture = Capture(broker.port, ["vigil/agents/gw-learn/#", "vigil/alerts/#", "vigil/replies/#"]).start()
    agent = AgentProcess(config, port, tmp_path / "agent.log")
    agent.start()
    try:
        wait_until(lambda: any(d.get("mode") == "learning" for d in health(capture)), 30,
                   what="the learning health document")
        n_events = publish_events(broker.port, hist / "events.csv")
        cli("vigil-sim", "replay", str(hist / "history.csv"), "--broker", broker.url, "--speed", "0",
            "--no-progress", timeout=300)

        # Learning: recorded, then the first fit in a child process, then serving that model.
        wait_until(model.exists, 300, interval=0.5, what="the first model")
        agent.wait_ready(120)
        learning = [d for d in health(capture) if d.get("mode") == "learning"]
        assert max(d["history_s"] for d in learning) >= 2 * 86400
        assert learning[-1]["fit"] in ("running", "done")
        events = (state / "events.csv").read_text().splitlines()
        assert len(events) == 1 + n_events
        first = [json.loads(line) for line in (state / "models" / "decisions.jsonl").read_text().splitlines()]
        assert first and first[0]["kind"] == "first"
        wait_until(lambda: any(d.get("mode") == "serving" for d in health(capture)), 60,
                   what="the serving health document")

        sim = subprocess.run(
            [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", "4", "--speed", "1200",
             "--duration", "40", "--seed", "11", "--fail", FAILING, "--fail-within", "21600"],
            capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0, sim.stderr
        wait_until(lambda: any(a["asset"] == FAILING and a["level"] != "ok"
                               for a in capture.json("vigil/alerts/")), 30, what=f"an alert for {FAILING}")

        # A refit after the repair: a candidate judged against the live model, then the shadow.
        live_sha = sha(model)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cmms2-{free_port()}", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", broker.port)
        c.publish(f"vigil/events/{FAILING}", json.dumps({"ts": "now", "event": "repair"}), qos=1)
        c.disconnect()
        reply = request(broker.port, "vigil/agents/gw-learn/cmd/refit", b"r1", capture)
        result = "accepted" if reply["result"] == "ok" else "refused"
        assert reply["reason"].startswith(f"candidate {result}"), reply
        assert (metric(agent.scrape(), "vigil_model_candidates_total", f'result="{result}"') or 0) == 1
        if result == "accepted":
            wait_until(lambda: "vigil_shadow_model_info{" in agent.scrape(), 30,
                       what="the candidate as the shadow")
            wait_until(lambda: (health(capture)[-1].get("trial") or {}).get("role") == "candidate", 30,
                       what="the candidate's trial")
        assert sha(model) == live_sha  # the live model serves on until a trial says otherwise
        assert [d["result"] for d in logged(agent.log(), "refit_finished")] in (["accepted"], ["refused"])

        # kill -9 while a refit runs: the next start serves the live model, nothing half-written.
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"op-{free_port()}", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", broker.port)
        c.publish("vigil/agents/gw-learn/cmd/refit", b"{}", qos=1).wait_for_publish(10)
        c.disconnect()
        wait_until(lambda: len(logged(agent.log(), "refit_started")) == 2, 30, interval=0.01,
                   what="a second refit running")
        agent.kill()
        agent.start()
        agent.wait_ready(60)
        assert sha(model) == live_sha
        # Every model file in sight is whole (a killed refit leaves only its hidden work folder).
        for f in (state / "models").glob("*.pt"):
            assert read_spec(f).version, f
        assert not [f for f in (state / "models").iterdir() if f.name.endswith(".tmp")]
    finally:
        agent.kill()
        capture.stop()
