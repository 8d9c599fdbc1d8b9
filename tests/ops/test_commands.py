"""Operator commands end to end: acknowledge, shelve with expiry, unshelve; idempotent and counted."""

from __future__ import annotations

from typing import Any

import pytest

from agent.alerts import rfc3339_ms
from tests.broker import wait_until
from tests.ops.conftest import ts
from tests.procs import logged

pytestmark = pytest.mark.integration


def test_ack_republishes_the_alert_acknowledged_once(ops_factory: Any) -> None:
    """An ack republishes the alert with its alert_id as acknowledged, naming who sent it; a second
    ack changes nothing; an ack of another alert id is refused."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.6], start=0)
    wait_until(lambda: len(ops.alerts("pump-1")) == 1, 10, what="warning")
    alert = ops.alerts("pump-1")[0]
    assert (alert["level"], alert["state"]) == ("warning", "unacknowledged")

    ops.command("pump-1", "ack", {"alert_id": alert["alert_id"]}, sender="alice")
    wait_until(lambda: len(ops.alerts("pump-1")) == 2, 10, what="acknowledged alert")
    acked = ops.alerts("pump-1")[1]
    assert acked["alert_id"] == alert["alert_id"]
    assert (acked["state"], acked["acknowledged_by"], acked["level"]) == ("acknowledged", "alice", "warning")

    ops.command("pump-1", "ack", {}, sender="bob")
    ops.command("pump-1", "ack", {"alert_id": "not-this-one"}, sender="bob")
    ops.wait_metric("vigil_commands_total", 'command="ack",result="rejected"', 1)
    assert ops.metric("vigil_commands_total", 'command="ack",result="noop"') == 1
    assert ops.metric("vigil_commands_total", 'command="ack",result="ok"') == 1
    assert len(ops.alerts("pump-1")) == 2
    senders = [(c["sender"], c["result"]) for c in logged(ops.agent.log(), "command")]
    assert senders == [("alice", "ok"), ("bob", "noop"), ("bob", "rejected")]


def test_shelve_holds_alerts_until_it_expires(ops_factory: Any) -> None:
    """A shelved asset raises no alert; the expiry (event time) is announced with the level the asset
    is at, and alerts flow again; unshelve ends a shelf early and is idempotent."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.1], start=0)
    ops.risk_at("pump-1", 1)
    ops.command("pump-1", "shelve", {"for_s": 5, "reason": "sensor swap"}, sender="carol")
    shelf_topic = f"{ops.prefix}/alarms/shelved/pump-1"
    wait_until(lambda: len(ops.capture.json(shelf_topic)) == 1, 10, what="shelved notice")
    shelved = ops.capture.json(shelf_topic)[0]
    assert (shelved["event"], shelved["by"], shelved["until"]) == ("shelved", "carol", rfc3339_ms(ts(6)))
    ops.command("pump-1", "shelve", {"until": ts(6)}, sender="carol")  # the same shelf again
    ops.wait_metric("vigil_commands_total", 'command="shelve",result="noop"', 1)

    ops.readings("pump-1", [0.9, 0.9], start=2)
    risk = ops.risk_at("pump-1", 3)
    assert risk["level"] == "critical" and risk["shelved_until"] == rfc3339_ms(ts(6))
    ops.wait_metric("vigil_alerts_suppressed_total", 'reason="shelved"', 1)
    assert ops.alerts("pump-1") == []

    ops.readings("pump-1", [0.9, 0.9, 0.9], start=4)  # event time passes the shelf's end
    wait_until(lambda: len(ops.capture.json(shelf_topic)) == 2, 10, what="expiry notice")
    expired = ops.capture.json(shelf_topic)[1]
    assert (expired["event"], expired["level"]) == ("expired", "critical")
    # ISA-18.2: the critical that stood behind the shelf is returned to the operator.
    wait_until(lambda: len(ops.alerts("pump-1")) == 1, 10, what="the alarm returned at expiry")
    back = ops.alerts("pump-1")[0]
    assert (back["level"], back["previous_level"], back["state"], back["reason"]) == (
        "critical", "ok", "unacknowledged", "shelf_expired")
    ops.readings("pump-1", [0.1], start=7)
    wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical", "ok"], 10,
               what="alert after expiry")

    ops.command("pump-1", "shelve", {"for_s": 3600}, sender="carol")
    ops.command("pump-1", "unshelve", sender="dave")
    ops.command("pump-1", "unshelve", sender="dave")
    ops.wait_metric("vigil_commands_total", 'command="unshelve",result="noop"', 1)
    wait_until(lambda: [m["event"] for m in ops.capture.json(shelf_topic)]
               == ["shelved", "expired", "shelved", "unshelved"], 10, what="shelf notices")
    ops.readings("pump-1", [0.9], start=8)
    wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical", "ok", "critical"], 10,
               what="alert after unshelve")
    assert ops.metric("vigil_commands_total", 'command="unshelve",result="ok"') == 1


def test_shelf_and_maintenance_survive_a_restart(ops_factory: Any) -> None:
    """A shelf, a maintenance flag, the latest alert (for its ack) and an alert awaiting its
    horizon are checkpointed: after SIGTERM and a restart they all still hold."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.1], start=0)
    ops.readings("pump-2", [0.1, 0.1], start=0)
    ops.readings("pump-3", [0.1, 0.6], start=0)
    ops.risk_at("pump-2", 1)
    wait_until(lambda: len(ops.alerts("pump-3")) == 1, 10, what="pump-3 warning")
    ops.command("pump-1", "shelve", {"for_s": 3600})
    ops.event("pump-2", 2, "maintenance_start")
    wait_until(lambda: (ops.health() or {}).get("shelved") == ["pump-1"]
               and (ops.health() or {}).get("in_maintenance") == ["pump-2"], 10, what="health")
    assert ops.agent.terminate() == 0
    ops.agent.start()
    ops.agent.wait_ready(60)
    ops.readings("pump-1", [0.9], start=2)
    ops.readings("pump-2", [0.9], start=2)
    assert ops.risk_at("pump-1", 2)["shelved_until"] == rfc3339_ms(ts(1) + 3600)
    assert ops.risk_at("pump-2", 2)["maintenance"] is True
    ops.wait_metric("vigil_alerts_suppressed_total", 'reason="shelved"', 1)
    ops.wait_metric("vigil_alerts_suppressed_total", 'reason="maintenance"', 1)
    assert [a["asset"] for a in ops.alerts()] == ["pump-3"]

    ops.command("pump-3", "ack", {"alert_id": ops.alerts("pump-3")[0]["alert_id"]})
    wait_until(lambda: [a["state"] for a in ops.alerts("pump-3")] == ["unacknowledged", "acknowledged"],
               10, what="ack after restart")
    ops.readings("pump-1", [0.9, 0.9], start=61)  # pump-3's horizon (cell 1 + 60 s) passes
    ops.wait_metric("vigil_false_alarms_total", 'model="live"', 1)
