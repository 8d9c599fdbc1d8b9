"""The operations loop: plant events, operator commands and alarm management around the alerts.

`Operations` sits between the pipeline's decisions and what the agent publishes. It knows
which assets are out of service (maintenance) or shelved, which alert of each asset is
acknowledged, whether the plant is in an alarm flood and which assets chatter; it holds every
alert of the live and the shadow model against the failures and repairs the CMMS reports
(lead time, misses, false alarms), and watches input drift. It runs on the worker thread, like
the pipeline, and returns what to publish; the agent publishes it.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.accounting import LeadTimeBook, Raised
from agent.alarms import ChatterTracker, FloodChange, FloodTracker
from agent.alerts import alert_id, rfc3339_ms
from agent.commands import Command
from agent.config import AgentConfig
from agent.drift import DriftTracker
from agent.events import EventLog, PlantEvent
from agent.metrics import Metrics
from agent.pipeline import AlertOut, BatchResult
from agent.spec import ModelSpec
from agent.trial import Role, Tally, Trial, Verdict
from agent.windows import cell_of

_RANK = {"ok": 0, "warning": 1, "critical": 2}
_SEEN_EVENTS = 1000  # recent (asset, ts, event) keys: a QoS 1 redelivery is logged once


@dataclass(frozen=True)
class Outgoing:
    """A message for the outbox (QoS 1, kept until the broker acknowledges it), or, `retain`ed,
    a state document published directly (None: clear the retained message)."""

    topic: str
    doc: dict[str, Any] | None
    level: str = "warning"  # the outbox keeps anything but "ok" even when full
    retain: bool = False


@dataclass
class AssetOps:
    """What operations keep per asset; checkpointed, so a restart keeps it."""

    maintenance_since: float | None = None
    shelved_until: float | None = None
    shelved_by: str = ""
    last_alert: dict[str, Any] | None = None   # the last alert published, as sent
    floor_ts: float | None = None              # the last repair: readings before it are refused
    unacked: bool = False                      # a raise annunciated and not acknowledged yet
    held: dict[str, Any] | None = None         # the latest transition the shelf kept back
    shelf_cmd: dict[str, Any] | None = None    # the command that set the shelf (a repeat is a no-op)

    def empty(self) -> bool:
        return (self.maintenance_since is None and self.shelved_until is None and self.last_alert is None
                and self.floor_ts is None and not self.unacked)

    @property
    def annunciated(self) -> str:
        """The level consumers last heard of."""
        return "ok" if self.last_alert is None else str(self.last_alert["level"])


@dataclass
class Decided:
    """What one batch became: alerts to send as they are, and other messages for the outbox."""

    alerts: list[AlertOut] = field(default_factory=list)
    messages: list[Outgoing] = field(default_factory=list)


@dataclass
class Effects:
    """What an event or a command asks of the agent besides messages."""

    messages: list[Outgoing] = field(default_factory=list)
    resets: list[tuple[str, float]] = field(default_factory=list)
    promote: bool = False
    refit: bool = False


# Drift is judged every this many ticks (seconds): it reads every asset's histograms.
DRIFT_EVERY_TICKS = 5


class Operations:
    """Alarm management and live accounting for one agent (worker thread only)."""

    def __init__(self, cfg: AgentConfig, spec: ModelSpec, metrics: Metrics, log: Any,
                 serves: Callable[[str], bool], level_of: Callable[[str], str],
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.prefix = cfg.outputs.prefix
        self.agent_id = cfg.resolved_agent_id
        self.metrics = metrics
        self.log = log
        self.serves = serves
        self.level_of = level_of
        self.wall = wall
        a = cfg.alarms
        self.assets: dict[str, AssetOps] = {}
        self.books = {"live": LeadTimeBook(a.report_grace_s)}
        self.flood = FloodTracker(a.flood_threshold, a.flood_window_s)
        self.chatter = ChatterTracker(a.chatter_toggles, a.chatter_window_s, cfg.windows.max_assets)
        self.events = EventLog(cfg.state.dir / "events.csv")
        self.now = -math.inf   # event-time watermark: the newest event time scored
        self.dirty: set[str] = set()
        self.summary_due: set[str] = set()  # assets whose retained alarm summary is out of date
        self._seen: deque[tuple[str, float, str]] = deque(maxlen=_SEEN_EVENTS)
        self.refit = False
        self.drift_psi: dict[str, float] = {}
        self.drifting: list[tuple[str, float]] = []
        self._ticks = 0
        self.shadow_horizon_s = 0.0
        self.trial: Trial | None = None
        self.verdict: Verdict | None = None  # a finished trial, for the agent to act on
        self.set_model(spec)

    def enable_shadow(self, horizon_s: float) -> None:
        """Keep the same books for a shadow model, whose alerts have this horizon."""
        self.shadow_horizon_s = horizon_s
        self.books.setdefault("shadow", LeadTimeBook(self.cfg.alarms.report_grace_s))

    def start_trial(self, role: Role, shadow_version: str, horizon_s: float) -> None:
        """A new shadow model: fresh books for it, and its trial from the next scored window."""
        self.shadow_horizon_s = horizon_s
        self.books["shadow"] = LeadTimeBook(self.cfg.alarms.report_grace_s)
        self.trial = Trial(role, shadow_version, self.spec.version, None)
        self.verdict = None

    def end_trial(self) -> None:
        """The shadow is gone (promoted, dropped or restored): nothing more to judge."""
        self.books.pop("shadow", None)
        self.trial, self.verdict = None, None

    def _tally(self, model: str) -> Tally | None:
        return None if self.trial is None else self.trial.tallies.get(model)

    # -- model -------------------------------------------------------------------------------

    def set_model(self, spec: ModelSpec) -> None:
        """Drift is measured against the serving model's training statistics."""
        d = self.cfg.drift
        n = spec.normalisation
        self.spec = spec
        self.drift = DriftTracker(spec.channels, n.mean, n.std, d.bins, d.window_s, d.min_samples,
                                  spec.input_quantiles)
        self.metrics.drift_psi.clear()
        for channel in spec.channels:  # NaN until enough inputs: unknown, not "no drift"
            self.metrics.drift_psi.labels(channel).set(math.nan)

    # -- per-asset state ---------------------------------------------------------------------

    def _asset(self, asset: str) -> AssetOps:
        st = self.assets.get(asset)
        if st is None:
            st = self.assets[asset] = AssetOps()
        return st

    def _takes(self, asset: str) -> bool:
        """Whether events and commands for `asset` are this agent's to act on (and fit its limit)."""
        return self.serves(asset) and (asset in self.assets or len(self.assets) < self.cfg.windows.max_assets)

    def in_maintenance(self, asset: str) -> bool:
        st = self.assets.get(asset)
        return st is not None and st.maintenance_since is not None

    def shelved(self, asset: str) -> bool:
        st = self.assets.get(asset)
        return st is not None and st.shelved_until is not None

    def _gauges(self) -> None:
        self.metrics.assets_in_maintenance.set(sum(1 for s in self.assets.values()
                                                   if s.maintenance_since is not None))
        self.metrics.assets_shelved.set(sum(1 for s in self.assets.values() if s.shelved_until is not None))
        self.metrics.chattering_assets.set(len(self.chatter.chattering))
        self.metrics.alarm_flood_active.set(1 if self.flood.active else 0)
        self.metrics.alarm_rate.set(self.flood.count)

    # -- decisions of a batch ------------------------------------------------------------------

    def on_batch(self, result: BatchResult) -> Decided:
        """Which of a batch's alerts go out; the risk docs get the asset's operating state."""
        out = Decided()
        if self.trial is not None and self.trial.started is None and result.risks:
            self.trial.started = min((r.ts for r in result.risks if r.ts == r.ts), default=None)
        for r in result.risks:
            if r.ts == r.ts:
                self.now = max(self.now, r.ts)
            st = self.assets.get(r.asset)
            if st is not None:
                if st.maintenance_since is not None:
                    r.doc["maintenance"] = True
                if st.shelved_until is not None:
                    r.doc["shelved_until"] = rfc3339_ms(st.shelved_until)
            if r.asset in self.chatter.chattering:
                r.doc["chattering"] = True
        for a in result.alerts:
            self._decide(a, out)
        for t in result.shadow:
            if "shadow" not in self.books or self.in_maintenance(t.asset) or t.previous.label != "ok":
                continue
            aid = alert_id("shadow:" + self.agent_id, t.asset, t.cell, t.level.label, t.previous.label)
            self._hold("shadow", t.asset, aid, t.ts, self.shadow_horizon_s)
        if result.inputs is not None and result.input_ts is not None:
            self.drift.add(result.input_assets, result.input_ts, result.inputs)
        return out

    def _hold(self, model: str, asset: str, aid: str, ts: float, horizon_s: float) -> None:
        for r in self.books[model].raised(asset, aid, ts, horizon_s):
            self._false_alarm(model, asset, r)
        self.dirty.add(asset)

    def _decide(self, a: AlertOut, out: Decided) -> None:
        if a.ts == a.ts:
            self.now = max(self.now, a.ts)
        if self.chatter.change(a.asset, a.ts):
            self.log.warning("asset_chattering", asset=a.asset, changes=len(self.chatter.changes[a.asset]),
                             window_s=self.chatter.window_s)
        st = self.assets.get(a.asset)
        if st is not None and st.maintenance_since is not None:
            self._suppress(a, "maintenance")
            self.summary_due.add(a.asset)
            return  # out of service: neither annunciated nor held against the model
        raised = _RANK[a.level] > _RANK[a.previous]
        if raised and a.previous == "ok":
            self._hold("live", a.asset, a.doc["alert_id"], a.ts, float(a.doc["horizon_s"]))
        if st is not None and st.shelved_until is not None:
            self._suppress(a, "shelved")
            st.held = a.doc  # returned to the operator when the shelf ends, if it still stands
            self.dirty.add(a.asset)
            self.summary_due.add(a.asset)
            return
        if raised:
            began = self.flood.alarm(a.ts)
            if began is not None:
                self.metrics.alarm_floods.inc()
                self.metrics.alarm_flood_active.set(1)
                out.messages.append(self._flood_doc(began, a.ts))
                self.log.warning("alarm_flood_began", alarms=began.alarms_in_window,
                                 window_s=self.flood.window_s, threshold=self.flood.threshold)
        if self.flood.active and "critical" not in (a.level, a.previous):
            self.flood.held_back(a.asset)
            self._suppress(a, "flood")
            return
        a.doc["state"] = "unacknowledged"
        st = self._asset(a.asset)
        st.last_alert = a.doc
        st.unacked = a.level != "ok" or st.unacked  # a return to normal leaves an unacked raise standing
        self.dirty.add(a.asset)
        self.summary_due.add(a.asset)
        out.alerts.append(a)

    def _suppress(self, a: AlertOut, why: str) -> None:
        self.metrics.alerts_suppressed.labels(why).inc()
        self.log.info("alert_suppressed", asset=a.asset, alert_level=a.level, previous=a.previous, reason=why,
                      alert_id=a.doc["alert_id"])

    def _flood_doc(self, change: FloodChange, ts: float) -> Outgoing:
        doc = {"agent_id": self.agent_id, "ts": rfc3339_ms(ts), "active": change.active,
               "alarms_in_window": change.alarms_in_window, "window_s": self.flood.window_s,
               "threshold": self.flood.threshold, "suppressed": change.suppressed,
               "assets": change.assets, "emitted_at": rfc3339_ms(self.wall())}
        return Outgoing(f"{self.prefix}/alarms/flood", doc)

    # -- the passing of (event) time ---------------------------------------------------------------

    def tick(self) -> list[Outgoing]:
        """Shelves that expired, a flood that ended, alerts whose horizon passed; drift."""
        out: list[Outgoing] = []
        now = self.now
        if now == -math.inf:
            return out
        for asset, st in self.assets.items():
            if st.shelved_until is not None and st.shelved_until <= now:
                until = st.shelved_until
                out.append(self._shelf_doc(asset, "expired", until, "agent"))
                out.extend(self._unshelve(asset, st, "shelf_expired"))
                self.log.info("shelf_expired", asset=asset, asset_level=self.level_of(asset))
        ended = self.flood.tick(now)
        if ended is not None:
            out.append(self._flood_doc(ended, now))
            self.log.info("alarm_flood_ended", suppressed_warnings=ended.suppressed, assets=len(ended.assets))
        for asset in self.chatter.tick(now):
            self.log.info("asset_chatter_ended", asset=asset)
        for model, book in self.books.items():
            for asset, r in book.expire(now):
                self._false_alarm(model, asset, r)
        self.metrics.event_time.set(now)
        if self.trial is not None and self.verdict is None:
            self.verdict = self.trial.verdict(now, self.cfg.learn.trial)
            self.metrics.trial_seconds.set(now - (self.trial.started or now))
        self._ticks += 1
        if self._ticks % DRIFT_EVERY_TICKS == 1:
            self._judge_drift()
        self._gauges()
        return out + self.summaries()

    def _judge_drift(self) -> None:
        """Per channel the worst asset's PSI; refit recommended once any asset drifts."""
        psi = self.drift.values()
        for channel, v in psi.items():
            self.metrics.drift_psi.labels(channel).set(v)
        self.drift_psi = psi
        self.drifting = self.drift.drifting(self.cfg.drift.psi_threshold)
        refit = bool(self.drifting)
        if refit != self.refit:
            self.refit = refit
            self.metrics.refit_recommended.set(1 if refit else 0)
            self.log.warning("refit_recommended" if refit else "refit_no_longer_recommended",
                             drift={k: round(v, 3) for k, v in psi.items()}, assets=self.drifting)

    def _false_alarm(self, model: str, asset: str, r: Raised) -> None:
        self.metrics.false_alarms.labels(model).inc()
        if (t := self._tally(model)) is not None:
            t.false_alarms += 1
        self.dirty.add(asset)
        self.log.info("false_alarm", model=model, asset=asset, alert_id=r.alert_id, alert_ts=rfc3339_ms(r.ts),
                      horizon_s=r.horizon_s)

    def _shelf_doc(self, asset: str, what: str, until: float, by: str, reason: str = "") -> Outgoing:
        doc = {"asset": asset, "event": what, "until": rfc3339_ms(until), "by": by,
               "level": self.level_of(asset), "agent_id": self.agent_id,
               "ts": rfc3339_ms(self.now if self.now > -math.inf else self.wall()),
               "emitted_at": rfc3339_ms(self.wall())}
        if reason:
            doc["reason"] = reason
        return Outgoing(f"{self.prefix}/alarms/shelved/{asset}", doc)

    # -- plant events ------------------------------------------------------------------------

    def event(self, ev: PlantEvent) -> Effects:
        """A CMMS event: logged to the events file, then its effect on the asset and the books."""
        fx = Effects()
        key = (ev.asset, ev.ts, ev.event)
        if key in self._seen or not self._takes(ev.asset):
            return fx  # a QoS 1 redelivery (already counted and written), or another agent's asset
        self._seen.append(key)
        try:
            self.events.append(ev)
        except OSError as exc:
            self.log.error("events_file_write_failed", error=str(exc), path=str(self.events.path))
        self.log.info("plant_event", asset=ev.asset, kind=ev.event, ts=rfc3339_ms(ev.ts),
                      work_order=ev.work_order)
        st = self._asset(ev.asset)
        self.dirty.add(ev.asset)
        if ev.event == "maintenance_start":
            st.maintenance_since = ev.ts
        elif ev.event == "failure":
            for model, book in self.books.items():
                outcome = book.failure(ev.asset, ev.ts)
                t = self._tally(model)
                if outcome.lead_time_s is None:
                    self.metrics.failures_missed.labels(model).inc()
                    if t is not None:
                        t.missed += 1
                    self.log.warning("failure_missed", model=model, asset=ev.asset, ts=rfc3339_ms(ev.ts))
                else:
                    self.metrics.lead_time.labels(model).observe(outcome.lead_time_s)
                    self.metrics.true_alarms.labels(model).inc()  # one failure, however many alerts
                    if t is not None:
                        t.true_alarms += 1
                        t.lead(outcome.lead_time_s)
                    self.log.info("failure_warned", model=model, asset=ev.asset,
                                  lead_time_s=round(outcome.lead_time_s, 3))
        else:  # repair, maintenance_end: the machine starts a new life
            if ev.event == "maintenance_end":
                st.maintenance_since = None
            for model, book in self.books.items():
                if book.repair(ev.asset, ev.ts):
                    self.metrics.true_alarms.labels(model).inc()
                    if (t := self._tally(model)) is not None:
                        t.true_alarms += 1
            st.floor_ts = max(ev.ts, st.floor_ts if st.floor_ts is not None else -math.inf)
            fx.resets.append((ev.asset, ev.ts))
            self.chatter.forget(ev.asset)
            last = st.last_alert
            if last is not None and last["level"] != "ok":
                # Consumers last heard a warning or critical; the restart returns the asset to ok.
                cell = cell_of(ev.ts, self.spec.period_s)
                doc = {**last, "ts": rfc3339_ms(ev.ts), "level": "ok", "previous_level": last["level"],
                       "risk": 0.0, "top_channels": [], "reason": ev.event, "state": "unacknowledged",
                       "alert_id": alert_id(self.agent_id, ev.asset, cell, "ok", last["level"]),
                       "emitted_at": rfc3339_ms(self.wall())}
                doc.pop("rul", None)  # the old machine's remaining life says nothing of the new one
                st.last_alert = doc
                fx.messages.append(Outgoing(f"{self.prefix}/alerts/{ev.asset}", doc, "ok"))
            st.unacked, st.held = False, None  # a new life: the old machine's alarms are closed
        self.summary_due.add(ev.asset)
        fx.messages.extend(self.summaries())
        self._gauges()
        # Counted last: whoever sees the count finds the event's line on disk, its log line and
        # its effect on the books already there (tests and dashboards read them on the count).
        self.metrics.events.labels(ev.event).inc()
        return fx

    # -- operator commands -------------------------------------------------------------------

    def command(self, cmd: Command) -> tuple[str, str, Effects]:
        """Apply a command; returns (result: ok|noop|rejected|ignored, why, effects). Idempotent."""
        fx = Effects()
        if cmd.name in ("promote", "refit"):
            fx.promote, fx.refit = cmd.name == "promote", cmd.name == "refit"
            return "ok", "", fx
        if not self._takes(cmd.asset):
            return "ignored", "asset not served by this agent", fx
        st = self._asset(cmd.asset)
        if cmd.name == "ack":
            return self._ack(cmd, st, fx)
        if cmd.name == "shelve":
            return self._shelve(cmd, st, fx)
        if st.shelved_until is None:
            return "noop", "not shelved", fx
        until = st.shelved_until
        fx.messages.append(self._shelf_doc(cmd.asset, "unshelved", until, cmd.sender))
        fx.messages.extend(self._unshelve(cmd.asset, st, "unshelved"))
        fx.messages.extend(self.summaries())
        self._gauges()
        return "ok", "", fx

    def _ack(self, cmd: Command, st: AssetOps, fx: Effects) -> tuple[str, str, Effects]:
        last = st.last_alert
        if last is None:
            return "rejected", "no alert to acknowledge", fx
        want = cmd.args.get("alert_id")
        if want is not None and want != last["alert_id"]:
            return "rejected", "not the asset's latest alert", fx
        if last.get("state") == "acknowledged":
            return "noop", "already acknowledged", fx
        doc = {**last, "state": "acknowledged", "acknowledged_by": cmd.sender,
               "acknowledged_at": rfc3339_ms(self.wall())}
        st.last_alert, st.unacked = doc, False
        self.dirty.add(cmd.asset)
        self.summary_due.add(cmd.asset)
        fx.messages.append(Outgoing(f"{self.prefix}/alerts/{cmd.asset}", doc, doc["level"]))
        fx.messages.extend(self.summaries())
        return "ok", "", fx

    def _shelve(self, cmd: Command, st: AssetOps, fx: Effects) -> tuple[str, str, Effects]:
        asked = {**cmd.args, "by": cmd.sender}
        if st.shelved_until is not None and st.shelf_cmd == asked:
            return "noop", "already shelved by the same command", fx  # a resend, not a new shelf
        base = self.now if self.now > -math.inf else self.wall()
        until = float(cmd.args["until"]) if "until" in cmd.args else base + float(cmd.args["for_s"])
        if until <= base:
            return "rejected", "until is not in the future (event time)", fx
        limit = self.cfg.alarms.max_shelve_s
        if until - base > limit:
            return "rejected", f"longer than [alarms] max_shelve_s ({limit:g} s)", fx
        if st.shelved_until == until:
            return "noop", "already shelved until then", fx
        st.shelved_until, st.shelved_by, st.shelf_cmd = until, cmd.sender, asked
        self.dirty.add(cmd.asset)
        self.summary_due.add(cmd.asset)
        fx.messages.append(self._shelf_doc(cmd.asset, "shelved", until, cmd.sender,
                                           str(cmd.args.get("reason", ""))))
        fx.messages.extend(self.summaries())
        self._gauges()
        return "ok", "", fx

    def _unshelve(self, asset: str, st: AssetOps, why: str) -> list[Outgoing]:
        """End a shelf; an alarm that changed behind it is returned to the operator (ISA-18.2)."""
        held, st.held = st.held, None
        st.shelved_until, st.shelved_by, st.shelf_cmd = None, "", None
        self.dirty.add(asset)
        self.summary_due.add(asset)
        level, heard = self.level_of(asset), st.annunciated
        if level == heard:
            return []
        ts = self.now if self.now > -math.inf else self.wall()
        base = held if held is not None and held.get("level") == level else st.last_alert or {}
        doc = {**base, "asset": asset, "ts": rfc3339_ms(ts), "level": level, "previous_level": heard,
               "alert_id": alert_id(self.agent_id, asset, cell_of(ts, self.spec.period_s), level, heard),
               "state": "unacknowledged", "reason": why, "agent_id": self.agent_id,
               "emitted_at": rfc3339_ms(self.wall())}
        for k in ("acknowledged_by", "acknowledged_at"):
            doc.pop(k, None)
        if level == "ok":
            doc.update(risk=doc.get("risk", 0.0), top_channels=[])
        st.last_alert = doc
        st.unacked = level != "ok" or st.unacked
        self.metrics.alerts.labels(level).inc()
        self.log.info("alert_raised", asset=asset, alert_level=level, previous=heard, reason=why,
                      alert_id=doc["alert_id"])
        return [Outgoing(f"{self.prefix}/alerts/{asset}", doc, level)]

    # -- the retained alarm summary ----------------------------------------------------------

    def summary(self, asset: str) -> dict[str, Any] | None:
        """The asset's standing alarm as the operator should see it (None: nothing stands).

        An alarm stands while the asset is in maintenance (suppressed) or shelved, while the
        level consumers last heard is not ok, or while a raise waits to be acknowledged.
        """
        st = self.assets.get(asset)
        if st is None:
            return None
        if st.maintenance_since is not None:
            state, level = "suppressed", self.level_of(asset)
        elif st.shelved_until is not None:
            state, level = "shelved", self.level_of(asset)
        elif st.annunciated != "ok" or st.unacked:
            state, level = ("unacknowledged" if st.unacked else "acknowledged"), st.annunciated
        else:
            return None
        last = st.last_alert or {}
        doc: dict[str, Any] = {
            "asset": asset, "level": level, "state": state, "acknowledged": not st.unacked,
            "alert_id": last.get("alert_id"), "ts": last.get("ts"), "risk": last.get("risk"),
            "top_channels": last.get("top_channels", []), "agent_id": self.agent_id,
            "emitted_at": rfc3339_ms(self.wall())}
        if st.shelved_until is not None:
            doc.update(shelved_until=rfc3339_ms(st.shelved_until), shelved_by=st.shelved_by)
        if st.maintenance_since is not None:
            doc["maintenance_since"] = rfc3339_ms(st.maintenance_since)
        return doc

    def summaries(self, every: bool = False) -> list[Outgoing]:
        """Retained `{prefix}/alarms/active/{asset}` documents of the assets whose alarm state
        changed (`every`: of all assets with state, after a reconnect); None clears one."""
        assets = list(self.assets) if every else sorted(self.summary_due)
        self.summary_due.clear()
        return [Outgoing(f"{self.prefix}/alarms/active/{a}", self.summary(a), retain=True) for a in assets]

    # -- health ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The retained health document: alarm-management state and drift."""
        return {
            "agent_id": self.agent_id,
            "ts": rfc3339_ms(self.now) if self.now > -math.inf else None,
            "flood_active": self.flood.active, "alarms_in_flood_window": self.flood.count,
            "flood_threshold": self.flood.threshold, "flood_window_s": self.flood.window_s,
            "chattering": sorted(self.chatter.chattering)[:100],
            "in_maintenance": sorted(a for a, s in self.assets.items()
                                     if s.maintenance_since is not None)[:100],
            "shelved": sorted(a for a, s in self.assets.items() if s.shelved_until is not None)[:100],
            "refit_recommended": self.refit,
            "drift_psi": {k: round(v, 4) for k, v in self.drift_psi.items()},
            "drifting_assets": dict(self.drifting),
            "psi_threshold": self.cfg.drift.psi_threshold,
            "mode": "serving", "model_version": self.spec.version,
            "trial": None if self.trial is None else {
                "role": self.trial.role, "shadow_version": self.trial.shadow_version,
                "started": None if self.trial.started is None else rfc3339_ms(self.trial.started),
                "length_s": self.cfg.learn.trial,
                "tallies": {k: {"false_alarms": t.false_alarms, "missed": t.missed,
                                "true_alarms": t.true_alarms} for k, t in self.trial.tallies.items()}},
        }

    # -- checkpoint --------------------------------------------------------------------------

    @property
    def drift_key(self) -> str:
        """The drift histograms are kept under the serving model's version: another model has
        another reference, so its histograms start afresh."""
        return f"drift:{self.spec.version}"

    def dump_drift(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.drift.state())  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        return buf.getvalue()

    def restore_drift(self, blob: bytes) -> int:
        """Resume the drift histograms; returns the assets restored (0 for an unreadable blob)."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                return self.drift.restore({k: z[k] for k in z.files})
        except (ValueError, KeyError, OSError) as exc:
            self.log.warning("drift_state_skipped", error=str(exc))
            return 0

    def dump(self) -> dict[str, str | None]:
        """Rows for the assets changed since the last call (None: nothing left to keep)."""
        rows: dict[str, str | None] = {}
        for asset in self.dirty:
            st = self.assets.get(asset)
            live = self.books["live"].dump(asset)
            shadow = self.books["shadow"].dump(asset) if "shadow" in self.books else []
            if (st is None or st.empty()) and not live and not shadow:
                rows[asset] = None
                continue
            st = st or AssetOps()
            rows[asset] = json.dumps({
                "maintenance_since": st.maintenance_since, "shelved_until": st.shelved_until,
                "shelved_by": st.shelved_by, "last_alert": st.last_alert, "floor_ts": st.floor_ts,
                "unacked": st.unacked, "held": st.held, "shelf_cmd": st.shelf_cmd,
                "live": live, "shadow": shadow})
        self.dirty = set()
        return rows

    def restore(self, rows: dict[str, str]) -> int:
        """Resume from checkpoint rows; returns how many assets had state."""
        for asset, text in rows.items():
            try:
                d = json.loads(text)
                st = AssetOps(d.get("maintenance_since"), d.get("shelved_until"), d.get("shelved_by", ""),
                              d.get("last_alert"), d.get("floor_ts"), bool(d.get("unacked", False)),
                              d.get("held"), d.get("shelf_cmd"))
                self.books["live"].load(asset, d.get("live", []))
                if "shadow" in self.books:
                    self.books["shadow"].load(asset, d.get("shadow", []))
            except (ValueError, TypeError, KeyError) as exc:
                self.log.warning("ops_row_skipped", asset=asset[:100], error=str(exc))
                continue
            self.assets[asset] = st
        self._gauges()
        return len(rows)
