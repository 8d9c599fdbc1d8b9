"""The processing pipeline: messages into per-asset windows, due windows into batches, outputs out.

It owns all per-asset state and runs on one worker thread, so it needs no locks. It knows
nothing of MQTT: it returns what to publish, and the app publishes it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from agent.alerts import alert_id, rfc3339_ms
from agent.baseline import BaselineLearner
from agent.config import AgentConfig, SubscriptionConfig
from agent.ingest import Cell, Decoder, Reading, Reason
from agent.logs import RateLimited
from agent.metrics import Metrics
from agent.names import valid_name
from agent.risk import Level, LevelMachine, SurpriseTracker, in_force, top_channels
from agent.runtime import Runtime
from agent.scoring import Scorer
from agent.shadow import ShadowScorer, ShadowTransition
from agent.sparkplug import Birth, Command, Host, HostOptions, Output
from agent.sparkplug.codec import ChannelMap
from agent.spec import Baseline
from agent.state import dump_asset, load_asset
from agent.windows import AssetWindow, Update, cell_of, hold_cells

if TYPE_CHECKING:  # agent.recorder imports pyarrow (~50 MiB), loaded only when [record] is on
    from agent.recorder import Recorder


class AssetState:
    """Everything the agent keeps for one asset."""

    __slots__ = ("arrival", "baseline", "dead_until", "floor_ts", "historical", "level", "risk", "stale",
                 "surprise", "window")

    def __init__(self, window: AssetWindow, surprise: SurpriseTracker, level: LevelMachine,
                 baseline: Baseline | BaselineLearner | None = None) -> None:
        self.window = window
        self.surprise = surprise
        self.level = level
        # With per-asset baselines: the model file's for this asset, or one it learns first.
        self.baseline = baseline
        self.stale = False
        self.risk = 0.0
        self.arrival = 0.0  # monotonic arrival of the newest reading, for latency
        # End cells of ready windows that a historical (Sparkplug is_historical) reading closed:
        # scored in event time like any window, but never decided on (no level change, no alert).
        self.historical: set[int] = set()
        # Set when the source announced its death (Sparkplug NDEATH/DDEATH): windows up to this
        # cell closed before the notice and must not clear `stale` when they are scored late.
        self.dead_until = -1
        # Readings at or before a repair describe the old machine: refused as late.
        self.floor_ts = -math.inf


@dataclass(frozen=True)
class RiskOut:
    """One scored window (or a stale notice), ready to publish."""

    asset: str
    doc: dict[str, Any]
    arrival: float
    ts: float = math.nan  # the doc's `ts` as epoch seconds


@dataclass(frozen=True)
class AlertOut:
    asset: str
    level: str
    doc: dict[str, Any]
    ts: float = math.nan      # event time of the transition, epoch seconds
    previous: str = "ok"


@dataclass
class BatchResult:
    risks: list[RiskOut] = field(default_factory=list)
    alerts: list[AlertOut] = field(default_factory=list)
    shadow: list[ShadowTransition] = field(default_factory=list)
    # The newest cell of each scored window as the model reads it (raw units, or against the asset's
    # baseline), its event time and its asset: drift's input.
    inputs: np.ndarray | None = None
    input_ts: np.ndarray | None = None
    input_assets: list[str] = field(default_factory=list)


class Pipeline:
    """Decode, window, batch, score and decide, for every asset of one agent."""

    def __init__(self, cfg: AgentConfig, runtime: Runtime, metrics: Metrics,
                 wall: Callable[[], float] = time.time, log: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.wall = wall
        self.log = log
        self.agent_id = cfg.resolved_agent_id
        self.assets: dict[str, AssetState] = {}
        self._due: dict[str, None] = {}  # insertion-ordered set of assets with windows ready
        self.n_ready = 0                  # windows closed and waiting to be scored
        self._floor = cfg.windows.ts_floor.timestamp()
        self._skew = cfg.windows.max_future_skew_s
        self._max_assets = cfg.windows.max_assets
        self._cell_ts, self._cell = float("nan"), 0  # the last event time written, and its cell
        self._allowed: dict[str, bool] = {}
        self.dirty: set[str] = set()  # assets changed since the last checkpoint
        self._bad_output = RateLimited(log or structlog.get_logger("vigil.pipeline"))
        self.runtime = runtime
        # One Sparkplug host per `codec = "sparkplug"` subscription; its sessions outlive a model
        # swap (only its channel map follows the model). What it asks to publish waits here.
        self.hosts = {i: Host(ChannelMap(runtime.spec.channels), _host_options(s, cfg.windows.max_assets),
                              clock=clock, wall=wall)
                      for i, s in enumerate(cfg.subscriptions) if s.codec == "sparkplug"}
        self.commands: list[Command] = []   # rebirth requests (NCMD), QoS 0, not retained
        self.notices: list[RiskOut] = []    # assets an NDEATH/DDEATH or a bad quality made stale
        self.shadow: ShadowScorer | None = None
        self.recorder: Recorder | None = None  # [record]: gets every accepted reading
        self._set_runtime(runtime)

    # -- model -------------------------------------------------------------------------------

    def _set_runtime(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        m = self.cfg.model
        self.thresholds = in_force(self.spec.thresholds, m.sensitivity, m.warning, m.critical)
        self.scorer = Scorer(self.spec)  # this model's probability grids, made once, not per window
        self.decoders = [Decoder(s, self.spec.channels) for s in self.cfg.subscriptions]
        # Each subscription's hold in cells of this model's period; an asset takes the hold of the
        # subscription that first brought it (the longest one when that is not known).
        self._holds = [hold_cells(s.hold_s, self.spec.period_s) for s in self.cfg.subscriptions]
        self._hold = max(self._holds)
        self._check_hold()
        self._cell_ts = float("nan")  # the period may have changed
        for i, host in self.hosts.items():
            sub = self.cfg.subscriptions[i]
            host.channels = ChannelMap(self.spec.channels, sub.channel_map, sub.scale, sub.offset)
        if self.recorder is not None:
            self.recorder.set_channels(self.spec.channels)
        self.metrics.set_model(self.spec.version, self.spec.created_at)

    def _check_hold(self) -> None:
        """Warn where a subscription holds values for another time than the model was trained with:
        its windows then differ from the ones the model learnt from."""
        trained = self.spec.hold_s
        if trained is None:
            return  # a file from before holds were recorded
        for s in self.cfg.subscriptions:
            if s.hold_s != trained:
                (self.log or structlog.get_logger("vigil.pipeline")).warning(
                    "hold_differs_from_model", subscription=s.filter, hold_s=s.hold_s, model_hold_s=trained,
                    hint="train with `vigil-train fit --hold` equal to the subscription's hold, or set "
                         "the subscription's `hold` to the model's")

    def swap_model(self, runtime: Runtime) -> bool:
        """Serve a new, already checked model from the next batch on.

        Windows survive when channels, period and window length are unchanged; otherwise
        every asset starts afresh. Returns whether the windows were kept.
        """
        old, new = self.spec, runtime.spec
        keep = (old.channels, old.period_s, old.window) == (new.channels, new.period_s, new.window)
        self._set_runtime(runtime)
        if keep:
            for asset, st in self.assets.items():
                st.level.t = self.thresholds
                st.surprise = self.scorer.tracker()
                st.baseline = self._baseline(asset, st.baseline)
        else:
            self.assets.clear()
            self._due.clear()
            self.n_ready = 0
        return keep

    # -- intake ------------------------------------------------------------------------------

    def _new_asset(self, asset: str, hold: int | None = None) -> AssetState:
        w = self.cfg.windows
        s = self.spec
        return AssetState(
            AssetWindow(s.n_channels, s.window, max_gap=w.max_gap, lateness=w.allowed_lateness,
                        stride=w.stride, agg=w.aggregation, precise=not s.normalisation.float32_exact,
                        hold=self._hold if hold is None else hold),
            self.scorer.tracker(), LevelMachine(self.thresholds), self._baseline(asset))

    def _baseline(self, asset: str, old: Baseline | BaselineLearner | None = None
                  ) -> Baseline | BaselineLearner | None:
        """The asset's baseline under the serving model: the file's, or one it learns (a learnt one
        is kept across a model swap when the new model baselines the same way)."""
        policy = self.spec.baseline
        if policy is None:
            return None
        profile = self.spec.profiles.get(asset)
        if profile is not None and profile.baseline is not None:
            return profile.baseline
        if isinstance(old, BaselineLearner) and old.policy == policy:
            return old
        return BaselineLearner(policy)

    @property
    def n_learning(self) -> int:
        """Assets still learning their baseline (not scored yet)."""
        return sum(1 for st in self.assets.values()
                   if isinstance(st.baseline, BaselineLearner) and not st.baseline.ready)

    def ingest(self, sub_index: int, topic: str, payload: bytes, arrival_wall: float,
               arrival_mono: float) -> tuple[int, list[Reason]]:
        """Decode one message and write its readings; returns (accepted, rejection reasons)."""
        rejects: list[Reason] = []
        if len(payload) > self.cfg.windows.max_payload_bytes:
            return 0, [Reason.PAYLOAD_SIZE]
        host = self.hosts.get(sub_index)
        if host is not None:
            return self._sparkplug(host.receive(topic, payload, arrival_wall), arrival_wall, arrival_mono,
                                   self._holds[sub_index])
        decoder = self.decoders[sub_index]
        bad: list[Cell] | None = None if decoder.sub.quality_field is None else []
        got = decoder.decode_cells(topic, payload, arrival_wall, rejects, bad)
        if got is None:
            return 0, rejects
        asset, cells = got
        accepted = 0
        hold = self._holds[sub_index]
        for ts, chans, values in cells:
            accepted += self._write_cell(asset, ts, chans, values, arrival_wall, arrival_mono, rejects, hold)
        if bad:
            for ts, chans, _ in bad:
                for ch in chans:
                    self._mark_bad(Reading(asset, ch, ts, math.nan), arrival_wall, hold)
        if asset not in self.assets and self.serves(asset):
            # Served but not held (over [windows] max_assets, or every reading refused): its
            # topic leaves the decoder's cache, so a flood of new asset ids costs no memory there.
            self.decoders[sub_index].forget(topic)
        return accepted, rejects

    def _mark_bad(self, r: Reading, wall: float, hold: int) -> None:
        """A reading of bad quality: its channel stops holding, and the asset reports it degraded.

        Under the same time rules as a reading (one that would be refused changes nothing).
        """
        if r.ts > wall + self._skew or r.ts < self._floor:
            return
        st = self.assets.get(r.asset)
        if st is None:
            if not self._room_for(r.asset):
                return
            st = self.assets[r.asset] = self._new_asset(r.asset, hold)
        if r.ts <= st.floor_ts:
            return
        w = st.window
        cell = cell_of(r.ts, self.spec.period_s)
        if cell < w.newest - w.lateness:
            return
        newly = not w.bad_since or r.channel not in w.bad_since
        w.mark_bad(r.channel, cell, r.ts)
        self.dirty.add(r.asset)
        if newly:
            # Not scored while a channel is bad: say so now, not only when its next window closes
            # (a source whose every tag went bad sends nothing that would close one). Windows that
            # closed before the bad reading are still whole: they are scored as they come.
            end, newest_ts = (w.newest, w.newest_ts(w.newest)) if w.newest >= 0 else (cell, r.ts)
            self.notices.append(self._risk_doc(r.asset, st, end, newest_ts, {}, stale=True))

    def _write_cell(self, asset: str, ts: float, chans: list[int], values: list[float], wall: float,
                    mono: float, rejects: list[Reason], hold: int | None = None) -> int:
        """Write the readings of one message that share an event time; returns how many were taken.

        The checks of `_write`, made once per message instead of once per reading, with the
        same outcome and the same reasons (one per rejected reading).
        """
        if ts > wall + self._skew:
            rejects.extend([Reason.FUTURE] * len(chans))
            return 0
        if ts < self._floor:
            rejects.extend([Reason.TOO_OLD] * len(chans))
            return 0
        st = self.assets.get(asset)
        if st is None:
            if not self.serves(asset):
                rejects.extend([Reason.NOT_MINE] * len(chans))
                return 0
            if len(self.assets) >= self._max_assets:
                rejects.extend([Reason.ASSET_LIMIT] * len(chans))
                return 0
            st = self.assets[asset] = self._new_asset(asset, hold)
        elif hold is not None and st.window.hold != hold:
            st.window.set_hold(hold)  # restored from a checkpoint, or its subscription's hold changed
        if ts <= st.floor_ts:
            rejects.extend([Reason.LATE] * len(chans))
            return 0
        if ts != self._cell_ts:  # readings of one instant share a cell: compute it once
            self._cell_ts, self._cell = ts, cell_of(ts, self.spec.period_s)
        cell = self._cell
        w = st.window
        before = len(w.ready)
        outcomes: list[Update] = []
        rec = self.recorder
        skipped: list[int] | None = None if rec is None else []
        accepted = w.update_cell(cell, ts, chans, values, outcomes, skipped)
        if accepted and rec is not None:
            if skipped:  # duplicates among them: record only the readings the window took
                chans = [c for i, c in enumerate(chans) if i not in skipped]
                values = [v for i, v in enumerate(values) if i not in skipped]
            rec.add(asset, ts, chans, values)
        if outcomes:
            rejects.extend(Reason.LATE if o is Update.TOO_LATE else Reason.DUPLICATE for o in outcomes)
        if accepted:
            st.arrival = mono
            self.dirty.add(asset)
            if w.bad_since:  # a channel of bad quality: a newer good reading ends it
                w.mark_good(chans, ts)
        if len(w.ready) > before:
            self.n_ready += len(w.ready) - before
            self._due[asset] = None
        return accepted

    def tick(self, arrival_wall: float, arrival_mono: float) -> tuple[int, list[Reason]]:
        """Let Sparkplug reorder timeouts run out; held messages released count as ingested."""
        accepted, rejects = 0, []
        for i, host in self.hosts.items():
            n, why = self._sparkplug(host.tick(), arrival_wall, arrival_mono, self._holds[i])
            accepted += n
            rejects += why
        return accepted, rejects

    def _sparkplug(self, out: Output, wall: float, mono: float, hold: int) -> tuple[int, list[Reason]]:
        rejects = list(out.rejects)
        accepted = 0
        for b in out.births:
            self._birth(b)
        for readings, historical in ((out.readings, False), (out.historical, True)):
            for r in readings:
                reason = self._write(r, wall, mono, historical, hold)
                if reason is None:
                    accepted += 1
                    if self.recorder is not None:
                        self.recorder.add(r.asset, r.ts, [r.channel], [r.value])
                else:
                    rejects.append(reason)
        for r in out.bad:
            self._mark_bad(r, wall, hold)
        self.commands += out.commands
        self.notices += self.mark_stale(out.stale)
        return accepted, rejects

    def _birth(self, b: Birth) -> None:
        """A Sparkplug birth redefines an asset: channels it no longer lists stop holding."""
        st = self.assets.get(b.asset)
        if st is None:
            return
        n = self.spec.n_channels
        dropped = range(n) if b.listed is None else [c for c in range(n) if c not in b.listed]
        if dropped:
            st.window.cut(cell_of(b.ts, self.spec.period_s), dropped)
            self.dirty.add(b.asset)

    def mark_stale(self, assets: list[str]) -> list[RiskOut]:
        """Assets whose source said it died (Sparkplug NDEATH/DDEATH): stale until data resumes."""
        out = []
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                st.window.cut(st.window.newest + 1)  # dead: nothing it said holds any longer
                self.dirty.add(asset)
            if st is not None and not st.stale:
                st.stale = True
                st.dead_until = st.window.newest
                self.dirty.add(asset)
                newest = st.window.newest
                out.append(self._risk_doc(asset, st, newest, st.window.newest_ts(newest), {}))
        return out

    def take_sparkplug(self) -> tuple[list[Command], BatchResult]:
        """What the Sparkplug hosts asked for since the last call: commands, and stale notices
        (deaths, and channels of any subscription turning bad)."""
        commands, self.commands = self.commands, []
        notices, self.notices = self.notices, []
        return commands, BatchResult(risks=notices)

    def _write(self, r: Reading, wall: float, mono: float, historical: bool = False,
               hold: int | None = None) -> Reason | None:
        if r.ts > wall + self.cfg.windows.max_future_skew_s:
            return Reason.FUTURE
        if r.ts < self._floor:
            return Reason.TOO_OLD
        st = self.assets.get(r.asset)
        if st is None:
            if not self.serves(r.asset):
                return Reason.NOT_MINE
            if len(self.assets) >= self.cfg.windows.max_assets:
                return Reason.ASSET_LIMIT
            st = self.assets[r.asset] = self._new_asset(r.asset, hold)
        elif hold is not None and st.window.hold != hold:
            st.window.set_hold(hold)
        if r.ts <= st.floor_ts:
            return Reason.LATE
        w = st.window
        before = len(w.ready)
        res = w.update(cell_of(r.ts, self.spec.period_s), r.channel, r.ts, r.value)
        if res is Update.TOO_LATE:
            return Reason.LATE
        if res is Update.DUPLICATE:
            return Reason.DUPLICATE
        st.arrival = mono
        self.dirty.add(r.asset)
        if w.bad_since:
            w.mark_good((r.channel,), r.ts)
        if historical and len(w.ready) > before:
            st.historical.update(c.end for c in w.ready[before:])
        if len(w.ready) > before:
            self.n_ready += len(w.ready) - before
            self._due[r.asset] = None
        return None

    # -- checkpoints ---------------------------------------------------------------------------

    def contract(self) -> str:
        """What a checkpoint's windows depend on: restoring under another contract is refused."""
        s, w = self.spec, self.cfg.windows
        return json.dumps([list(s.channels), s.period_s, s.window, w.max_gap, w.allowed_lateness,
                           w.stride, w.aggregation])

    def checkpoint_rows(self, assets: Iterable[str] | None = None) -> dict[str, bytes]:
        """Serialised state of `assets`; by default of every asset changed since the last call
        (which then no longer count as changed)."""
        if assets is None:
            assets, self.dirty = self.dirty, set()
        rows = {}
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                learner = st.baseline if isinstance(st.baseline, BaselineLearner) else None
                rows[asset] = dump_asset(st.window, st.level, st.surprise, st.stale, st.risk, learner)
        return rows

    def restore(self, rows: dict[str, bytes]) -> int:
        """Resume assets from checkpoint rows; returns how many were restored."""
        for asset, blob in rows.items():
            if len(self.assets) >= self.cfg.windows.max_assets:
                break
            try:
                if not valid_name(asset):
                    raise ValueError("invalid asset name")
                st = self._new_asset(asset)
                learner = st.baseline if isinstance(st.baseline, BaselineLearner) else None
                st.stale, st.risk = load_asset(blob, st.window, st.level, st.surprise, learner)
            except (ValueError, KeyError, TypeError) as exc:
                if self.log is not None:
                    self.log.warning("checkpoint_row_skipped", asset=asset[:100], error=str(exc))
                continue
            self.assets[asset] = st
        return len(self.assets)

    def serves(self, asset: str) -> bool:
        """Whether this agent serves `asset` ([assets] allow and partition)."""
        patterns = self.cfg.assets.allow
        member = self.cfg.assets.member
        if not patterns and member is None:
            return True
        hit = self._allowed.get(asset)
        if hit is None:
            hit = (not patterns or any(fnmatch.fnmatchcase(asset, p) for p in patterns)) and (
                member is None or zlib.crc32(asset.encode()) % member[1] == member[0])
            if len(self._allowed) >= 4 * self.cfg.windows.max_assets:  # never grows without end
                self._allowed.clear()
            self._allowed[asset] = hit
        return hit

    def sweep_stale(self) -> list[RiskOut]:
        """Mark assets stale whose readings stopped while the plant's event time moved on.

        Event time, not wall time: an asset is stale once the newest cell seen from any asset
        is more than `max_gap` cells (or its hold, if longer) past its own newest cell.
        """
        if not self.assets:
            return []
        watermark = max(st.window.newest for st in self.assets.values())
        out = []
        for asset, st in self.assets.items():
            if not st.stale and st.window.newest < watermark - st.window.reach - 1:
                st.stale = True
                newest = st.window.newest
                out.append(self._risk_doc(asset, st, newest, st.window.newest_ts(newest), {}))
        return out

    @property
    def n_stale(self) -> int:
        return sum(1 for st in self.assets.values() if st.stale)

    # -- scoring -----------------------------------------------------------------------------

    def run_batch(self, max_batch: int) -> BatchResult:
        """Score up to `max_batch` due windows and decide levels."""
        out = BatchResult()
        names: list[str] = []
        ends: list[int] = []
        stamps: list[float] = []
        xs: list[np.ndarray] = []
        history: list[bool] = []
        # Each scored window's `stale` as it was when the window was taken, and the stale notices
        # with the number of scored windows before them: published in the windows' order, so a
        # batch where an asset turns stale ends with its notice, not with an earlier window.
        stale: list[bool] = []
        notices: list[tuple[int, RiskOut]] = []
        baselines: list[Baseline | None] = []
        while self._due and len(names) < max_batch:
            asset = next(iter(self._due))
            del self._due[asset]
            st = self.assets[asset]
            ready = st.window.ready
            take, rest = ready[: max_batch - len(names)], ready[max_batch - len(names) :]
            st.window.ready = rest
            if rest:  # more than fits: the rest waits for the next batch, in order
                self._due[asset] = None
            for closed in take:
                self.n_ready -= 1
                historical = closed.end in st.historical
                st.historical.discard(closed.end)
                if closed.window is None:
                    if not st.stale and not historical:
                        st.stale = True
                        notice = self._risk_doc(asset, st, closed.end, closed.newest_ts, {})
                        notices.append((len(names), notice))
                    continue
                baseline = st.baseline
                if isinstance(baseline, BaselineLearner):
                    if not baseline.ready:
                        self.dirty.add(asset)
                        if self.shadow is not None:  # it learns from the same cells
                            self.shadow.learn(asset, closed.end, closed.window)
                        if not baseline.update(closed.end, closed.window):
                            continue  # still learning this asset's normal: nothing to score yet
                    baseline = baseline.baseline
                if not historical and closed.end > st.dead_until:
                    st.stale = False
                names.append(asset)
                stale.append(st.stale)
                ends.append(closed.end)
                stamps.append(closed.newest_ts)
                xs.append(closed.window)
                history.append(historical)
                baselines.append(baseline)
        self.metrics.assets.set(len(self.assets))
        if not names:
            out.risks += [n for _, n in notices]
            return out
        s = self.spec
        raw = np.stack(xs).astype(np.float64, copy=False)  # windows come in the ring's dtype
        x = self.scorer.normalise(raw, baselines)
        t0 = time.perf_counter()
        outputs = self.runtime.infer(x)
        self.metrics.inference_duration.observe(time.perf_counter() - t0)
        # Drift watches what the model reads: the newest cell of each window against the asset's baseline.
        out.inputs = (raw[:, -1, :] if s.baseline is None else
                      (raw[:, -1, :] - np.asarray([b.center for b in baselines if b is not None]))
                      / np.asarray([b.scale for b in baselines if b is not None]))
        out.input_ts = np.asarray([self._event_time(e, t) for t, e in zip(stamps, ends, strict=True)])
        out.input_assets = names
        if self.shadow is not None:
            out.shadow = self.shadow.score(names, ends, list(out.input_ts), raw, [not h for h in history])
        self.metrics.inference_batch_size.observe(len(names))
        self.metrics.windows_inferred.inc(len(names))
        states = [self.assets[a] for a in names]
        scored = self.scorer.score(names, outputs, x, [st.surprise for st in states], ends)
        pending = iter(notices)
        due = next(pending, None)
        for i, asset in enumerate(names):
            while due is not None and due[0] <= i:
                out.risks.append(due[1])
                due = next(pending, None)
            st = states[i]
            sc = scored[i]
            risk = sc.risk
            if risk != risk:  # NaN: a model fault, never a decision
                self._bad_output.warning("model_output_not_finite", key="nan", asset=asset)
                continue
            if history[i]:
                continue  # history in event time: the surprise tracker has seen it; no decision
            st.risk = risk
            # Remaining useful life in seconds of event time (the head predicts grid cells).
            rul = None if sc.rul_cells is None else round(sc.rul_cells * s.period_s, 1)
            # Decide first, so the retained risk message carries the level this window set.
            tr = st.level.update(risk, ends[i])
            out.risks.append(self._risk_doc(asset, st, ends[i], stamps[i], sc.signals(), rul, stale[i]))
            if tr is not None:
                out.alerts.append(self._alert(asset, tr.cell, stamps[i], tr.level, tr.previous, risk,
                                              sc.per_channel, rul))
        if due is not None:
            out.risks.append(due[1])
        out.risks += [n for _, n in pending]
        return out

    def _event_time(self, end: int, newest_ts: float) -> float:
        """Event time of the newest reading in the scored window (its cell's start if none)."""
        return newest_ts if newest_ts == newest_ts else end * self.spec.period_s

    def _event_ts(self, end: int, newest_ts: float) -> str:
        return rfc3339_ms(self._event_time(end, newest_ts))

    def _risk_doc(self, asset: str, st: AssetState, end: int, newest_ts: float,
                  signals: dict[str, float | None], rul: float | None = None,
                  stale: bool | None = None) -> RiskOut:
        doc = {"asset": asset, "ts": self._event_ts(end, newest_ts), "risk": round(st.risk, 6),
               "level": st.level.level.label, "stale": st.stale if stale is None else stale,
               "signals": signals,
               "model_version": self.spec.version}
        if st.window.bad_since:  # channels whose source reports a bad quality: not scored on
            doc["degraded"] = [self.spec.channels[c] for c in st.window.degraded]
        if rul is not None:
            doc["rul"] = rul
        return RiskOut(asset, doc, st.arrival, self._event_time(end, newest_ts))

    def reset_asset(self, asset: str, ts: float) -> RiskOut | None:
        """Start an asset afresh after a repair: empty window, level ok, readings up to `ts` refused.

        Returns the risk notice to publish (None for an asset this agent does not serve).
        """
        old = self.assets.get(asset)
        if old is None and not self._room_for(asset):
            return None
        if old is not None:
            self.n_ready -= len(old.window.ready)
            self._due.pop(asset, None)
        st = self.assets[asset] = self._new_asset(asset, None if old is None else old.window.hold)
        st.floor_ts = max(ts, old.floor_ts if old is not None else -math.inf)
        if self.shadow is not None:
            self.shadow.forget(asset)
        self.dirty.add(asset)
        notice = self._risk_doc(asset, st, cell_of(ts, self.spec.period_s), ts, {})
        # The event's time is the CMMS clock's, not the readings': it must not move event time on.
        return RiskOut(notice.asset, notice.doc, notice.arrival)

    def set_floor(self, asset: str, ts: float) -> None:
        """Refuse readings of `asset` at or before `ts` (a repair restored after a restart)."""
        st = self.assets.get(asset)
        if st is None:
            if not self._room_for(asset):
                return
            st = self.assets[asset] = self._new_asset(asset)
        st.floor_ts = max(st.floor_ts, ts)

    def _room_for(self, asset: str) -> bool:
        """Whether a state for a new `asset` may be made: served here, and under the asset limit."""
        return self.serves(asset) and len(self.assets) < self._max_assets

    def _alert(self, asset: str, cell: int, newest_ts: float, level: Level, previous: Level,
               risk: float, per_channel: np.ndarray | None, rul: float | None) -> AlertOut:
        doc = {
            "asset": asset, "ts": self._event_ts(cell, newest_ts), "level": level.label,
            "previous_level": previous.label, "risk": round(risk, 6),
            "horizon_s": self.spec.horizon_s,
            "top_channels": top_channels(per_channel, self.spec.channels),
            "model_version": self.spec.version, "agent_id": self.agent_id,
            "alert_id": alert_id(self.agent_id, asset, cell, level.label, previous.label),
            "emitted_at": rfc3339_ms(self.wall()),
        }
        if rul is not None:
            doc["rul"] = rul
        return AlertOut(asset, level.label, doc, self._event_time(cell, newest_ts), previous.label)


def _host_options(sub: SubscriptionConfig, max_assets: int) -> HostOptions:
    c = sub.sparkplug
    return HostOptions(reorder_timeout_s=c.reorder_timeout_s, rebirth_interval_s=c.rebirth_interval_s,
                       send_rebirth=c.send_rebirth, asset=c.asset, max_pending=c.max_pending,
                       max_nodes=max_assets, max_devices=max_assets, hold=sub.hold_s > 0,
                       good_quality=tuple(sub.good_quality))
