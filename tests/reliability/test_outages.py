"""Fault injection: broker outages and agent crashes lose no alert, and ids stay stable."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import BIN, Capture, logged, metric, running_agent, write_agent_config

pytestmark = pytest.mark.integration

FAILING = ("pump-001", "pump-003", "pump-005")


def live_sim(broker: Broker, duration: int, seed: int = 11) -> subprocess.Popen[bytes]:
    fails = [arg for a in FAILING for arg in ("--fail", a)]
    return subprocess.Popen(
        [str(BIN / "vigil-sim"), "live", "--broker", broker.url, "--assets", "6", "--speed", "1200",
         "--duration", str(duration), "--seed", str(seed), "--fail-within", "14400", *fails],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def decided(log: str) -> dict[str, dict]:
    """The transitions the agent decided, by alert_id, from its own log."""
    return {e["alert_id"]: e for e in logged(log, "alert_raised")}


def test_five_broker_restarts_lose_no_alert(trained: Path, own_broker: Broker, tmp_path: Path) -> None:
    """While pumps fail, the broker is stopped and restarted 5 times: every transition the agent
    decided reaches a persistent-session consumer (duplicates only as repeated ids), and the
    agent is connected again within 2 s of each restart."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=own_broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-outage")
    consumer = Capture(own_broker.port, ["vigil/alerts/#"], client_id="cmms", persistent=True).start()
    reconnects: list[float] = []
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = live_sim(own_broker, 45)
        try:
            for _ in range(5):
                time.sleep(4.0)  # let the plant run between outages
                own_broker.stop()  # SIGTERM: mosquitto saves its sessions, as a service restart does
                time.sleep(0.5)
                own_broker.start()
                t0 = time.monotonic()
                wait_until(lambda: metric(agent.scrape(), "vigil_mqtt_connected") == 1.0, 10,
                           interval=0.05, what="agent reconnected")
                reconnects.append(time.monotonic() - t0)
            assert sim.wait(90) == 0
            wait_until(lambda: set(decided(agent.log())) <= set(consumer.ids()), 30,
                       what="every decided alert delivered")
            wait_until(lambda: metric(agent.scrape(), "vigil_outbox_depth") == 0, 10, what="outbox empty")
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
        assert agent.terminate() == 0
    consumer.stop()
    mine = decided(agent.log())
    got = consumer.ids()
    assert len([a for a in mine.values() if a["level"] != "ok"]) >= 3, "pumps must fail in this run"
    assert set(got) == set(mine), "nothing missing, nothing foreign"
    assert max(reconnects) < 2.0, reconnects
    print(f"decided {len(mine)}, received {len(got)} ({len(got) - len(set(got))} duplicates), "
          f"reconnect s: {[round(r, 2) for r in reconnects]}")


def test_sigkill_then_restart_delivers_pending_with_same_ids(trained: Path, own_broker: Broker,
                                                              tmp_path: Path) -> None:
    """An agent killed with SIGKILL while the broker refuses its alerts keeps them in the
    outbox; restarted once the broker takes them, it delivers each transition under the id
    it was decided with, and does not raise it again from its checkpoint."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite plant/#\ntopic readwrite vigil/agents/#\n"
                   "topic readwrite vigil/risk/#\ntopic read vigil/alerts/#\n")
    own_broker.stop()
    own_broker.acl_file = acl
    own_broker.start()
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=own_broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-crash")
    config.write_text(config.read_text().replace("[state]\n", "[state]\ncheckpoint_interval_s = 0.5\n"))
    consumer = Capture(own_broker.port, ["vigil/alerts/#"], client_id="cmms2", persistent=True).start()
    log = tmp_path / "agent.log"
    with running_agent(config, port, log) as agent:
        agent.wait_ready()
        sim = live_sim(own_broker, 30)
        try:
            wait_until(lambda: any(a["level"] != "ok" for a in decided(agent.log()).values()), 60,
                       what="a warning decided while the broker refuses alerts")
            wait_until(lambda: (metric(agent.scrape(), "vigil_outbox_depth") or 0) >= 1, 10,
                       what="the refused alert pending in the outbox")
            wait_until(lambda: "alerts_refused_by_broker" in agent.log(), 10, what="refusal logged")
            assert consumer.ids() == []
            raised_at = time.time()
            wait_until(lambda: (metric(agent.scrape(), "vigil_checkpoint_timestamp_seconds") or 0)
                       > raised_at, 10, what="a checkpoint after the decision")
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(10)
            first_run = decided(agent.log())
            acl.write_text(acl.read_text().replace("topic read vigil/alerts/#",
                                                   "topic readwrite vigil/alerts/#"))
            own_broker.signal(signal.SIGHUP)  # mosquitto reloads its ACL
            agent.start()
            agent.wait_ready()
            assert sim.wait(90) == 0
            wait_until(lambda: set(first_run) <= set(consumer.ids()), 30, what="pending alerts delivered")
            wait_until(lambda: set(decided(agent.log())) <= set(consumer.ids()), 30, what="all delivered")
        finally:
            if sim.poll() is None:
                sim.kill()
                sim.wait()
        assert agent.terminate() == 0
    consumer.stop()
    alerts = consumer.json("vigil/alerts/")
    per_transition: dict[tuple, set[str]] = {}
    for a in alerts:
        key = (a["asset"], a["ts"], a["previous_level"], a["level"])
        per_transition.setdefault(key, set()).add(a["alert_id"])
    assert all(len(ids) == 1 for ids in per_transition.values()), per_transition
    assert "outbox_resumed" in agent.log() and "state_restored" in agent.log()
    # Never raised twice: per asset, no two transitions in a row into the same level.
    for asset in {a["asset"] for a in alerts}:
        unique = {a["alert_id"]: a for a in alerts if a["asset"] == asset}.values()
        levels = [a["level"] for a in sorted(unique, key=lambda a: a["ts"])]
        assert all(x != y for x, y in itertools.pairwise(levels)), (asset, levels)
