"""The operator's loop as ISA-18.2 writes it, end to end through a real broker: shelves within
their limit, repeated commands that change nothing, alarms returned when a shelf ends, the
retained alarm summary, replies on the MQTT 5 response topic, events held to the readings'
time rules, and each failure counted once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.alerts import rfc3339_ms
from tests.broker import wait_until
from tests.ops.conftest import ts
from tests.procs import logged

pytestmark = pytest.mark.integration


def test_shelf_beyond_the_limit_is_refused_and_repeats_change_nothing(ops_factory: Any) -> None:
    """A shelf longer than [alarms] max_shelve_s is refused with its reason (replied on the
    response topic), not cut down; the same shelf command sent again later is a no-op, its
    `until` unchanged; a malformed command is answered too."""
    ops = ops_factory(extra="[alarms]\nmax_shelve_s = 7200\n")
    ops.readings("pump-1", [0.1, 0.1], start=0)
    ops.risk_at("pump-1", 1)
    cmd = f"{ops.prefix}/cmd/pump-1/shelve"

    reply = ops.request(cmd, {"for_s": 100_000}, b"c1", sender="carol")
    assert (reply["command"], reply["asset"], reply["result"]) == ("shelve", "pump-1", "rejected")
    assert "max_shelve_s" in reply["reason"] and "7200" in reply["reason"]
    assert reply["agent_id"] == f"gw-{ops.prefix}"
    assert ops.capture.json(f"{ops.prefix}/alarms/shelved/") == []

    assert ops.request(cmd, {"for_s": 3600, "reason": "valve swap"}, b"c2", sender="carol")["result"] == "ok"
    ops.readings("pump-1", [0.1, 0.1], start=2)  # event time moves on
    ops.risk_at("pump-1", 3)
    again = ops.request(cmd, {"for_s": 3600, "reason": "valve swap"}, b"c3", sender="carol")
    assert (again["result"], again["reason"]) == ("noop", "already shelved by the same command")
    notices = ops.capture.json(f"{ops.prefix}/alarms/shelved/pump-1")
    assert [(n["event"], n["until"]) for n in notices] == [("shelved", rfc3339_ms(ts(1) + 3600))]

    bad = ops.request(cmd, {"for_s": "an hour"}, b"c4")
    assert (bad["result"], bad["reason"]) == ("rejected", "for_s must be a positive number of seconds")
    unshelve = ops.request(f"{ops.prefix}/cmd/pump-1/unshelve", {}, b"c5")
    assert unshelve["result"] == "ok"
    assert ops.request(f"{ops.prefix}/cmd/pump-1/unshelve", {}, b"c6")["result"] == "noop"


def test_unshelve_returns_a_standing_alarm(ops_factory: Any) -> None:
    """A critical raised behind a shelf is announced again, unacknowledged, when the operator
    unshelves the asset; an alarm that came and went behind the shelf is not."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.1], start=0)
    ops.readings("pump-2", [0.1, 0.1], start=0)
    ops.risk_at("pump-2", 1)
    for asset in ("pump-1", "pump-2"):
        ops.command(asset, "shelve", {"for_s": 3600})
    ops.wait_metric("vigil_commands_total", 'command="shelve",result="ok"', 2)
    ops.readings("pump-1", [0.9, 0.9], start=2)
    ops.readings("pump-2", [0.9, 0.1, 0.1], start=2)
    ops.risk_at("pump-1", 3)
    ops.risk_at("pump-2", 4)
    assert ops.alerts() == []
    for asset in ("pump-1", "pump-2"):
        ops.command(asset, "unshelve", sender="dave")
    wait_until(lambda: len(ops.capture.json(f"{ops.prefix}/alarms/shelved/")) == 4, 10,
               what="shelf notices")
    wait_until(lambda: len(ops.alerts("pump-1")) == 1, 10, what="the critical returned")
    back = ops.alerts("pump-1")[0]
    assert (back["level"], back["previous_level"], back["state"], back["reason"]) == (
        "critical", "ok", "unacknowledged", "unshelved")
    assert back["risk"] >= 0.8
    assert ops.alerts("pump-2") == []
    raised = logged(ops.agent.log(), "alert_raised")
    assert [(r["asset"], r["alert_level"], r["level"]) for r in raised] == [("pump-1", "critical", "info")]


def test_the_alarm_summary_lists_what_stands(ops_factory: Any) -> None:
    """`{prefix}/alarms/active/{asset}` is retained: unacknowledged, then acknowledged, shelved
    and suppressed by maintenance; cleared (empty retained message) once the asset is ok and
    acknowledged; an operator connecting later finds what stands."""
    from tests.procs import Capture

    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.9], start=0)
    wait_until(lambda: (ops.standing("pump-1") or {}).get("level") == "critical", 10, what="standing")
    s = ops.standing("pump-1")
    assert s is not None and (s["state"], s["acknowledged"]) == ("unacknowledged", False)
    assert s["alert_id"] == ops.alerts("pump-1")[0]["alert_id"] and s["risk"] >= 0.8
    # The JSON log line of the alert keeps the alert's level beside the line's own.
    raised = logged(ops.agent.log(), "alert_raised")[0]
    assert (raised["asset"], raised["alert_level"], raised["previous"], raised["level"]) == (
        "pump-1", "critical", "ok", "info")

    ops.readings("pump-1", [0.1], start=2)  # back to ok, never acknowledged: it still stands
    wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical", "ok"], 10, what="ok")
    s = ops.standing("pump-1")
    assert s is not None and (s["level"], s["state"]) == ("ok", "unacknowledged")
    assert ops.request(f"{ops.prefix}/cmd/pump-1/ack", {}, b"a1")["result"] == "ok"
    wait_until(lambda: ops.standing("pump-1") is None, 10, what="cleared after the ack")

    ops.readings("pump-2", [0.1, 0.6], start=0)
    wait_until(lambda: (ops.standing("pump-2") or {}).get("level") == "warning", 10, what="pump-2")
    ops.command("pump-2", "ack")
    wait_until(lambda: (ops.standing("pump-2") or {}).get("state") == "acknowledged", 10, what="acked")
    ops.command("pump-3", "shelve", {"for_s": 600}, sender="erin")
    wait_until(lambda: (ops.standing("pump-3") or {}).get("state") == "shelved", 10, what="shelved")
    assert ops.standing("pump-3")["shelved_by"] == "erin"  # type: ignore[index]
    ops.event("pump-4", 1, "maintenance_start")
    wait_until(lambda: (ops.standing("pump-4") or {}).get("state") == "suppressed", 10, what="maintenance")

    late = Capture(ops.broker.port, [f"{ops.prefix}/alarms/active/+"]).start()
    try:
        def retained() -> dict[str, str]:
            with late._lock:
                return {t.rsplit("/", 1)[1]: json.loads(p)["state"] for t, p, r in late.messages if r and p}
        wait_until(lambda: retained() == {"pump-2": "acknowledged", "pump-3": "shelved",
                                          "pump-4": "suppressed"}, 10, what="retained summary")
    finally:
        late.stop()


def test_events_obey_the_time_rules_and_a_failure_counts_once(ops_factory: Any) -> None:
    """A maintenance event stamped 1970 is refused (reply, no events.csv row, no maintenance);
    a failure after two raises within the horizon is one true alarm with one lead time."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.6, 0.1, 0.6], start=0)
    wait_until(lambda: len(ops.alerts("pump-1")) == 3, 10, what="two raises")
    reply = ops.request(f"{ops.prefix}/events/pump-1", {"ts": 0, "event": "maintenance_start"}, b"e1")
    assert (reply["result"], reply["asset"]) == ("rejected", "pump-1")
    assert "before 2000-01-01" in reply["reason"]
    ok = ops.request(f"{ops.prefix}/events/pump-1", {"ts": ts(10), "event": "failure"}, b"e2")
    assert (ok["result"], ok["event"]) == ("ok", "failure")
    ops.wait_metric("vigil_events_total", 'event="failure"', 1)
    assert ops.metric("vigil_true_alarms_total", 'model="live"') == 1
    assert ops.metric("vigil_alert_lead_time_seconds_count", 'model="live"') == 1
    assert ops.metric("vigil_events_total", 'event="maintenance_start"') == 0
    rows = (ops.state / "events.csv").read_text().splitlines()
    assert len(rows) == 2 and "1970" not in rows[1]
    assert ops.risk_at("pump-1", 3).get("maintenance") is None
