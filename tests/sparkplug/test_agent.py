"""The agent with `codec = "sparkplug"`: config, pipeline (rebirths, stale, history) and end to end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent.config import (
    AgentConfig,
    BrokerConfig,
    StateConfig,
    SubscriptionConfig,
    WindowsConfig,
    load_config,
)
from agent.config import (
    ModelConfig as ModelSection,
)
from agent.errors import ConfigError
from agent.ingest import Reason
from agent.metrics import Metrics
from agent.pipeline import Pipeline
from agent.runtime import load_model
from agent.sparkplug.codec import encode, new_metric
from agent.sparkplug.sparkplug_b_pb2 import DataType
from agent.spec import Thresholds
from tests.agent import conftest as agent_fixtures
from tests.agent.conftest import PERIOD_S, WINDOW, ModelFile
from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, Capture, metric, running_agent, write_agent_config
from tests.sparkplug.helpers import FakeClock, dbirth, ddata, nbirth, ndeath, topic

model_file = agent_fixtures.model_file  # the tiny three-channel model of tests/agent
WALL = 1_767_225_600.0
T0_MS = int((WALL - 86_400) * 1000)


class TestConfig:
    def _load(self, tmp_path: Path, sub: str) -> AgentConfig:
        path = tmp_path / "a.toml"
        path.write_text(f'[model]\npath = "m.pt"\n\n[[subscriptions]]\n{sub}\n')
        return load_config(path, env={})

    def test_sparkplug_subscription(self, tmp_path: Path) -> None:
        """A sparkplug subscription needs only a filter under spBv1.0/; its table has defaults."""
        cfg = self._load(tmp_path, 'filter = "spBv1.0/plant/#"\ncodec = "sparkplug"\n'
                         '[subscriptions.sparkplug]\nreorder_timeout_s = 0.5\nhost_id = "vigil-1"')
        sp = cfg.subscriptions[0].sparkplug
        assert (sp.reorder_timeout_s, sp.rebirth_interval_s, sp.asset, sp.host_id) == (
            0.5, 10.0, "{device}", "vigil-1")

    @pytest.mark.parametrize(("sub", "error"), [
        ('filter = "spBv1.0/plant/#"\ncodec = "sparkplug"\ntemplate = "spBv1.0/{asset}"', "no template"),
        ('filter = "$share/g/spBv1.0/plant/#"\ncodec = "sparkplug"', "shared subscription"),
        ('filter = "plant/#"\ncodec = "sparkplug"', "under spBv1.0/"),
        ('filter = "spBv1.0/plant/#"\ncodec = "sparkplug"\n[subscriptions.sparkplug]\nasset = "{x}"',
         "{group}, {node}"),
        ('filter = "plant/+/+"\ntemplate = "plant/{asset}/{channel}"\n[subscriptions.sparkplug]\n'
         'host_id = "h"', 'codec = "sparkplug"'),
        ('filter = "plant/+/+"', "needs a template"),
    ])
    def test_refused(self, tmp_path: Path, sub: str, error: str) -> None:
        """Settings that cannot work with Sparkplug (or without it) are refused with a reason."""
        with pytest.raises(ConfigError, match=r"subscriptions\.0") as exc:
            self._load(tmp_path, sub)
        assert error in str(exc.value)


def pipeline(tmp_path: Path, model: Path, **sparkplug: Any) -> tuple[Pipeline, FakeClock, CollectorRegistry]:
    clock = FakeClock()
    cfg = AgentConfig(
        broker=BrokerConfig(client_id="gw-sp"),
        model=ModelSection(path=model),
        subscriptions=[SubscriptionConfig.model_validate(
            {"filter": "spBv1.0/g1/#", "codec": "sparkplug", "sparkplug": sparkplug})],
        windows=WindowsConfig(max_gap=2, allowed_lateness=3),
        state=StateConfig(dir=tmp_path / "state"),
    )
    registry = CollectorRegistry()
    pipe = Pipeline(cfg, load_model(model), Metrics(registry), wall=lambda: WALL, clock=clock)
    return pipe, clock, registry


def send(pipe: Pipeline, kind: str, payload: bytes,
         device: str | None = "pump-1") -> tuple[int, list[Reason]]:
    return pipe.ingest(0, topic(kind, device), payload, WALL, 0.0)


def cells(pipe: Pipeline, first_seq: int, n: int, historical: bool = False) -> int:
    """n cells of all three channels for pump-1 from T0; returns the next seq."""
    for k in range(n):
        ts_ms = T0_MS + int(k * PERIOD_S * 1000) + 1000
        n_ok, why = send(pipe, "DDATA", ddata(first_seq + k, {1: 0.1, 2: 0.2, 3: 0.3}, ts_ms=ts_ms,
                                              historical=historical))
        assert (n_ok, why) == (3, []), why
    return first_seq + n


class TestPipeline:
    def test_births_and_data_become_windows(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Readings decoded by the host are written into windows and scored."""
        pipe, _, _ = pipeline(tmp_path, model_file.path)
        send(pipe, "NBIRTH", nbirth(), None)
        assert send(pipe, "DBIRTH", dbirth(1, ts_ms=T0_MS)) == (3, [])
        cells(pipe, 2, WINDOW + 1)
        out = pipe.run_batch(64)
        assert [r.asset for r in out.risks] and all(r.asset == "pump-1" for r in out.risks)

    def test_rebirth_request_and_reasons(self, tmp_path: Path, model_file: ModelFile) -> None:
        """An unknown alias is counted as `unknown_alias` and leaves an NCMD for the app to publish."""
        pipe, _, _ = pipeline(tmp_path, model_file.path)
        send(pipe, "NBIRTH", nbirth(), None)
        send(pipe, "DBIRTH", dbirth(1, ts_ms=T0_MS))
        payload = encode([new_metric(DataType.Double, 1.0, alias=99, ts_ms=T0_MS)], T0_MS, 2)
        assert send(pipe, "DDATA", payload) == (0, [Reason.ALIAS])
        commands, notices = pipe.take_sparkplug()
        assert [c.topic for c in commands] == ["spBv1.0/g1/NCMD/edge1"] and notices.risks == []
        assert pipe.take_sparkplug()[0] == []

    def test_reorder_timeout_runs_on_tick(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Data before a birth waits for the reorder timeout; tick() then asks for a rebirth."""
        pipe, clock, _ = pipeline(tmp_path, model_file.path, reorder_timeout_s=1.0)
        assert send(pipe, "DDATA", ddata(9)) == (0, [])
        assert pipe.tick(WALL, 0.0) == (0, [])
        clock.advance(1.0)
        assert pipe.tick(WALL, 0.0) == (0, [Reason.NO_BIRTH])
        assert [c.topic for c in pipe.take_sparkplug()[0]] == ["spBv1.0/g1/NCMD/edge1"]

    def test_ndeath_marks_assets_stale(self, tmp_path: Path, model_file: ModelFile) -> None:
        """An NDEATH with the NBIRTH's bdSeq publishes a stale risk message for each of its devices."""
        pipe, _, _ = pipeline(tmp_path, model_file.path)
        send(pipe, "NBIRTH", nbirth(bd_seq=3), None)
        send(pipe, "DBIRTH", dbirth(1, ts_ms=T0_MS))
        cells(pipe, 2, WINDOW + 1)
        pipe.run_batch(64)
        send(pipe, "NDEATH", ndeath(3), None)
        _, notices = pipe.take_sparkplug()
        assert [(r.asset, r.doc["stale"]) for r in notices.risks] == [("pump-1", True)]
        assert pipe.n_stale == 1

    def test_historical_windows_raise_no_alert(self, tmp_path: Path, model_file: ModelFile) -> None:
        """Windows closed by is_historical readings are scored (event time) but neither decide a
        level nor publish risk; live readings after them do."""
        pipe, _, registry = pipeline(tmp_path, model_file.path)
        pipe.thresholds = Thresholds(1e-6, 2e-6, 1e-7, 1, 0)  # any risk at all would alert
        send(pipe, "NBIRTH", nbirth(), None)
        send(pipe, "DBIRTH", dbirth(1, ts_ms=T0_MS))
        seq = cells(pipe, 2, 3 * WINDOW, historical=True)
        hist = pipe.run_batch(256)
        assert hist.risks == [] and hist.alerts == []
        assert (registry.get_sample_value("vigil_windows_inferred_total") or 0) > 0
        for k in range(3 * WINDOW, 4 * WINDOW):
            ts_ms = T0_MS + int(k * PERIOD_S * 1000) + 1000
            send(pipe, "DDATA", ddata(seq, {1: 0.1, 2: 0.2, 3: 0.3}, ts_ms=ts_ms))
            seq += 1
        live = pipe.run_batch(256)
        assert live.risks and live.alerts


FAILING = "pump-002"
PUMPS = ("pump-001", "pump-002", "pump-003", "pump-004")


@pytest.mark.integration
def test_agent_alerts_from_sparkplug_and_marks_dead_node_stale(trained: Path, broker: Broker,
                                                                tmp_path: Path) -> None:
    """End to end: the simulator's edge node drives pump-002 to failure and the agent alerts;
    killing the edge node (its will, NDEATH, fires) publishes every pump's risk as stale."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-spb")
    text = config.read_text().replace(
        'filter = "plant/+/+"\ntemplate = "plant/{asset}/{channel}"\ncodec = "json"',
        'filter = "spBv1.0/it-agent/#"\ncodec = "sparkplug"\n\n[subscriptions.sparkplug]\n'
        'host_id = "vigil-it"')
    config.write_text(text)
    capture = Capture(broker.port, ["vigil/alerts/#", "vigil/risk/#", "spBv1.0/STATE/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        wait_until(lambda: any(t == "spBv1.0/STATE/vigil-it" for t, _, _ in capture.messages), 10,
                   what="the Primary Host STATE birth")
        sim = subprocess.Popen(
            [str(BIN / "vigil-sim"), "sparkplug", "--broker", broker.url, "--assets", "4",
             "--group", "it-agent", "--speed", "1200", "--seed", "11", "--fail", FAILING,
             "--fail-within", "21600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: any(a["asset"] == FAILING and a["level"] in ("warning", "critical")
                                   for a in capture.json("vigil/alerts/")), 90, interval=0.1,
                       what=f"an alert for {FAILING}")
            started = time.monotonic()
            sim.kill()
            sim.communicate(timeout=10)

            def all_stale() -> bool:
                latest = {doc["asset"]: doc["stale"] for doc in capture.json("vigil/risk/")}
                return all(latest.get(p) for p in PUMPS)
            wait_until(all_stale, 15, interval=0.1, what="every pump stale after the NDEATH")
            stale_after = time.monotonic() - started
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.communicate(timeout=10)
        scrape = agent.scrape()
        assert agent.terminate() == 0
    capture.stop()
    assert [a for a in capture.json("vigil/alerts/") if a["asset"] != FAILING] == []
    assert (metric(scrape, "vigil_readings_accepted_total") or 0) > 1000
    states = [p for t, p, _ in capture.messages if t == "spBv1.0/STATE/vigil-it"]
    assert b'"online":true' in states[0] and b'"online":false' in states[-1]
    print(f"stale {stale_after:.1f}s after the kill")
