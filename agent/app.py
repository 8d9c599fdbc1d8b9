"""Lifecycle: wires config, model, pipeline, MQTT, outbox and HTTP; runs until told to stop."""

from __future__ import annotations

import gc
import json
import math
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
from agent.events import parse_event, within_time_bounds
from agent.http import HealthServer
from agent.ingest import Reason
from agent.learning import RefitChild, refit_log
from agent.logs import RateLimited
from agent.metrics import Metrics
from agent.mqtt import Control, Link, health_topic
from agent.ops import Operations, Outgoing
from agent.pipeline import BatchResult, Pipeline
from agent.promotion import drop_shadow, install_guard, record_decision
from agent.runtime import Expected, Runtime, load_runtime, warm_up
from agent.shadow import ShadowScorer, load_shadow, promote
from agent.sparkplug.primary import PrimaryHost
from agent.state import Checkpoint
from agent.trial import Role, Trial, Verdict

if TYPE_CHECKING:
    from agent.recorder import Recorder

LEVELS = {"ok": 0, "warning": 1, "critical": 2}
TRIAL_KEY = "trial"  # checkpoint blob: the shadow's trial (agent.trial), JSON
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
        self.metrics = Metrics(self.registry, cfg.metrics)
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
            self.log.info("shadow_model_loaded", path=str(cfg.shadow_path),
                          version=shadow.spec.version)
        self.ops = Operations(cfg, runtime.spec, self.metrics, self.log, serves=self.pipeline.serves,
                              level_of=self._level_of)
        if shadow is not None:
            self.ops.enable_shadow(shadow.spec.horizon_s)
            self.ops.start_trial("candidate", shadow.spec.version, shadow.spec.horizon_s)
        self.control: deque[Control] = deque()
        self._promote = threading.Event()
        self._promote_requests: deque[Control] = deque()  # promote commands awaiting their reply
        self._resummarise = threading.Event()  # connected: republish every retained alarm summary
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
        # The learning loop: the shadow file (a refit's candidate, or the guard after a promotion),
        # the refit child, and a trial's verdict for the watcher thread to act on.
        self.shadow_watcher = ModelWatcher(cfg.shadow_path, cfg.model.watch_interval_s)
        self._new_shadow: Runtime | None = None
        self._drop_shadow = False
        self._guard_version: str | None = None
        self._verdict: Verdict | None = None
        self.refit: RefitChild | None = None
        self._refit_now = threading.Event()
        self._reload = False  # SIGHUP: check the model files even if they look unchanged
        self._refit_requests: deque[Control] = deque()
        every = cfg.learn.refit_every
        self._next_refit = time.monotonic() + every if every else math.inf
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
        if connected:
            self._resummarise.set()
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
        """Check the model files now (SIGHUP)."""
        self._reload = True
        self.watcher.poke.set()

    def _restore(self) -> None:
        n = self.ops.restore(self.checkpoint.load_ops())
        if n:
            self.log.info("operations_state_restored", assets=n)
        blob = self.checkpoint.load_blob(self.ops.drift_key)
        if blob is not None:
            self.log.info("drift_state_restored", assets=self.ops.restore_drift(blob))
        trial = self.checkpoint.load_blob(TRIAL_KEY)
        if trial and self.ops.trial is not None:
            try:
                saved = Trial.from_json(json.loads(trial))
            except (ValueError, KeyError, TypeError) as exc:
                self.log.warning("trial_state_skipped", error=str(exc))
            else:
                if saved.shadow_version == self.ops.trial.shadow_version:  # the same shadow: go on
                    self.ops.trial = saved
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
        trial = self.ops.trial
        try:
            self.checkpoint.save_blob(TRIAL_KEY, json.dumps(trial.to_json()).encode() if trial else b"")
        except Exception as exc:  # sqlite3 or OS errors: keep serving, say so loudly
            self.log.error("checkpoint_failed", error=str(exc), part="trial")
        self._rounds += 1
        if drift or self._rounds % DRIFT_ROUNDS == 0:
            try:
                self.checkpoint.save_blob(self.ops.drift_key, self.ops.dump_drift(), family="drift:")
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
            if self._resummarise.is_set():
                self._resummarise.clear()
                self._send(self.ops.summaries(every=True))
            # Wait for messages no longer than the oldest ready window may wait for its batch.
            due = 0.02 if first_due is None else first_due + max_wait - time.monotonic()
            self._ingest_some(max(due, 0.0))
            now = time.monotonic()
            # Only this loop pings the watchdog: a hung worker gets the process restarted.
            self._heartbeat.beat(now)
            if not self._ready_sent and all(self.readiness().values()):
                self._ready_sent = systemd.notify_ready(f"serving model {self.pipeline.spec.version}")
            if self.pipeline.hosts and now >= next_tick:  # Sparkplug reorder timeouts, 10 times a second
                accepted, rejects = self.pipeline.tick(time.time(), now)
                self.metrics.count_readings(accepted, Counter(rejects))
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
                self._take_verdict()
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
        self.metrics.count_readings(accepted, rejects)

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
            msg = self.control.popleft()
            topic = msg.topic
            if topic.startswith(f"{prefix}/events/"):
                asset = topic.removeprefix(f"{prefix}/events/")
                ev = parse_event(asset, msg.payload)
                if not isinstance(ev, str):
                    ev = within_time_bounds(ev, self.cfg.windows, time.time())
                if isinstance(ev, str):
                    self._rejects_log.warning("event_rejected", key="event", reason=ev, topic=topic[:200])
                    self._reply(msg, {"event": None, "asset": asset, "result": "rejected", "reason": ev})
                    continue
                fx = self.ops.event(ev)
                self._reply(msg, {"event": ev.event, "asset": ev.asset, "result": "ok", "reason": ""})
            else:
                sender = sender_of(msg.user)
                cmd = parse_command(prefix, agent_id, topic, msg.payload, sender)
                if isinstance(cmd, str):
                    self._rejects_log.warning("command_rejected", key="command", reason=cmd,
                                              topic=topic[:200], sender=sender)
                    self._reply(msg, {"command": None, "asset": None, "result": "rejected", "reason": cmd})
                    continue
                result, why, fx = self.ops.command(cmd)
                if result == "ignored":
                    continue  # another agent's asset: that agent answers
                self.log.info("command", command=cmd.name, asset=cmd.asset, result=result, reason=why,
                              sender=cmd.sender, args={k: v for k, v in cmd.args.items() if v is not None})
                if fx.promote:  # answered and counted once the watcher has tried (_promote_shadow)
                    self._promote_requests.append(msg)
                    self._promote.set()
                    self.watcher.poke.set()
                elif fx.refit:
                    result, why = self._request_refit(msg)
                    self.metrics.commands.labels("refit", result).inc()
                    if result != "ok":
                        self._reply(msg, {"command": "refit", "asset": None, "result": result, "reason": why})
                if not fx.promote and not fx.refit:  # counted after the log line its reader looks for
                    self.metrics.commands.labels(cmd.name, result).inc()
                    self._reply(msg, {"command": cmd.name, "asset": cmd.asset, "result": result,
                                      "reason": why})
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

    def _request_refit(self, msg: Control) -> tuple[str, str]:
        """The refit command (worker thread): the recording so far is sealed for the refit to read;
        the reply comes when the refit has ended."""
        if self.recorder is None:
            return "rejected", "recording is off ([record] enabled = false): nothing to refit from"
        if self.refit is not None or self._refit_now.is_set():
            return "noop", "a refit is running"
        self.recorder.seal()
        self._refit_requests.append(msg)
        self._refit_now.set()
        self.watcher.poke.set()
        return "ok", ""

    def _reply(self, to: Control, doc: dict[str, Any]) -> None:
        """The result of an event or command, on the MQTT 5 response topic its sender named."""
        if to.response_topic:
            self.link.reply(to, encode({**doc, "agent_id": self.cfg.resolved_agent_id}))

    def _send(self, messages: list[Outgoing]) -> None:
        for m in messages:
            if m.retain:  # state, not news: the broker keeps the latest, nothing to queue
                payload = b"" if m.doc is None else encode(m.doc)
                self.link.publish(m.topic, payload, qos=1, retain=True)
            elif m.doc is not None:
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
            self.log.info("alert_raised", asset=a.asset, alert_level=a.level,
                          previous=a.doc["previous_level"], risk=a.doc["risk"],
                          alert_id=a.doc["alert_id"])
        if self.ops.summary_due:
            self._send(self.ops.summaries())
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
        self.metrics.asset_series.update([(r.asset, r.doc["risk"], LEVELS[r.doc["level"]])
                                          for r in result.risks])
        observe = self.metrics.reading_to_risk.observe
        for r in result.risks:
            if not r.doc["stale"]:
                observe(max(now - r.arrival, 0.0))

    # -- model hot-swap ------------------------------------------------------------------------

    def _watch(self) -> None:
        interval = self.watcher.interval_s or 3600.0
        while not self._stop.is_set():
            self.watcher.poke.wait(interval if self.refit is None else min(interval, 1.0))
            # Only SIGHUP forces a reload; the learning loop's pokes only wake the watcher up.
            forced, self._reload = self._reload, False
            self.watcher.poke.clear()
            if self._stop.is_set():
                if self.refit is not None:
                    self.refit.stop()  # what it wrote is temporary until renamed: nothing half-done stays
                return
            try:
                self._watch_once(forced)
            except Exception:  # a bug here must not end hot-swaps and refits for good: say it, go on
                self.log.exception("model_watch_failed")

    def _watch_once(self, forced: bool) -> None:
        if self._promote.is_set():
            self._promote.clear()
            self._promote_shadow("operator")
        verdict, self._verdict = self._verdict, None
        if verdict is not None:
            self._act_on(verdict)
        if self.watcher.changed() or forced:
            self._check_new_model()
        if self.refit is None and (self.shadow_watcher.changed() or forced):
            self._check_new_shadow()  # while the agent's refit runs, its end says when to look
        self._step_refit()

    def _promote_shadow(self, reason: str) -> None:
        """The shadow file replaces the live one, then the hot-swap takes it; the model it replaced
        becomes the shadow (the guard), so that a promotion that does worse is rolled back."""
        requests = [self._promote_requests.popleft() for _ in range(len(self._promote_requests))]
        previous = self.pipeline.spec.version
        try:
            rt = promote(self.cfg)
        except (ModelError, OSError) as exc:
            if reason == "operator":
                self.metrics.commands.labels("promote", "rejected").inc()
            self.log.error("promote_failed", reason=str(exc), by=reason)
            for r in requests:
                self._reply(r, {"command": "promote", "asset": None, "result": "rejected",
                                "reason": str(exc)})
            return
        if reason == "operator":
            self.metrics.commands.labels("promote", "ok").inc()
        self.metrics.promotions.labels(reason).inc()
        guarded = install_guard(self.cfg)
        if guarded:
            self._guard_version = previous
        record_decision(self.cfg, "promotion", reason=reason, version=rt.spec.version, previous=previous,
                        guard=guarded)
        self.log.info("shadow_promoted", version=rt.spec.version, previous=previous, by=reason,
                      path=str(self.cfg.model.path))
        for r in requests:
            self._reply(r, {"command": "promote", "asset": None, "result": "ok", "reason": "",
                            "version": rt.spec.version})

    # -- the learning loop: trials, refits ----------------------------------------------------------

    def _take_verdict(self) -> None:
        """A finished trial (worker thread): the watcher thread acts on it with the model files."""
        v = self.ops.verdict
        if v is None or self._verdict is not None:
            return
        trial = self.ops.trial
        self.ops.end_trial()
        self.metrics.trial_seconds.set(0)
        if v.action == "promote" and not self.cfg.learn.auto_promote:
            record_decision(self.cfg, "trial", result="ready", reason=v.reason,
                            shadow=trial.shadow_version if trial else None)
            self.log.info("shadow_ready_for_promotion", reason=v.reason)
            return
        self._verdict = v
        self.watcher.poke.set()

    def _act_on(self, v: Verdict) -> None:
        """Promote, drop, roll back or keep, as the trial's verdict says (watcher thread)."""
        sh = self.pipeline.shadow
        version = sh.spec.version if sh is not None else ""
        tallies = {"live": vars(v.live), "shadow": vars(v.shadow)}
        if v.action == "promote":
            record_decision(self.cfg, "trial", result="promote", reason=v.reason, shadow=version,
                            tallies=tallies)
            self._promote_shadow("trial")
            return
        if v.action == "rollback":
            bad = self.pipeline.spec.version
            try:
                rt = promote(self.cfg)
            except (ModelError, OSError) as exc:
                self.log.error("rollback_failed", reason=str(exc))
                return
            self.metrics.rollbacks.inc()
            record_decision(self.cfg, "rollback", reason=v.reason, version=rt.spec.version, replaced=bad,
                            tallies=tallies)
            self.log.warning("model_rolled_back", version=rt.spec.version, replaced=bad, reason=v.reason)
        elif v.action == "drop":
            self.metrics.candidates.labels("dropped").inc()
            record_decision(self.cfg, "trial", result="dropped", reason=v.reason, shadow=version,
                            tallies=tallies)
            self.log.warning("shadow_dropped", version=version, reason=v.reason)
        else:
            record_decision(self.cfg, "trial", result="kept", reason=v.reason, guard=version, tallies=tallies)
            self.log.info("promotion_confirmed", version=self.pipeline.spec.version, reason=v.reason)
        moved = drop_shadow(self.cfg, version)
        self.shadow_watcher.changed()  # the file is gone: nothing new to load
        with self._swap_lock:
            self._drop_shadow = True
        if moved is not None:
            self.log.info("shadow_file_moved", to=str(moved))

    def _check_new_shadow(self) -> None:
        """A new shadow file (a refit's candidate, or the guard): checked, then swapped in."""
        if not self.cfg.shadow_path.exists():
            return
        try:
            rt = load_shadow(self.cfg, self.pipeline.runtime)
        except ModelError as exc:
            self.log.error("shadow_model_rejected", reason=str(exc), path=str(self.cfg.shadow_path))
            return
        sh = self.pipeline.shadow
        if rt is None or (sh is not None and sh.spec.version == rt.spec.version):
            return
        warm_up(rt, self.cfg.inference.max_batch)
        with self._swap_lock:
            self._new_shadow = rt

    def _step_refit(self) -> None:
        """Start a refit when one is due; when it ends, count and say what became of it."""
        if self.refit is not None:
            got = self.refit.result()
            if got is None:
                return
            self.refit = None
            self.metrics.refit_running.set(0)
            if got.result == "busy":  # a refit run by a timer holds the state dir: its shadow will come
                self.log.info("refit_busy", reason=got.reason)
                return
            result = got.result if got.result in ("accepted", "refused", "failed") else "failed"
            self.metrics.candidates.labels(result).inc()
            (self.log.info if result == "accepted" else self.log.warning)(
                "refit_finished", result=result, reason=got.reason, wall_s=round(got.wall_s, 1),
                log=str(refit_log(self.cfg)))
            for r in [self._refit_requests.popleft() for _ in range(len(self._refit_requests))]:
                self._reply(r, {"command": "refit", "asset": None, "result": "ok" if result == "accepted"
                                else "rejected", "reason": f"candidate {result}: {got.reason}"})
            if result == "accepted":
                self._check_new_shadow()
            return
        if not (self._refit_now.is_set() or time.monotonic() >= self._next_refit):
            return
        self._refit_now.clear()
        every = self.cfg.learn.refit_every
        self._next_refit = time.monotonic() + every if every else math.inf
        if self.recorder is not None:
            self.recorder.settle(5.0)  # the worker sealed its buffer: the refit reads it all
        self.refit = RefitChild(self.cfg, first=False)
        try:
            self.refit.start()
        except OSError as exc:
            self.refit = None
            self.metrics.candidates.labels("failed").inc()
            self.log.error("refit_failed", reason=str(exc))
            return
        self.metrics.refit_running.set(1)
        self.log.info("refit_started", command=" ".join(self.refit.cmd))

    def _check_new_model(self) -> None:
        current = self.pipeline.spec
        try:
            rt = load_runtime(self.cfg.model, Expected(channels=current.channels,
                                                       period_s=current.period_s))
        except ModelError as exc:
            self.metrics.model_reloads.labels("failure").inc()
            self.log.error("model_rejected", reason=str(exc), serving=current.version)
            return
        warm_up(rt, self.cfg.inference.max_batch)
        with self._swap_lock:
            self._new_model = rt

    def _maybe_swap(self) -> None:
        with self._swap_lock:
            rt, self._new_model = self._new_model, None
            sh, self._new_shadow = self._new_shadow, None
            drop, self._drop_shadow = self._drop_shadow, False
        if rt is not None:
            self._swap_live(rt)
        if drop and self.pipeline.shadow is not None:
            self.pipeline.shadow = None
            self.metrics.shadow_info.clear()
            self.ops.end_trial()
        if sh is not None:
            self._swap_shadow(sh)

    def _swap_shadow(self, rt: Runtime) -> None:
        """A new shadow model, its trial beginning: the guard after a promotion, else a candidate."""
        self.pipeline.shadow = ShadowScorer(rt, self.cfg.windows.max_assets, self.cfg.model.sensitivity)
        self.metrics.shadow_info.clear()
        self.metrics.shadow_info.labels(rt.spec.version).set(1)
        role: Role = "guard" if rt.spec.version == self._guard_version else "candidate"
        self.ops.start_trial(role, rt.spec.version, rt.spec.horizon_s)
        self.log.info("shadow_model_loaded", version=rt.spec.version, role=role, trial_s=self.cfg.learn.trial)

    def _swap_live(self, rt: Runtime) -> None:
        old = self.pipeline.spec.version
        kept = self.pipeline.swap_model(rt)
        if not kept:  # every asset starts afresh: none has a risk until it is scored again
            self.metrics.asset_series.retain(self.pipeline.assets)
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
