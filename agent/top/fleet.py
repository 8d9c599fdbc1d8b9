"""What the operator's view knows of the fleet, built from the agents' MQTT messages alone.

`Fleet` takes each message as it arrives (topic and payload, no MQTT client in sight) and
keeps: per asset the latest risk with a short trend, the standing alarm and the shelf; the
recent alerts with their state; the agents' status and health; and the commands this view
sent with the agents' replies. It is single-threaded: the view feeds it from one loop.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RANK = {"ok": 0, "warning": 1, "critical": 2}
TREND_LEN = 20          # risk values kept per asset for the sparkline
MAX_ALERTS = 200        # recent alerts kept (the view shows the newest that fit)
MAX_ASSETS = 20_000     # assets kept; beyond it the least risky known ones are forgotten
MAX_AGENTS = 1_000      # agents kept; beyond it the first seen are forgotten
REPLY_WAIT_S = 5.0      # a command with no reply after this long is reported as unanswered


def _doc(payload: bytes) -> dict[str, Any] | None:
    """A JSON object, or None for anything else."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _level(v: Any) -> str:
    return v if isinstance(v, str) and v in RANK else "?"


def drivers(top_channels: Any) -> list[tuple[str, float | None]]:
    """An alert's `top_channels` as (channel, score) pairs; malformed entries are skipped."""
    out: list[tuple[str, float | None]] = []
    if isinstance(top_channels, list):
        for c in top_channels:
            if isinstance(c, dict) and isinstance(c.get("channel"), str):
                out.append((c["channel"], _float(c.get("score"))))
    return out


@dataclass
class AssetState:
    """One asset as the view sees it."""

    asset: str
    risk: float | None = None
    level: str = "?"
    ts: str | None = None             # event time of the latest risk message
    stale: bool = False
    maintenance: bool = False
    chattering: bool = False
    shelved_until: str | None = None
    model_version: str | None = None
    trend: deque[float] = field(default_factory=lambda: deque(maxlen=TREND_LEN))
    has_risk: bool = False            # a risk message was seen (else the row comes from alarms)

    @property
    def sort_key(self) -> tuple[float, int, str]:
        return (-(self.risk if self.risk is not None else -1.0), -RANK.get(self.level, -1), self.asset)


@dataclass
class Alert:
    """One alert (a level transition); a republished ack updates it in place."""

    alert_id: str
    asset: str
    ts: str | None
    level: str
    previous_level: str
    risk: float | None
    drivers: list[tuple[str, float | None]]
    state: str                       # unacknowledged | acknowledged
    acknowledged_by: str | None = None
    agent_id: str | None = None
    reason: str | None = None        # e.g. "repair" on a return to ok after a repair


@dataclass
class Standing:
    """The standing alarm of an asset (`{prefix}/alarms/active/{asset}`, retained)."""

    asset: str
    level: str
    state: str                       # unacknowledged | acknowledged | shelved | suppressed
    acknowledged: bool
    alert_id: str | None
    ts: str | None
    risk: float | None
    drivers: list[tuple[str, float | None]]
    shelved_until: str | None = None
    shelved_by: str | None = None
    maintenance_since: str | None = None
    agent_id: str | None = None


@dataclass
class AgentState:
    """An agent's retained status ("online"/"offline") and health document."""

    agent_id: str
    status: str | None = None
    health: dict[str, Any] | None = None


@dataclass
class Pending:
    """A command this view sent, waiting for its reply."""

    command: str
    asset: str
    sent_at: float


@dataclass
class Fleet:
    """The fleet as seen on `{prefix}/...`; feed it with `message`, read it with the accessors."""

    prefix: str
    clock: Callable[[], float] = time.monotonic
    assets: dict[str, AssetState] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)   # by alert_id, in arrival order
    standing: dict[str, Standing] = field(default_factory=dict)
    agents: dict[str, AgentState] = field(default_factory=dict)
    pending: dict[bytes, Pending] = field(default_factory=dict)
    status: str = ""                  # the latest word on this view's own commands
    unreadable: int = 0               # messages on our topics that were not what they should be
    connected: bool = False
    denied: list[str] = field(default_factory=list)  # topic filters the broker would not let us read

    # -- input -------------------------------------------------------------------------------

    def message(self, topic: str, payload: bytes) -> None:
        """One message from the broker, on any of the view's topics."""
        rest = topic.removeprefix(self.prefix + "/")
        if rest == topic:
            return
        parts = rest.split("/")
        match parts:
            case ["risk", asset]:
                self._risk(asset, payload)
            case ["alerts", asset]:
                self._alert(asset, payload)
            case ["alarms", "active", asset]:
                self._standing(asset, payload)
            case ["alarms", "shelved", asset]:
                self._shelf(asset, payload)
            case ["agents", agent_id, "status"]:
                self._agent(agent_id).status = payload.decode("utf-8", "replace").strip()[:32] or None
            case ["agents", agent_id, "health"]:
                self._health(agent_id, payload)

    def _bad(self) -> None:
        self.unreadable += 1

    def _asset(self, asset: str) -> AssetState:
        st = self.assets.get(asset)
        if st is None:
            if len(self.assets) >= MAX_ASSETS:
                # Memory stays bounded whatever the broker carries: forget the least risky.
                del self.assets[max(self.assets.values(), key=lambda s: s.sort_key).asset]
            st = self.assets[asset] = AssetState(asset)
        return st

    def _risk(self, asset: str, payload: bytes) -> None:
        if not payload:
            self.assets.pop(asset, None)  # a cleared retained risk: the asset is gone
            return
        doc = _doc(payload)
        risk = _float(doc.get("risk")) if doc else None
        if doc is None or risk is None:
            self._bad()
            return
        st = self._asset(asset)
        ts = _str(doc.get("ts"))
        # A retained message comes again on every (re)subscription: one trend point per scored window.
        if not st.has_risk or ts != st.ts:
            st.trend.append(risk)
        st.has_risk = True
        st.risk, st.level, st.ts = risk, _level(doc.get("level")), ts
        st.stale = doc.get("stale") is True
        st.maintenance = doc.get("maintenance") is True
        st.chattering = doc.get("chattering") is True
        st.shelved_until = _str(doc.get("shelved_until"))
        st.model_version = _str(doc.get("model_version")) or st.model_version

    def _alert(self, asset: str, payload: bytes) -> None:
        doc = _doc(payload)
        if doc is None:
            self._bad()
            return
        aid = _str(doc.get("alert_id")) or f"{asset}@{doc.get('ts')}:{doc.get('level')}"
        state = _str(doc.get("state")) or "unacknowledged"
        old = self.alerts.get(aid)
        if old is not None:  # the ack republished (or a QoS 1 duplicate): same alert, new state
            old.state = state
            old.acknowledged_by = _str(doc.get("acknowledged_by")) or old.acknowledged_by
        else:
            self.alerts[aid] = Alert(
                aid, asset, _str(doc.get("ts")), _level(doc.get("level")),
                _level(doc.get("previous_level")), _float(doc.get("risk")),
                drivers(doc.get("top_channels")), state, _str(doc.get("acknowledged_by")),
                _str(doc.get("agent_id")), _str(doc.get("reason")))
            while len(self.alerts) > MAX_ALERTS:
                del self.alerts[next(iter(self.alerts))]
        st = self.assets.get(asset)
        if st is None or not st.has_risk:
            # Known from its alerts only (e.g. no right to read risk): the alert says where it stands.
            st = self._asset(asset)
            st.level, st.risk = _level(doc.get("level")), _float(doc.get("risk"))
        sa = self.standing.get(asset)
        if sa is not None and sa.alert_id == aid and state == "acknowledged" and sa.state == "unacknowledged":
            sa.state, sa.acknowledged = "acknowledged", True

    def _standing(self, asset: str, payload: bytes) -> None:
        if not payload:
            self.standing.pop(asset, None)  # an empty retained message: nothing stands any more
            return
        doc = _doc(payload)
        if doc is None or (asset not in self.standing and len(self.standing) >= MAX_ASSETS):
            self._bad()
            return
        sa = Standing(
            asset, _level(doc.get("level")), _str(doc.get("state")) or "unacknowledged",
            doc.get("acknowledged") is True, _str(doc.get("alert_id")), _str(doc.get("ts")),
            _float(doc.get("risk")), drivers(doc.get("top_channels")), _str(doc.get("shelved_until")),
            _str(doc.get("shelved_by")), _str(doc.get("maintenance_since")), _str(doc.get("agent_id")))
        self.standing[asset] = sa
        a = self.alerts.get(sa.alert_id or "")
        if a is not None and sa.acknowledged:
            a.state = "acknowledged"
        st = self.assets.get(asset)
        if st is None or not st.has_risk:
            st = self._asset(asset)
            st.level, st.risk = sa.level, sa.risk

    def _shelf(self, asset: str, payload: bytes) -> None:
        doc = _doc(payload)
        if doc is None:
            self._bad()
            return
        event = doc.get("event")
        st = self._asset(asset)
        if event == "shelved":
            st.shelved_until = _str(doc.get("until"))
        elif event in ("unshelved", "expired"):
            st.shelved_until = None

    def _agent(self, agent_id: str) -> AgentState:
        ag = self.agents.get(agent_id)
        if ag is None:
            if len(self.agents) >= MAX_AGENTS:
                del self.agents[next(iter(self.agents))]
            ag = self.agents[agent_id] = AgentState(agent_id)
        return ag

    def _health(self, agent_id: str, payload: bytes) -> None:
        if not payload:
            self._agent(agent_id).health = None
            return
        doc = _doc(payload)
        if doc is None:
            self._bad()
            return
        self._agent(agent_id).health = doc

    # -- this view's commands ----------------------------------------------------------------

    def sent(self, correlation: bytes, command: str, asset: str) -> None:
        """A command went out with this correlation data; its reply is awaited."""
        self.pending[correlation] = Pending(command, asset, self.clock())
        self.status = f"{command} {asset}: sent, waiting for the agent's reply"

    def refused(self, correlation: bytes, reason: str) -> None:
        """The broker did not take the command (a failure PUBACK: e.g. not authorized)."""
        p = self.pending.pop(correlation, None)
        if p is not None:
            self.status = f"{p.command} {p.asset}: refused by the broker ({reason})"

    def reply(self, correlation: bytes | None, payload: bytes) -> None:
        """A reply on the response topic: `{"command", "asset", "result", "reason", "agent_id"}`."""
        doc = _doc(payload)
        if doc is None:
            self._bad()
            return
        p = self.pending.pop(correlation, None) if correlation is not None else None
        command = _str(doc.get("command")) or (p.command if p else "command")
        asset = _str(doc.get("asset")) or (p.asset if p else "?")
        result = _str(doc.get("result")) or "?"
        text = f"{command} {asset}: {result}"
        if _str(doc.get("reason")):
            text += f" ({doc['reason']})"
        if _str(doc.get("agent_id")):
            text += f" from {doc['agent_id']}"
        self.status = text

    def tick(self) -> None:
        """Commands whose reply did not come in time are said to be unanswered."""
        now = self.clock()
        for corr, p in list(self.pending.items()):
            if now - p.sent_at >= REPLY_WAIT_S:
                del self.pending[corr]
                self.status = (f"{p.command} {p.asset}: no reply within {REPLY_WAIT_S:g} s "
                               "(no agent serves it, or the agent does not reply)")

    # -- views of the state ------------------------------------------------------------------

    def ranked(self) -> list[AssetState]:
        """Assets, highest risk first (then higher level, then name)."""
        return sorted(self.assets.values(), key=lambda s: s.sort_key)

    def recent(self) -> list[Alert]:
        """Alerts, newest first."""
        return list(reversed(self.alerts.values()))

    def standing_alarms(self) -> list[Standing]:
        """Standing alarms: unacknowledged first, then by level, then by name."""
        return sorted(self.standing.values(),
                      key=lambda s: (s.acknowledged, -RANK.get(s.level, -1), s.asset))

    def latest_alert_id(self, asset: str) -> str | None:
        """What an ack of `asset` acknowledges: its standing alarm, else its newest alert seen."""
        sa = self.standing.get(asset)
        if sa is not None and sa.alert_id:
            return sa.alert_id
        for a in reversed(self.alerts.values()):
            if a.asset == asset:
                return a.alert_id
        return None

    def alarm_state(self, asset: str) -> str | None:
        """The state of the asset's standing alarm, else of its newest alert (None: none seen)."""
        sa = self.standing.get(asset)
        if sa is not None:
            return sa.state
        for a in reversed(self.alerts.values()):
            if a.asset == asset:
                return a.state
        return None

    def model_versions(self) -> dict[str, int]:
        """Model versions in the risk messages, with how many assets each scores."""
        out: dict[str, int] = {}
        for st in self.assets.values():
            if st.model_version:
                out[st.model_version] = out.get(st.model_version, 0) + 1
        return out
