"""CMMS events end to end: maintenance suppresses alerts, a repair restarts the asset, labels are kept."""

from __future__ import annotations

from typing import Any

import pytest

from agent.alerts import rfc3339_ms
from tests.broker import wait_until
from tests.ops.conftest import ts
from tests.procs import logged
from training.data import load_events

pytestmark = pytest.mark.integration


def test_maintenance_suppresses_and_repair_restarts(ops_factory: Any) -> None:
    """While in maintenance a critical risk raises no alert and the risk topic says so; the end of
    maintenance and a repair each restart windows and level; every event lands in events.csv."""
    ops = ops_factory()
    ops.readings("pump-1", [0.1, 0.1, 0.1], start=0)
    assert ops.risk_at("pump-1", 2)["level"] == "ok"

    ops.event("pump-1", 3, "maintenance_start", work_order="WO-17")
    ops.wait_metric("vigil_events_total", 'event="maintenance_start"', 1)
    ops.readings("pump-1", [0.9, 0.9, 0.9], start=3)
    risk = ops.risk_at("pump-1", 5)
    assert risk["maintenance"] is True and risk["level"] == "critical"
    ops.wait_metric("vigil_alerts_suppressed_total", 'reason="maintenance"', 1)
    assert ops.alerts("pump-1") == []
    wait_until(lambda: (ops.health() or {}).get("in_maintenance") == ["pump-1"], 10, what="health")

    ops.event("pump-1", 6, "maintenance_end", work_order="WO-17")
    ops.wait_metric("vigil_events_total", 'event="maintenance_end"', 1)
    # The restart is announced on the retained risk topic: level ok, no longer in maintenance.
    wait_until(lambda: any(r["ts"] == rfc3339_ms(ts(6)) and r["level"] == "ok"
                           for r in ops.risks("pump-1")), 10, what="reset notice")
    # A reading from before the end of maintenance describes the old machine: refused as late.
    late_before = ops.metric("vigil_readings_rejected_total", 'reason="late"')
    ops.reading("pump-1", 5.5, 0.9)
    ops.wait_metric("vigil_readings_rejected_total", 'reason="late"', late_before + 1)
    k = ops.readings("pump-1", [0.9, 0.9], start=7)
    after = ops.risk_at("pump-1", 8)
    assert after["level"] == "critical" and "maintenance" not in after
    wait_until(lambda: [a["level"] for a in ops.alerts("pump-1")] == ["critical"], 10, what="critical alert")
    assert ops.alerts("pump-1")[0]["state"] == "unacknowledged"

    # A repair without maintenance: consumers hear the return to ok, the window starts afresh.
    ops.event("pump-1", k, "repair", work_order="WO-18")
    wait_until(lambda: len(ops.alerts("pump-1")) == 2, 10, what="return to ok on repair")
    back = ops.alerts("pump-1")[1]
    assert (back["level"], back["previous_level"], back["reason"]) == ("ok", "critical", "repair")
    ops.readings("pump-1", [0.1, 0.1], start=k + 1)
    ops.risk_at("pump-1", k + 2)
    fresh = [r for r in ops.risks("pump-1") if r["ts"] > rfc3339_ms(ts(k))]
    # The first window after the repair needs two new cells: nothing is scored at k + 1.
    assert [r["ts"] for r in fresh] == [rfc3339_ms(ts(k + 2))]

    ops.event("pump-1", k + 3, "failure")
    ops.event("pump-1", k + 3, "failure")  # a redelivery is counted and written once
    ops.wait_metric("vigil_events_total", 'event="failure"', 1)
    events = load_events(ops.state / "events.csv")
    assert [(e.ts, e.asset, e.event) for e in events] == [
        (ts(3), "pump-1", "maintenance"), (ts(6), "pump-1", "maintenance"),
        (ts(k), "pump-1", "maintenance"), (ts(k + 3), "pump-1", "failure")]
    text = (ops.state / "events.csv").read_text()
    assert "maintenance_start" in text and "WO-18" in text and "repair" in text
    assert ops.metric("vigil_events_total", 'event="failure"') == 1
    assert len(logged(ops.agent.log(), "plant_event")) == 4
