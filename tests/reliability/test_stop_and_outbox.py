"""Graceful stop under load, a full outbox, and an outbox that cannot be written."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, http_get, logged, metric, running_agent, write_agent_config
from tests.reliability.test_outages import decided, live_sim

pytestmark = pytest.mark.integration


def test_sigterm_under_load_exits_zero_fast_and_loses_nothing(trained: Path, broker: Broker,
                                                              tmp_path: Path) -> None:
    """SIGTERM while pumps fail and readings stream: exit 0 within 5 s, the outbox is empty
    at exit, and every alert the agent decided reached the consumer."""
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-stop")
    consumer = Capture(broker.port, ["vigil/alerts/#"], client_id="cmms-stop", persistent=True).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = live_sim(broker, 40, seed=5)
        try:
            wait_until(lambda: any(a["level"] != "ok" for a in decided(agent.log()).values()), 60,
                       what="a warning decided")
            t0 = time.monotonic()
            assert agent.terminate(timeout=10) == 0
            took = time.monotonic() - t0
        finally:
            sim.kill()
            sim.wait()
    assert took < 5.0, took
    stopped = logged(agent.log(), "agent_stopped")
    assert stopped and stopped[-1]["outbox_pending"] == 0
    wait_until(lambda: set(decided(agent.log())) <= set(consumer.ids()), 10, what="all delivered")
    consumer.stop()
    print(f"stopped in {took:.2f} s")


def deny_alerts(tmp_path: Path) -> Path:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite plant/#\ntopic readwrite vigil/agents/#\n"
                   "topic readwrite vigil/risk/#\ntopic read vigil/alerts/#\n")
    return acl


def test_full_outbox_is_loud_and_risk_keeps_flowing(trained: Path, own_broker: Broker,
                                                    tmp_path: Path) -> None:
    """The broker refuses alerts; with outbox_max = 1 the outbox fills: /readyz says so, the
    depth metric shows it, the log says so, and risk is still published."""
    own_broker.stop()
    own_broker.acl_file = deny_alerts(tmp_path)
    own_broker.start()
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=own_broker.url, model=trained,
                                state=tmp_path / "state", http_port=port, client_id="gw-full")
    config.write_text(config.read_text().replace("[state]\n", "[state]\noutbox_max = 1\n"))
    risk = Capture(own_broker.port, ["vigil/risk/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        sim = live_sim(own_broker, 30)
        try:
            wait_until(lambda: http_get(agent.base + "/readyz")[0] == 503, 60, what="not ready")
            _code, body = http_get(agent.base + "/readyz")
            assert json.loads(body)["checks"]["outbox_not_full"] is False
            # /readyz sees the outbox full as the row lands; its gauge and log line follow it.
            wait_until(lambda: (metric(agent.scrape(), "vigil_outbox_depth") or 0) >= 1
                       and "outbox_full" in agent.log(), 10, what="outbox depth and outbox_full logged")
            seen = len(risk.messages)
            wait_until(lambda: len(risk.messages) > seen + 50, 10, what="risk still flowing")
        finally:
            sim.kill()
            sim.wait()
        assert agent.terminate() == 0
    risk.stop()


def test_unwritable_outbox_is_loud_and_alerts_still_go_out(trained: Path, broker: Broker,
                                                           tmp_path: Path) -> None:
    """While the outbox cannot be written (another process holds its database locked), each
    alert is logged and counted as an outbox error and still published; risk keeps flowing."""
    port = free_port()
    state = tmp_path / "state"
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=trained,
                                state=state, http_port=port, client_id="gw-disk")
    consumer = Capture(broker.port, ["vigil/alerts/#"], client_id="cmms-disk").start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        blocker = sqlite3.connect(str(state / "outbox.sqlite"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        sim = live_sim(broker, 30)
        try:
            wait_until(lambda: (metric(agent.scrape(), "vigil_outbox_errors_total") or 0) >= 1, 60,
                       what="an outbox write failure")
            assert "outbox_write_failed" in agent.log()
            wait_until(lambda: set(decided(agent.log())) <= set(consumer.ids()), 10,
                       what="alerts published despite the disk")
            assert agent.proc is not None and agent.proc.poll() is None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
            sim.kill()
            sim.wait()
        assert agent.terminate() == 0
    consumer.stop()
