"""Alarm floods and chattering assets end to end (ISA-18.2: no floods, no chatter)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.broker import wait_until

pytestmark = pytest.mark.integration


def test_flood_collapses_into_one_summary_while_criticals_pass(ops_factory: Any) -> None:
    """Past the flood threshold, warnings stop and one flood summary goes out; criticals still
    pass; the health topic says so; once the rate falls the flood ends with a second summary."""
    ops = ops_factory(extra="[alarms]\nflood_threshold = 3\nflood_window_s = 600\n")
    for i in range(6):
        ops.readings(f"pump-{i}", [0.1, 0.6], start=0)  # a warning each
    ops.readings("pump-crit", [0.1, 0.9], start=0)
    ops.wait_metric("vigil_alerts_suppressed_total", 'reason="flood"', 3)
    wait_until(lambda: any(a["level"] == "critical" for a in ops.alerts()), 10, what="critical")
    flood_topic = f"{ops.prefix}/alarms/flood"
    wait_until(lambda: len(ops.capture.json(flood_topic)) == 1, 10, what="flood summary")
    summary = ops.capture.json(flood_topic)[0]
    assert summary["active"] is True and summary["alarms_in_window"] == 4 and summary["threshold"] == 3
    levels = sorted(a["level"] for a in ops.alerts())
    assert levels == ["critical", "warning", "warning", "warning"]
    assert ops.metric("vigil_alarm_floods_total") == 1
    ops.wait_metric("vigil_alarm_flood_active", "", 1)
    wait_until(lambda: (ops.health() or {}).get("flood_active") is True, 10, what="health: flood")

    # Event time moves past the window: the flood ends, and says what it held back.
    ops.readings("pump-0", [0.6, 0.6], start=700)
    wait_until(lambda: len(ops.capture.json(flood_topic)) == 2, 10, what="flood end summary")
    end = ops.capture.json(flood_topic)[1]
    assert end["active"] is False and end["suppressed"] == 3
    assert sorted(end["assets"]) == ["pump-3", "pump-4", "pump-5"]
    wait_until(lambda: (ops.health() or {}).get("flood_active") is False, 10, what="health: calm")
    assert ops.metric("vigil_alarm_flood_active") == 0


def test_chattering_asset_is_flagged_and_a_steady_one_is_not(ops_factory: Any) -> None:
    """An asset whose level changes more than chatter_toggles times within the window is reported
    chattering (health topic, risk payload, gauge); a steady asset is not."""
    ops = ops_factory(extra="[alarms]\nchatter_toggles = 3\nchatter_window_s = 600\n")
    ops.readings("steady", [0.1, 0.6, 0.6, 0.6, 0.6, 0.6], start=0)
    ops.readings("flappy", [0.1, 0.6, 0.1, 0.6, 0.1, 0.6], start=0)
    ops.risk_at("steady", 5)
    assert ops.risk_at("flappy", 5).get("chattering") is None  # flagged from the next window on
    ops.readings("flappy", [0.6], start=6)
    ops.readings("steady", [0.6], start=6)
    assert ops.risk_at("flappy", 6)["chattering"] is True
    assert "chattering" not in ops.risk_at("steady", 6)
    ops.wait_metric("vigil_chattering_assets", "", 1)
    wait_until(lambda: (ops.health() or {}).get("chattering") == ["flappy"], 10, what="health: chatter")
    assert ops.metric("vigil_chattering_assets") == 1
