"""Live lead time, missed failures and false alarms, from CMMS events, in event time."""

from __future__ import annotations

from typing import Any

import pytest

from tests.broker import wait_until
from tests.ops.conftest import HORIZON_S, ts

pytestmark = pytest.mark.integration


def test_lead_time_miss_and_false_alarm(ops_factory: Any) -> None:
    """A failure 30 s after a warning gives a 30 s lead time; a failure without an alert is a miss;
    a warning with no failure within its horizon becomes a false alarm once the horizon has
    passed; a repair inside the horizon confirms the alert."""
    ops = ops_factory()
    ops.readings("warned", [0.1, 0.6], start=0)     # warning at cell 1
    ops.readings("silent", [0.1, 0.1], start=0)
    ops.readings("wrong", [0.1, 0.6, 0.1], start=0)  # warning at cell 1, then ok
    ops.readings("fixed", [0.1, 0.9], start=0)       # critical at cell 1
    wait_until(lambda: len(ops.alerts()) == 4, 10, what="alerts")

    ops.event("warned", 31, "failure")
    ops.event("silent", 31, "failure")
    ops.event("fixed", 20, "repair")
    ops.wait_metric("vigil_events_total", 'event="failure"', 2)
    ops.wait_metric("vigil_events_total", 'event="repair"', 1)
    assert ops.metric("vigil_alert_lead_time_seconds_count", 'model="live"') == 1
    assert ops.metric("vigil_alert_lead_time_seconds_sum", 'model="live"') == 30.0
    assert ops.metric("vigil_failures_missed_total", 'model="live"') == 1
    assert ops.metric("vigil_true_alarms_total", 'model="live"') == 2
    assert ops.metric("vigil_false_alarms_total", 'model="live"') == 0

    # Event time reaches the end of the horizon of "wrong"'s warning (cell 1 + 60 s), then passes it.
    ops.readings("clock", [0.1] * 3, start=int(HORIZON_S) - 1)
    wait_until(lambda: ops.metric("vigil_event_time_seconds") == ts(HORIZON_S + 1), 10, what="clock")
    assert ops.metric("vigil_false_alarms_total", 'model="live"') == 0
    ops.readings("clock", [0.1], start=int(HORIZON_S) + 2)
    ops.wait_metric("vigil_false_alarms_total", 'model="live"', 1)
    assert ops.metric("vigil_failures_missed_total", 'model="live"') == 1
    assert ops.metric("vigil_true_alarms_total", 'model="live"') == 2
