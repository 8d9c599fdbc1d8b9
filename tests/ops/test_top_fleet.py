"""The operator view's fleet state, fed the agents' message documents directly, and its rendering."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from rich.console import Console

from agent.top.app import duration_s
from agent.top.fleet import REPLY_WAIT_S, TREND_LEN, Fleet
from agent.top.link import Event, apply, reply_topic
from agent.top.render import Cursor, render, sparkline
from agent.top.screen import command_doc
from agent.top.terminal import keys


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def feed(f: Fleet, topic: str, doc: Any) -> None:
    f.message(f"vigil/{topic}", doc if isinstance(doc, bytes) else json.dumps(doc).encode())


def risk(f: Fleet, asset: str, r: float, level: str = "ok", k: int = 0, **extra: Any) -> None:
    feed(f, f"risk/{asset}", {"asset": asset, "ts": f"2026-03-02T07:00:{k:02d}.000Z", "risk": r,
                              "level": level, "stale": False, "signals": {}, "model_version": "v1", **extra})


def alert(f: Fleet, asset: str, aid: str, level: str, previous: str = "ok", state: str = "unacknowledged",
          **extra: Any) -> None:
    feed(f, f"alerts/{asset}", {"asset": asset, "ts": "2026-03-02T07:01:00.000Z", "level": level,
                                "previous_level": previous, "risk": 0.9, "alert_id": aid, "state": state,
                                "top_channels": [{"channel": "vib_rms", "score": 0.61},
                                                 {"channel": "temp", "score": 0.2}], **extra})


def screen(f: Fleet, cursor: Cursor | None = None, width: int = 100, height: int = 30) -> str:
    c = Console(width=width, height=height, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    c.print(render(f, cursor or Cursor(), url="mqtt://127.0.0.1:1883", operator="alice", width=width,
                   height=height, shelve_label="1h", clock="12:00:00"))
    c.file.close()
    return c.export_text()


def test_assets_are_ranked_by_risk_then_level_then_name() -> None:
    """Highest risk first, ties by level then name; a cleared retained risk drops the asset."""
    f = Fleet("vigil")
    risk(f, "pump-b", 0.4)
    risk(f, "pump-a", 0.9, "critical")
    risk(f, "pump-c", 0.4, "warning")
    risk(f, "pump-d", 0.05)
    assert [a.asset for a in f.ranked()] == ["pump-a", "pump-c", "pump-b", "pump-d"]
    risk(f, "pump-d", 0.95, "critical", k=1)  # a new risk moves it to the top
    assert f.ranked()[0].asset == "pump-d"
    feed(f, "risk/pump-b", b"")  # a cleared retained risk: the asset is gone
    assert "pump-b" not in [a.asset for a in f.ranked()]


def test_trend_keeps_the_last_values_once_per_scored_window() -> None:
    """The trend holds the last TREND_LEN risks, one per scored window (a retained copy adds none)."""
    f = Fleet("vigil")
    for k in range(TREND_LEN + 5):
        risk(f, "pump-1", k / 40, k=k)
    risk(f, "pump-1", (TREND_LEN + 4) / 40, k=TREND_LEN + 4)  # the retained copy again (resubscribe)
    trend = list(f.assets["pump-1"].trend)
    assert trend == [k / 40 for k in range(5, TREND_LEN + 5)]
    assert sparkline([0.0, 0.13, 0.5, 0.99, 1.0]) == "▁▂▅██"
    assert len(sparkline(trend)) == TREND_LEN


def test_alerts_newest_first_with_drivers_and_an_ack_updates_in_place() -> None:
    """Alerts are newest first with their drivers; the republished ack updates the same alert."""
    f = Fleet("vigil")
    alert(f, "pump-1", "a1", "warning")
    alert(f, "pump-2", "a2", "critical")
    alert(f, "pump-1", "a3", "critical", previous="warning")
    assert [a.alert_id for a in f.recent()] == ["a3", "a2", "a1"]
    a3 = f.recent()[0]
    assert (a3.level, a3.previous_level, a3.state) == ("critical", "warning", "unacknowledged")
    assert a3.drivers == [("vib_rms", 0.61), ("temp", 0.2)]
    assert f.latest_alert_id("pump-1") == "a3"
    alert(f, "pump-1", "a3", "critical", previous="warning", state="acknowledged", acknowledged_by="alice")
    assert [a.alert_id for a in f.recent()] == ["a3", "a2", "a1"]  # the same alert, not a new one
    assert (f.recent()[0].state, f.recent()[0].acknowledged_by) == ("acknowledged", "alice")
    assert f.alarm_state("pump-1") == "acknowledged" and f.alarm_state("pump-2") == "unacknowledged"
    # Known only from its alerts (no risk yet): the asset is listed at the alert's level.
    assert {a.asset: a.level for a in f.ranked()} == {"pump-1": "critical", "pump-2": "critical"}


def test_standing_alarms_shown_and_cleared_by_an_empty_retained_payload() -> None:
    """Standing alarms are shown with state and drivers; an empty retained payload clears one."""
    f = Fleet("vigil")
    doc = {"asset": "pump-7", "level": "critical", "state": "unacknowledged", "acknowledged": False,
           "alert_id": "s7", "ts": "2026-03-02T06:00:00.000Z", "risk": 0.91,
           "top_channels": [{"channel": "vib_rms", "score": 0.7}], "agent_id": "gw-01",
           "emitted_at": "2026-03-02T06:00:01.000Z"}
    feed(f, "alarms/active/pump-7", doc)
    feed(f, "alarms/active/pump-8", {**doc, "asset": "pump-8", "level": "warning", "state": "shelved",
                                     "alert_id": "s8", "shelved_until": "2026-03-02T09:00:00.000Z",
                                     "shelved_by": "bob"})
    assert [s.asset for s in f.standing_alarms()] == ["pump-7", "pump-8"]
    assert f.latest_alert_id("pump-7") == "s7"
    text = screen(f)
    assert "Standing alarms (2)" in text
    row7 = next(line for line in text.splitlines() if line.startswith("pump-7"))
    assert "critical" in row7 and "unacknowledged" in row7 and "vib_rms 0.70" in row7
    assert "shelved to 03-02 09:00:00 by bob" in text

    feed(f, "alarms/active/pump-7", b"")  # nothing stands any more for pump-7
    assert [s.asset for s in f.standing_alarms()] == ["pump-8"]
    assert "Standing alarms (1)" in screen(f)
    feed(f, "alarms/active/pump-8", {**doc, "asset": "pump-8", "state": "acknowledged", "acknowledged": True})
    assert f.alarm_state("pump-8") == "acknowledged"


def test_command_reply_is_shown_by_its_correlation_data() -> None:
    """A reply found by its correlation data shows result, reason and agent; no reply and a
    broker's refusal are said too."""
    clock = Clock()
    f = Fleet("vigil", clock=clock)
    sent: dict[int, bytes] = {}
    f.sent(b"c1", "shelve", "pump-1")
    sent[7] = b"c1"
    assert "shelve pump-1: sent" in f.status
    apply(f, Event("puback", mid=7), sent)  # taken by the broker: still waiting for the agent
    assert "sent" in f.status and sent == {}
    apply(f, Event("reply", "vigil/replies/top-x", json.dumps(
        {"command": "shelve", "asset": "pump-1", "result": "rejected",
         "reason": "longer than max_shelve_s (7200 s)", "agent_id": "gw-01"}).encode(), b"c1"), sent)
    assert f.status == "shelve pump-1: rejected (longer than max_shelve_s (7200 s)) from gw-01"
    assert "shelve pump-1: rejected" in screen(f)
    clock.t += REPLY_WAIT_S + 1
    f.tick()
    assert f.status.startswith("shelve pump-1: rejected")  # answered: no timeout notice

    f.sent(b"c2", "ack", "pump-2")
    clock.t += REPLY_WAIT_S + 1
    f.tick()
    assert f.status.startswith("ack pump-2: no reply within")

    f.sent(b"c3", "unshelve", "pump-3")
    sent[9] = b"c3"
    apply(f, Event("puback", mid=9, reason="Not authorized"), sent)
    assert f.status == "unshelve pump-3: refused by the broker (Not authorized)"


def test_reply_topic_is_under_the_login_name() -> None:
    """Replies come under the login's own name (what `pattern read vigil/replies/%u/#` grants),
    always one topic level; without a login, straight under replies/."""
    assert reply_topic("vigil", "vigil-operator", "ab12") == "vigil/replies/vigil-operator/top-ab12"
    assert reply_topic("site/vigil", "a/b+c#d\x00e", "ab12") == "site/vigil/replies/a_b_c_d_e/top-ab12"
    assert reply_topic("vigil", "x" * 300, "ab12") == f"vigil/replies/{'x' * 128}/top-ab12"
    assert reply_topic("vigil", None, "ab12") == reply_topic("vigil", "", "ab12") == "vigil/replies/top-ab12"


def test_agents_health_and_model_version_in_the_view() -> None:
    """The agents' line shows status, mode, model version, flood, drift, refit and the health lists."""
    f = Fleet("vigil")
    risk(f, "pump-1", 0.3)
    feed(f, "agents/gw-01/status", b"online")
    feed(f, "agents/gw-01/health", {"agent_id": "gw-01", "mode": "serving", "flood_active": True,
                                    "alarms_in_flood_window": 12, "flood_threshold": 10,
                                    "refit_recommended": True, "drift_psi": {"x": 0.31, "y": 0.02},
                                    "shelved": ["pump-4"], "in_maintenance": ["pump-5"], "chattering": []})
    feed(f, "agents/gw-02/status", b"offline")
    text = screen(f, width=160)
    gw1 = next(line for line in text.splitlines() if line.startswith("gw-01"))
    for part in ("online", "mode serving", "model v1", "flood YES 12/10", "drift 0.31", "REFIT RECOMMENDED",
                 "shelved: pump-4", "maint: pump-5"):
        assert part in gw1, (part, gw1)
    assert next(line for line in text.splitlines() if line.startswith("gw-02")).startswith("gw-02 offline")


def test_bad_documents_are_counted_not_fatal() -> None:
    """Unreadable documents are counted and shown, and change nothing."""
    f = Fleet("vigil")
    feed(f, "risk/pump-1", b"not json")
    feed(f, "risk/pump-1", {"asset": "pump-1", "risk": "high"})
    feed(f, "alerts/pump-1", b"[1, 2]")
    feed(f, "alarms/active/pump-1", b"{")
    f.reply(b"zz", b"\xff")
    f.message("other/risk/pump-1", b"{}")  # not under the prefix: not ours
    assert f.unreadable == 5 and f.ranked() == [] and f.standing_alarms() == []
    assert "5 unreadable messages" in screen(f)


def test_selection_stays_on_its_asset_and_commands_name_it() -> None:
    """The selection follows its asset when the order changes; the keys' commands carry the right payload."""
    f = Fleet("vigil")
    for name, r in (("a", 0.9), ("b", 0.5), ("c", 0.1)):
        risk(f, name, r)
    cursor = Cursor()
    assert cursor.selected(f.ranked()) == "a"  # nothing chosen: the top row
    cursor.move(f.ranked(), 1)
    assert cursor.selected(f.ranked()) == "b"
    risk(f, "c", 0.99, k=1)  # c overtakes: the selection stays on b
    assert cursor.selected(f.ranked()) == "b"
    assert next(line for line in screen(f, cursor).splitlines() if line.startswith("▶")).split()[1] == "b"
    cursor.move(f.ranked(), -10)  # home: the top row, now c
    assert cursor.selected(f.ranked()) == "c"
    alert(f, "b", "b1", "warning")
    assert command_doc(f, "ack", "b", "alice", 3600) == {"alert_id": "b1"}
    assert command_doc(f, "ack", "zz", "alice", 3600) == {}
    assert command_doc(f, "shelve", "b", "alice", 1800)["for_s"] == 1800
    assert command_doc(f, "unshelve", "b", "alice", 1800) == {}


def test_many_assets_keep_the_selected_one_on_screen() -> None:
    """With more assets than lines, the view fits the terminal and scrolls to the selected asset."""
    f = Fleet("vigil")
    for i in range(50):
        risk(f, f"pump-{i:02d}", i / 100)
    cursor = Cursor()
    cursor.move(f.ranked(), 40)
    text = screen(f, cursor, height=30)
    assert len(text.splitlines()) <= 30
    assert next(line for line in text.splitlines() if line.startswith("▶")).split()[1] == "pump-09"


def test_keys_and_durations() -> None:
    """Keys (arrows in both cursor modes, letters) and --shelve-for durations parse."""
    assert keys("\x1b[Bj\x1bOAkasuqx") == ["down", "down", "up", "up", "ack", "shelve", "unshelve", "quit"]
    assert [duration_s(t) for t in ("3600", "90s", "30m", "1h", "2d")] == [3600, 90, 1800, 3600, 172800]
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s("soon")
