"""Lifecycle: wires config, model, pipeline, MQTT, outbox and HTTP; runs until told to stop."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from agent import systemd
from agent.alerts import AlertSender, Outbox, encode, encode_fast
from agent.commands import parse_command, sender_of
from agent.config import AgentConfig
from agent.errors import ModelError
from agent.events import parse_event
from agent.http import HealthServer
from agent.ingest import Reason
from agent.logs import RateLimited
from agent.metrics import Metrics
from agent.mqtt import Control, Link, health_topic
from agent.ops import Operations, Outgoing
from agent.pipeline import BatchResult, Pipeline
from agent.runtime import Expected, Runtime, load_runtime
from agent.shadow import ShadowScorer, load_shadow, promote
from agent.sparkplug.primary import PrimaryHost
from agent.state import Checkpoint

if TYPE_CHECKING:
    from agent.recorder import Recorder

LEVELS = {"ok": 0, "warning": 1, "critical": 2}
CHECKPOINT_CHUNK = 128  # assets per checkpoint transaction (see Agent._save_some)
# The drift histograms are checkpointed every this many rounds: losing a few minutes of a
# day-long histogram in a crash costs nothing, writing them all every 10 s would.
DRIFT_ROUNDS = 30
CONTROL_QUEUE = 10_000  # events and commands waiting for the worker
HEALTH_EVERY_S = 10.0   # the retained health document: on any change of state, drift at most this often
Message = tuple[int, str, bytes, float, float]  # subscription, topic, payload, wall, monotonic


class Intake:
    """The bounded hand-over from paho's network thread to the worker: a deque, no lock.

    `queue.Queue` wakes a waiting worker on every put, and that futex and GIL hand-over costs
    about 10 us a message, a third of what paho itself spends on it (docs/performance.md).
    Here, while messages keep coming, the worker naps `nap_s` at a time and takes whatever
    gathered; only after `idle_s` without any does it sleep until the network thread wakes it.
    """

    def __init__(self, maxsize: int, nap_s: float = 0.001, idle_s: float = 0.05) -> None:
        self.items: deque[Message] = deque()
        self.maxsize = maxsize
        self.nap_s = nap_s
        self.idle_s = idle_s
        self._sleeping = False
        self._wake = threading.Event()
        self._last = time.monotonic()  # when the worker last found something

    def put(self, item: Message) -> bool:
        """From the network thread, never blocking: False when full (the item is dropped)."""
        if len(self.items) >= self.maxsize:
            return False
        self.items.append(item)
        if self._sleeping:  # set only after the worker's last look at `items`: no lost wake-up
            self._wake.set()
        return True

    def wait(self, timeout: float) -> bool:
        """From the worker: True as soon as something is there, False after `timeout` seconds."""
        now = time.monotonic()
        deadline = now + timeout
        while not self.items:
            left = deadline - now
            if left <= 0:
                return False
            if now - self._last < self.idle_s:
                time.sleep(min(self.nap_s, left))
            else:
                self._sleeping = True
                if not self.items:
                    self._wake.wait(left)
                self._sleeping = False
                self._wake.clear()
            now = time.monotonic()
        self._last = now
        return True


def freeze_long_lived() -> None:
    """Collect once, then move every live object out of the collector's reach (`gc.freeze`).

    With torch loaded a process holds ~185k objects that live as long as it does; a full
    collection walks all of them (about 180 ms on a slow gateway core, GIL held, so the network
    thread stops too). Frozen, they are never walked again, and a full collection only sees
    what serving created. Objects freed by reference count are still freed.
    """
    gc.collect()
    gc.freeze()


def intake_nap_s(max_wait_ms: float) -> float:
    """How long the worker naps between looks at the intake while messages keep coming.

    A quarter of the latency budget (`max_wait_ms`, what a window may wait for its batch), at
    most 5 ms, at least 0.5 ms: each wake-up costs both threads a switch on a shared core (at
    1 ms naps ~10% of the throughput with one reading per message; docs/performance.md), and a
    reading waits at most one nap before it is written.
    """
    return min(max(max_wait_ms / 4000.0, 0.0005), 0.005)


class ModelWatcher:
    """Notices a new model file (changed stat, or SIGHUP) and checks it off the worker thread."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self.poke = threading.Event()
        self._seen = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        now = self._stat()
        if now is None or now == self._seen:
            return False
        self._seen = now
        return True


class Agent:
    """The daemon: `run()` blocks until `stop()` (or a signal) and returns an exit code."""

    def __init__(self, cfg: AgentConfig, registry: CollectorRegistry | None = None,
                 log: Any = None) -> None:
        self.cfg = cfg
        self.log = log or structlog.get_logger("vigil.agent")
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self._rejects_log = RateLimited(self.log)
        runtime = load_runtime(cfg.model)
        self.log.info("model_loaded", path=str(cfg.model.path), version=runtime.spec.version,
                      channels=list(runtime.spec.channels), period_s=runtime.spec.period_s)
        self.pipeline = Pipeline(cfg, runtime, self.metrics, log=self.log)
        self.recorder = self._recorder(runtime.spec.channels)
        shadow = load_shadow(cfg, runtime)
        if shadow is not None:
            self.pipeline.shadow = ShadowScorer(shadow, cfg.windows.max_assets, cfg.model.sensitivity)
            self.metrics.shadow_info.labels(shadow.spec.version).set(1)
            self.log.info("shadow_model_loaded", path=str(cfg.model.shadow.path if cfg.model.shadow else ""),
                          version=shadow.spec.version)
        self.ops = Operations(cfg, runtime.spec, self.metrics, self.log, serves=self.pipeline.serves,
                              level_of=self._level_of)
        if shadow is not None:
            self.ops.enable_shadow(shadow.spec.horizon_s)
        self.control: deque[Control] = deque()
        self._promote = threading.Event()
        self._health_sent: tuple[Any, float] = (None, -1e9)
        self.checkpoint = Checkpoint(cfg.state.dir / "state.sqlite")
        self._restore()
        self.intake = Intake(cfg.inference.queue_size, nap_s=intake_nap_s(cfg.inference.max_wait_ms))
        self._saving: list[str] = []  # assets of the checkpoint round in progress
        self._rounds = 0  # checkpoint rounds begun
        self._round_ok = True
        self.outbox = Outbox(cfg.state.dir / "outbox.sqlite", cfg.state.outbox_max)
        self.link = Link(cfg, on_message=self._enqueue, on_ack=self._ack, on_state=self._state,
                         log=self.log, on_control=self._enqueue_control)
        self.sender = AlertSender(self.outbox, self.link, self.metrics, self.log,
                                  resend_per_s=cfg.state.outbox_resend_per_s)
        # Sparkplug Primary Host STATE rides its own connection: MQTT has one will per
        # connection, and this one's says the agent is offline.
        b = cfg.broker
        host_ids = sorted({s.sparkplug.host_id for s in cfg.subscriptions
                           if s.codec == "sparkplug" and s.sparkplug.host_id})
        self.primaries = [PrimaryHost(b.parsed_url, h, username=b.username, password=b.resolved_password(),
                                      tls=self.link.tls, log=self.log) for h in host_ids]
        self._primaries_started = False
        self._accepting = threading.Event()
        host, port = cfg.http.host_port
        self.http = HealthServer(host, port, self.registry, self.readiness)
        self.watcher = ModelWatcher(cfg.model.path, cfg.model.watch_interval_s)
        self._stop = threading.Event()
        self._heartbeat = systemd.Heartbeat.from_env()
        self._ready_sent = False
        self.crashed = False
        self._new_model: Runtime | None = None
        self._swap_lock = threading.Lock()

    # -- callbacks from paho's thread: hand over, never block ----------------------------------

    def _recorder(self, channels: tuple[str, ...]) -> Recorder | None:
        """`[record]`: the pipeline hands it every accepted reading (None when off)."""
        if not self.cfg.record.enabled:
            return None
        from agent.recorder import Recorder  # pyarrow (~50 MiB) only for agents that record

        rec = Recorder(self.cfg.record, self.cfg.record_dir, channels, self.metrics, self.log)
        self.pipeline.recorder = rec
        self.log.info("recording", dir=str(rec.dir), max_bytes=rec.max_bytes, file_rows=rec.file_rows,
                      rotate_s=rec.rotate_s)
        return rec

    def _enqueue(self, sub: int, topic: str, payload: bytes) -> bool:
        """Queue a message; True means it may be acknowledged to the broker.

        While stopping, nothing is queued or acknowledged: the broker keeps those messages in
        the session and delivers them after the restart. A full queue drops and counts
        (acknowledged, so the stream does not stall).
        """
        if not self._accepting.is_set():
            return False
        if not self.intake.put((sub, topic, payload, time.time(), time.monotonic())):
            self.metrics.messages_dropped.inc()
        return True

    def _enqueue_control(self, msg: Control) -> bool:
        """An event or command from paho's thread; True means it may be acknowledged."""
        if not self._accepting.is_set():
            return False
        if len(self.control) >= CONTROL_QUEUE:
            self.metrics.messages_dropped.inc()
            return True
        self.control.append(msg)
        return True

    def _level_of(self, asset: str) -> str:
        st = self.pipeline.assets.get(asset)
        return "ok" if st is None else st.level.level.label

    def _ack(self, mid: int, delivered: bool) -> None:
        self.sender.acks.append((mid, delivered))

    def _state(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        systemd.notify_status("connected" if connected else "broker disconnected, reconnecting")
        if connected and not self._primaries_started:
            # After the first subscription to the Sparkplug namespace, as §5 orders; the STATE
            # connection then keeps itself (paho reconnects it, each time with a new birth).
            self._primaries_started = True
            for p in self.primaries:
                p.start()  # connect_async: does not block paho's thread

    # -- lifecycle -----------------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        return {"connected": self.link.connected.is_set(), "subscribed": self.link.subscribed.is_set(),
                "model_loaded": self.pipeline.runtime is not None, "worker_alive": not self.crashed,
                "outbox_not_full": not self.outbox.full}

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """Check the model file now (SIGHUP)."""
        self.watcher.poke.set()

    def _restore(self) -> None:
        n = self.ops.restore(self.checkpoint.load_ops())
        if n:
            self.log.info("operations_state_restored", assets=n)
        blob = self.checkpoint.load_blob(self.ops.drift_key)
        if blob is not None:
            self.log.info("drift_state_restored", assets=self.ops.restore_drift(blob))
        self._restore_windows()
        for asset, st in self.ops.assets.items():
            if st.floor_ts is not None:
                self.pipeline.set_floor(asset, st.floor_ts)

    def _restore_windows(self) -> None:
        contract = self.pipeline.contract()
        saved = self.checkpoint.contract()
        if saved is None:
            return
        if saved != contract:
            self.log.warning("checkpoint_discarded", reason="model or window settings changed")
            self.checkpoint.clear()
            return
        n = self.pipeline.restore(self.checkpoint.load())
        self.log.info("state_restored", assets=n)

    def save_checkpoint(self) -> None:
        """Write all changed per-asset state now (at stop)."""
        self._begin_checkpoint(drift=True)
        while self._saving:
            self._save_some()

    def _save_now(self, assets: Collection[str]) -> bool:
        """Write these assets' state in one transaction; on failure they stay dirty for the next round."""
        rows = self.pipeline.checkpoint_rows(assets)
        try:
            self.checkpoint.save(self.pipeline.contract(), rows)
        except Exception as exc:  # sqlite3 or OS errors: keep serving, say so loudly
            self.log.error("checkpoint_failed", error=str(exc), assets=len(rows))
            self.pipeline.dirty.update(assets)
            return False
        return True

    def _save_ops(self) -> None:
        rows = self.ops.dump()
        if not rows:
            return
        try:
            self.checkpoint.save_ops(rows)
        except Exception as exc:  # sqlite3 or OS errors: keep serving, say so loudly
            self.log.error("checkpoint_failed", error=str(exc), assets=len(rows), part="operations")
            self.ops.dirty.update(rows)

    def _begin_checkpoint(self, drift: bool = False) -> None:
        """Start a round: every asset changed since the last round is written, a chunk at a time;
        the drift histograms (one blob for every asset) every DRIFT_ROUNDS rounds and at stop."""
        self._save_ops()
        self._rounds += 1
        if drift or self._rounds % DRIFT_ROUNDS == 0:
            try:
                self.checkpoint.save_blob(self.ops.drift_key, self.ops.dump_drift())
            except Exception as exc:  # sqlite3 or OS errors: keep serving, say so loudly
                self.log.error("checkpoint_failed", error=str(exc), part="drift")
        self._saving = list(dict.fromkeys([*self._saving, *self.pipeline.dirty]))
        self.pipeline.dirty.clear()
        self._round_ok = True

    def _save_some(self) -> None:
        """Write the next chunk of the round (worker thread, between batches).

        A chunk is CHECKPOINT_CHUNK assets in one transaction (~15 KB and ~100 us of SQLite
        each), one chunk per pass of the worker loop: a round over 10,000 assets neither holds
        150 MB of serialised state at once nor stops scoring for a second.
        """
        chunk, self._saving = self._saving[:CHECKPOINT_CHUNK], self._saving[CHECKPOINT_CHUNK:]
        if not self._save_now(chunk):
            self._round_ok = False
        if not self._saving and self._round_ok:
            self.metrics.checkpoint_time.set(time.time())

    def run(self) -> int:
        self.http.start()
        self.log.info("http_listening", address=f"{self.cfg.http.host_port[0]}:{self.http.port}")
        resumed = self.sender.resume()
        if resumed:
            self.log.info("outbox_resumed", pending=resumed)
        if self.recorder is not None:
            self.recorder.start()
        self._accepting.set()
        freeze_long_lived()
        self.link.start()
        worker = threading.Thread(target=self._work, name="vigil-worker", daemon=True)
        watcher = threading.Thread(target=self._watch, name="vigil-model-watch", daemon=True)
        worker.start()
        watcher.start()
        self._stop.wait()
        systemd.notify_stopping()
        self.log.info("agent_stopping")
        self._accepting.clear()
        worker.join(timeout=3.0)
        if self.recorder is not None:  # after the worker: what it ingested last is in the buffer
            self.recorder.close(timeout=1.0)
        self._flush_outbox(timeout=1.0)
        for p in self.primaries:
            p.stop(timeout=0.5)
        self.link.stop(timeout=0.5)
        self.http.stop()
        self.outbox.close()
        self.checkpoint.close()
        self.log.info("agent_stopped", outbox_pending=len(self.outbox))
        return 1 if self.crashed else 0

    def _flush_outbox(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sender.in_flight and self.link.connected.is_set() and time.monotonic() < deadline:
            self.sender.drain()
            time.sleep(0.01)
        self.sender.drain()

    # -- the worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._work_loop()
            self._finish()
        except Exception:
            # Input never gets here (it is rejected and counted); this is a bug. Fail loudly:
            # readiness drops and the process exits non-zero so a supervisor restarts it.
            self.log.exception("worker_crashed")
            self.crashed = True
            self._stop.set()

    def _work_loop(self) -> None:
        cfg = self.cfg.inference
        first_due: float | None = None
        next_sweep = time.monotonic() + 1.0
        next_checkpoint = time.monotonic() + self.cfg.state.checkpoint_interval_s
        max_wait = cfg.max_wait_ms / 1000.0
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.control:
                self._handle_control()
            # Wait for messages no longer than the oldest ready window may wait for its batch.
            due = 0.02 if first_due is None else first_due + max_wait - time.monotonic()
            self._ingest_some(max(due, 0.0))
            now = time.monotonic()
            # Only this loop pings the watchdog: a hung worker gets the process restarted.
            self._heartbeat.beat(now)
            if not self._ready_sent and all(self.readiness().values()):
                self._ready_sent = systemd.notify_ready(f"serving model {self.pipeline.spec.version}")
            if self.pipeline.hosts and now >= next_tick:  # Sparkplug reorder timeouts, 10 times a second
                self._count(*self.pipeline.tick(time.time(), now))
                next_tick = now + 0.1
            if self.pipeline.hosts or self.pipeline.notices:
                self._send_sparkplug()
            if self.pipeline.n_ready:
                first_due = first_due if first_due is not None else now
                if self.pipeline.n_ready >= cfg.max_batch or now - first_due >= max_wait:
                    self._score_all()
                    first_due = None
            if now >= next_sweep:
                self._publish(BatchResult(risks=self.pipeline.sweep_stale()))
                self.metrics.assets_stale.set(self.pipeline.n_stale)
                self.metrics.assets_learning.set(self.pipeline.n_learning)
                self._send(self.ops.tick())
                self._publish_health(now)
                if self.recorder is not None:
                    self.recorder.tick()
                next_sweep = now + 1.0
            if now >= next_checkpoint:
                self._score_all()
                self._begin_checkpoint()
                next_checkpoint = now + self.cfg.state.checkpoint_interval_s
            if self._saving:
                self._save_some()
            self.sender.pump()
            self.sender.drain()
            self.metrics.queue_depth.set(len(self.intake.items))
            self._maybe_swap()

    def _score_all(self) -> None:
        while self.pipeline.n_ready:
            self._publish(self.pipeline.run_batch(self.cfg.inference.max_batch))

    def _finish(self) -> None:
        """On stop: what was queued (and acknowledged) is processed, scored and checkpointed."""
        deadline = time.monotonic() + 1.5
        while self.intake.items and time.monotonic() < deadline:
            self._ingest_some(wait=0.0)
            self._score_all()
        self._score_all()
        self._handle_control()  # acknowledged to the broker: they must take effect
        self.save_checkpoint()

    def _ingest_some(self, wait: float = 0.02) -> None:
        if not self.intake.wait(wait):
            return
        take = self.intake.items.popleft
        ingest = self.pipeline.ingest
        accepted = 0
        rejects: Counter[Reason] = Counter()
        for _ in range(5000):
            try:
                sub, topic, payload, wall, mono = take()
            except IndexError:
                break
            n, why = ingest(sub, topic, payload, wall, mono)
            accepted += n
            if why:
                rejects.update(why)
                first = why[0] if why[0].is_rejection else next((r for r in why if r.is_rejection), None)
                if first is not None:
                    self._rejects_log.warning("readings_rejected", key=first.value,
                                              reason=first.value, topic=topic[:200])
            if self.pipeline.n_ready >= self.cfg.inference.max_batch:
                break
        # Metrics in batches, not per reading: the hot path stays cheap.
        self._count_by_reason(accepted, rejects)

    def _count(self, accepted: int, rejects: list[Reason]) -> None:
        self._count_by_reason(accepted, Counter(rejects))

    def _count_by_reason(self, accepted: int, reasons: Counter[Reason]) -> None:
        """Readings not written go to rejected (bad input), ignored (normal traffic the model has
        no use for) or skipped (another agent's assets)."""
        if accepted:
            self.metrics.readings_accepted.inc(accepted)
        for reason, n in reasons.items():
            if reason.is_rejection:
                self.metrics.readings_rejected.labels(reason.value).inc(n)
            elif reason.is_ignored:
                self.metrics.readings_ignored.labels(reason.value).inc(n)
            else:
                self.metrics.readings_skipped.inc(n)

    def _send_sparkplug(self) -> None:
        """Publish the hosts' rebirth requests (NCMD: QoS 0, not retained) and stale notices."""
        commands, notices = self.pipeline.take_sparkplug()
        for c in commands:
            self.link.publish(c.topic, c.payload, qos=0, retain=False)
            self.log.info("sparkplug_rebirth_requested", topic=c.topic)
        if notices.risks:
            self._publish(notices)
            dead = [r.asset for r in notices.risks if "degraded" not in r.doc]
            bad = {r.asset: r.doc["degraded"] for r in notices.risks if "degraded" in r.doc}
            if dead:
                self.log.info("sparkplug_assets_stale", assets=dead[:50])
            if bad:
                self.log.info("assets_degraded", channels=dict(list(bad.items())[:50]))

    # -- the operations loop ------------------------------------------------------------------------

    def _handle_control(self) -> None:
        """CMMS events and operator commands, in arrival order (worker thread)."""
        prefix = self.cfg.outputs.prefix
        agent_id = self.cfg.resolved_agent_id
        while self.control:
            topic, payload, props = self.control.popleft()
            if topic.startswith(f"{prefix}/events/"):
                ev = parse_event(topic.removeprefix(f"{prefix}/events/"), payload)
                if not isinstance(ev, str) and ev.ts > time.time() + self.cfg.windows.max_future_skew_s:
                    ev = "ts is in the future"  # a repair "next year" would refuse every reading till then
                if isinstance(ev, str):
                    self._rejects_log.warning("event_rejected", key="event", reason=ev, topic=topic[:200])
                    continue
                fx = self.ops.event(ev)
            else:
                sender = sender_of(props)
                cmd = parse_command(prefix, agent_id, topic, payload, sender)
                if isinstance(cmd, str):
                    self._rejects_log.warning("command_rejected", key="command", reason=cmd,
                                              topic=topic[:200], sender=sender)
                    continue
                result, why, fx = self.ops.command(cmd)
                if result == "ignored":
                    continue
                self.log.info("command", command=cmd.name, asset=cmd.asset, result=result, reason=why,
                              sender=cmd.sender, args={k: v for k, v in cmd.args.items() if v is not None})
                if not fx.promote:  # counted after the log line, which a count's reader may look for
                    self.metrics.commands.labels(cmd.name, result).inc()
                if fx.promote:
                    self._promote.set()
                    self.watcher.poke.set()
            for asset, ts in fx.resets:
                notice = self.pipeline.reset_asset(asset, ts)
                self.ops.drift.forget(asset)
                if notice is not None:
                    self._publish(BatchResult(risks=[notice]))
                self.log.info("asset_restarted", asset=asset, after=ts)
            self._send(fx.messages)
            if fx.resets:
                self._save_now({a for a, _ in fx.resets})
        self._save_ops()
        self._publish_health(time.monotonic(), force=False)

    def _send(self, messages: list[Outgoing]) -> None:
        for m in messages:
            self.sender.send(m.topic, encode(m.doc), m.level)

    def _publish_health(self, now: float, force: bool = False) -> None:
        doc = self.ops.health()
        flags = {k: v for k, v in doc.items() if k not in ("ts", "drift_psi", "alarms_in_flood_window")}
        last, when = self._health_sent
        if not force and flags == last and (now - when < HEALTH_EVERY_S or not doc["drift_psi"]):
            return
        self._health_sent = (flags, now)
        self.link.publish(health_topic(self.cfg), encode(doc), qos=1, retain=True)

    def _publish(self, result: BatchResult) -> None:
        prefix = self.cfg.outputs.prefix
        decided = self.ops.on_batch(result)
        self._send(decided.messages)
        result.alerts = decided.alerts
        for a in result.alerts:
            self.sender.send(f"{prefix}/alerts/{a.asset}", encode(a.doc), a.level)
            self.metrics.alerts.labels(a.level).inc()
            self.log.info("alert_raised", asset=a.asset, level=a.level,
                          previous=a.doc["previous_level"], risk=a.doc["risk"],
                          alert_id=a.doc["alert_id"])
        if result.alerts or decided.messages or self.ops.dirty:
            self._save_ops()
        if result.alerts:
            # A transition is checkpointed the moment it is in the outbox (outbox first: a crash
            # between the two re-sends, never loses), so a restart cannot raise it a second time.
            self._save_now({a.asset for a in result.alerts})
        if not result.risks:
            return
        # The batch's risk messages go to paho in one hand-over (Link.publish_many), after its
        # alerts, as before; each asset's in the order they were scored.
        out = self.cfg.outputs
        self.link.publish_many([(f"{prefix}/risk/{r.asset}", encode_fast(r.doc)) for r in result.risks],
                               qos=out.risk_qos, retain=out.risk_retain)
        now = time.monotonic()
        risk_gauge, level_gauge = self.metrics.asset_risk, self.metrics.asset_level
        observe = self.metrics.reading_to_risk.observe
        for r in result.risks:
            risk_gauge.labels(r.asset).set(r.doc["risk"])
            level_gauge.labels(r.asset).set(LEVELS[r.doc["level"]])
            if not r.doc["stale"]:
                observe(max(now - r.arrival, 0.0))

    # -- model hot-swap ------------------------------------------------------------------------

    def _watch(self) -> None:
        interval = self.watcher.interval_s or 3600.0
        while not self._stop.is_set():
            self.watcher.poke.wait(interval)
            forced = self.watcher.poke.is_set()
            self.watcher.poke.clear()
            if self._stop.is_set():
                return
            if self._promote.is_set():
                self._promote.clear()
                self._promote_shadow()
            if self.watcher.changed() or forced:
                self._check_new_model()

    def _promote_shadow(self) -> None:
        """The promote command: the shadow file replaces the live one, then the hot-swap takes it."""
        try:
            rt = promote(self.cfg)
        except (ModelError, OSError) as exc:
            self.metrics.commands.labels("promote", "rejected").inc()
            self.log.error("promote_failed", reason=str(exc))
            return
        self.metrics.commands.labels("promote", "ok").inc()
        self.log.info("shadow_promoted", version=rt.spec.version, path=str(self.cfg.model.path))

    def _check_new_model(self) -> None:
        current = self.pipeline.spec
        try:
            rt = load_runtime(self.cfg.model, Expected(channels=current.channels,
                                                       period_s=current.period_s))
        except ModelError as exc:
            self.metrics.model_reloads.labels("failure").inc()
            self.log.error("model_rejected", reason=str(exc), serving=current.version)
            return
        with self._swap_lock:
            self._new_model = rt

    def _maybe_swap(self) -> None:
        with self._swap_lock:
            rt, self._new_model = self._new_model, None
        if rt is None:
            return
        old = self.pipeline.spec.version
        kept = self.pipeline.swap_model(rt)
        self.ops.set_model(rt.spec)
        sh = self.pipeline.shadow
        if sh is not None and (sh.spec.channels, sh.spec.period_s, sh.spec.window) != (
                rt.spec.channels, rt.spec.period_s, rt.spec.window):
            self.pipeline.shadow = None
            self.log.warning("shadow_model_dropped", reason="it no longer reads what the live model reads")
        self.metrics.model_reloads.labels("success").inc()
        self.log.info("model_swapped", old=old, new=rt.spec.version, windows_kept=kept)
        # The old model's objects were frozen with the rest: let one collection find them
        # (a single pause, once a swap), then freeze what serves now.
        gc.unfreeze()
        freeze_long_lived()
