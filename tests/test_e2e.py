"""End to end: simulated history -> vigil-train fit -> vigil-agent run -> simulator live -> alert."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, Capture, logged, metric, running_agent, write_agent_config

pytestmark = pytest.mark.integration

FAILING = "pump-002"
HEALTHY = ("pump-001", "pump-003", "pump-004")


def test_failing_asset_alerts_healthy_ones_do_not(trained: Path, broker: Broker, tmp_path: Path) -> None:
    """A simulated asset driven to failure raises a warning or critical alert through the broker;
    healthy assets raise none, and /metrics counts the readings and the alert."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-e2e")
    capture = Capture(broker.port, ["vigil/alerts/#", "vigil/agents/#", "vigil/risk/#"]).start()
    started = time.monotonic()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = subprocess.Popen(
            [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", "4",
             "--speed", "1200", "--duration", "40", "--seed", "11", "--fail", FAILING,
             "--fail-within", "21600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def alerted() -> bool:
                return any(a["asset"] == FAILING and a["level"] in ("warning", "critical")
                           for a in capture.json("vigil/alerts/"))
            wait_until(alerted, 60, interval=0.1, what=f"an alert for {FAILING}")
            latency = time.monotonic() - started
            _out, err = sim.communicate(timeout=60)
            assert sim.returncode == 0, err
        finally:
            if sim.poll() is None:
                sim.kill()
        text = agent.scrape()
        assert agent.terminate() == 0
        log = agent.log()
    capture.stop()
    # A clean stop is no warning; a lost broker would be.
    assert [d["level"] for d in logged(log, "mqtt_disconnected")] in ([], ["info"])
    # Every risk message has the fields the README lists, the first of each asset included;
    # every scored one (not a stale notice) all its signals.
    risks = capture.json("vigil/risk/")
    assert {r["asset"] for r in risks} >= {FAILING, *HEALTHY}
    for r in risks:
        assert set(r) >= {"asset", "ts", "risk", "level", "stale", "signals", "model_version"}, r
        assert r["stale"] or set(r["signals"]) >= {"fail_prob", "surprise"}, r
    assert any(r["signals"]["surprise"] is not None for r in risks)
    alerts = capture.json("vigil/alerts/")
    first = next(a for a in alerts if a["asset"] == FAILING)
    assert first["previous_level"] == "ok"
    assert set(first) >= {"asset", "ts", "level", "previous_level", "risk", "horizon_s",
                          "top_channels", "model_version", "agent_id", "alert_id"}
    assert first["agent_id"] == "gw-e2e"
    assert [a for a in alerts if a["asset"] in HEALTHY] == []
    readings = metric(text, "vigil_readings_accepted_total")
    assert readings is not None and readings > 1000
    raised = sum(metric(text, "vigil_alerts_total", f'level="{lv}"') or 0 for lv in ("warning", "critical"))
    assert raised >= 1
    statuses = [p for t, p, _ in capture.messages if t == "vigil/agents/gw-e2e/status"]
    assert statuses == [b"online", b"offline"]
    print(f"alert after {latency:.1f}s; {len(alerts)} alerts; {readings:.0f} readings")
