"""Bad input at volume through a real broker: fuzzed payloads and 100,000 asset ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, metric, running_agent, write_agent_config

pytestmark = pytest.mark.integration

REASONS = ("malformed", "payload_size", "topic", "name", "type", "nonfinite", "ts", "future",
           "too_old", "late", "duplicate", "asset_limit")

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                         st.text(max_size=8))
payloads = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.fixed_dictionaries({"ts": json_scalars, "value": json_scalars}).map(
        lambda d: json.dumps(d).encode()),
    st.dictionaries(st.text(max_size=6), json_scalars, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.lists(json_scalars, max_size=4).map(lambda d: json.dumps(d).encode()),
)
channels = st.sampled_from(["bearing_temp", "vib_rms", "speed", "humidity", "x y", "é"])


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{free_port()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait_until(c.is_connected, 10, what="publisher connected")
    return c


def close(c: mqtt.Client, infos: list[mqtt.MQTTMessageInfo]) -> None:
    """Disconnect only once every message has left (QoS 1: been acknowledged)."""
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def counted(text: str) -> float:
    """Readings rejected, and readings of channels the model lacks (ignored as `unmapped`)."""
    return sum(metric(text, "vigil_readings_rejected_total", f'reason="{r}"') or 0 for r in REASONS) + (
        metric(text, "vigil_readings_ignored_total", 'reason="unmapped"') or 0)


def test_fuzzed_payloads_are_counted_and_healthy_assets_keep_scoring(
        trained: Path, broker: Broker, tmp_path: Path) -> None:
    """10,000 generated payloads on fuzz topics: the agent stays up, each message ends as one
    accepted reading or one counted rejection, and a healthy asset fed in between is still scored."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-fuzz")
    examples: list[tuple[str, bytes]] = []

    @settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(asset=st.integers(0, 30), channel=channels, payload=payloads)
    def collect(asset: int, channel: str, payload: bytes) -> None:
        examples.append((f"plant/fuzz-{asset}/{channel}", payload))

    collect()
    assert len(examples) >= 10_000
    capture = Capture(broker.port, ["vigil/risk/pump-good"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        pub = publisher(broker.port)
        t0 = time.time() - 7200  # 100 cells of 60 s end before now
        infos = []
        for i, (topic, payload) in enumerate(examples):
            infos.append(pub.publish(topic, payload, qos=1))
            if i % 100 == 0:  # a healthy pump, one cell per 100 fuzz messages
                cell = i // 100
                for ch, v in (("bearing_temp", 40.0), ("discharge_pressure", 3.9), ("motor_current", 30.0),
                              ("speed", 1200.0), ("vib_rms", 1.4)):
                    infos.append(pub.publish(
                        f"plant/pump-good/{ch}",
                        json.dumps({"ts": t0 + 60 * cell, "value": v + 0.01 * (cell % 7)}), qos=1))
        close(pub, infos)
        sent = len(infos)

        def settled() -> bool:
            text = agent.scrape()
            return (metric(text, "vigil_readings_accepted_total") or 0) + counted(text) >= sent
        wait_until(settled, 60, interval=0.2, what="every message accounted for")
        text = agent.scrape()
        assert (metric(text, "vigil_readings_accepted_total") or 0) + counted(text) == sent
        assert counted(text) >= 9_000
        assert agent.proc is not None and agent.proc.poll() is None
        agent.wait_ready(timeout=5)
        wait_until(lambda: len(capture.json("vigil/risk/pump-good")) >= 50, 10, what="healthy risk")
    capture.stop()
    risks = [r for r in capture.json("vigil/risk/pump-good") if not r["stale"]]
    assert len(risks) >= 50 and all(0 <= r["risk"] <= 1 for r in risks)


def test_100k_asset_ids_keep_memory_bounded(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """100,000 distinct asset ids against max_assets = 1000: new ones beyond the limit are counted
    as asset_limit, and the agent's RSS grows by less than 60 MiB."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-card",
                                extra="\n[windows]\nmax_assets = 1000\n")
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        assert agent.proc is not None
        before = rss_kib(agent.proc.pid)
        pub = publisher(broker.port)
        ts = time.time() - 60
        infos = []
        for i in range(100_000):
            infos.append(pub.publish(f"plant/asset-{i:06d}/speed", b'{"ts": %.1f, "value": 1.0}' % ts,
                                     qos=1))
            if i >= 20_000:  # paho's message ids wrap at 65535: keep fewer than that outstanding
                infos[i - 20_000].wait_for_publish(30)
        close(pub, infos)
        wait_until(lambda: (metric(agent.scrape(), "vigil_readings_rejected_total", 'reason="asset_limit"')
                            or 0) + (metric(agent.scrape(), "vigil_readings_accepted_total") or 0)
                   + (metric(agent.scrape(), "vigil_messages_dropped_total") or 0) >= 100_000, 90,
                   interval=0.5, what="100k readings accounted for")
        text = agent.scrape()
        assert metric(text, "vigil_assets") is not None
        assert metric(text, "vigil_readings_accepted_total") == 1000
        assert metric(text, "vigil_readings_rejected_total", 'reason="asset_limit"') == 99_000 - (
            metric(text, "vigil_messages_dropped_total") or 0)
        growth_mib = (rss_kib(agent.proc.pid) - before) / 1024
        print(f"RSS growth with 100k asset ids (1000 held): {growth_mib:.1f} MiB")
        assert growth_mib < 60, growth_mib
        agent.wait_ready(timeout=5)
