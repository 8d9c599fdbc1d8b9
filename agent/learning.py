"""Learning mode: an agent without a model records its machines and fits its first model.

`Learner` runs instead of the serving agent while `[model] path` does not exist: it subscribes
as the agent would, records every reading it can decode into the recording (all channels it
sees, a bounded number), appends CMMS events to `events.csv`, and publishes `"mode": "learning"`
with how much history it has on the health topic and `/readyz`. Once `[learn] min_history` of
event time is recorded it runs the first fit in a child process (`RefitChild`: low priority,
bounded threads, never on the ingest path) and, once the model file is there, hands over to
the serving agent in the same process. A restart finds the recording and goes on from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from agent import systemd
from agent.alerts import encode, rfc3339_ms
from agent.commands import parse_command, sender_of
from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.events import EventLog, parse_event, within_time_bounds
from agent.history import recorded_history
from agent.http import HealthServer
from agent.ingest import Decoder, Reason
from agent.logs import RateLimited
from agent.metrics import Metrics
from agent.mqtt import Control, Link, health_topic

MAX_CHANNELS = 256   # channels a learning agent records: a typo in a topic must not grow it for ever
RETRY_S = 3600.0     # after a failed first fit, try again this much later (wall time)
EXIT_BUSY = 5        # `vigil-train refit`: another refit holds the state directory


class OpenDecoder(Decoder):
    """A decoder whose channels are whatever arrives (up to MAX_CHANNELS), in order of arrival."""

    def __init__(self, sub: Any, channels: list[str]) -> None:
        super().__init__(sub, ())
        self.channels = channels  # shared by every subscription's decoder: one index space

    def _channel(self, source: str) -> tuple[int, float, float] | None:
        target = self.sub.channel_map.get(source, source)
        idx = self._index.get(target)
        if idx is None:
            if target in self.channels:
                idx = self.channels.index(target)
            elif len(self.channels) < MAX_CHANNELS:
                idx = len(self.channels)
                self.channels.append(target)
            else:
                return None
            self._index[target] = idx
        return idx, self.sub.scale.get(target, 1.0), self.sub.offset.get(target, 0.0)


def refit_log(cfg: AgentConfig) -> Path:
    """Where the agent's fits write their output (the last one's)."""
    return cfg.models_dir / "refit.log"


def fit_command(cfg: AgentConfig, *, first: bool) -> list[str]:
    """The `vigil-train refit` command line the agent runs (first fit, or a candidate)."""
    cmd = [sys.executable, "-m", "training", "refit", "--state", str(cfg.state.dir),
           "--threads", str(cfg.learn.threads), "--sensitivity", f"{cfg.model.sensitivity:g}"]
    if first:
        cmd += ["--first", "--out", str(cfg.model.path)]
    else:
        cmd += ["--live", str(cfg.model.path), "--out", str(cfg.shadow_path)]
    for key, value in cfg.learn.fit_options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is not False:
            cmd += [flag, str(value)]
    return cmd


@dataclass
class RefitResult:
    """How a refit ended: `result` accepted, refused or failed, and the child's one-line reason."""

    result: str
    reason: str
    doc: dict[str, Any]
    wall_s: float


class RefitChild:
    """One `vigil-train refit` in a child process at low priority, its output in models/refit.log."""

    def __init__(self, cfg: AgentConfig, *, first: bool) -> None:
        self.cfg = cfg
        self.cmd = fit_command(cfg, first=first)
        self.log_path = refit_log(cfg)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.cfg.models_dir.mkdir(parents=True, exist_ok=True)
        threads = str(self.cfg.learn.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # nice(1) and ionice(1), not a preexec hook: the agent has threads, and a fork runs no
        # Python safely then. Idle I/O class: the fit's reads and writes wait for the agent's.
        cmd = ["nice", "-n", str(self.cfg.learn.nice), *self.cmd] if self.cfg.learn.nice else self.cmd
        if self.cfg.learn.nice and shutil.which("ionice"):
            cmd = ["ionice", "-c", "3", *cmd]
        with self.log_path.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def result(self) -> RefitResult | None:
        """None while it runs; then what it said (its last JSON line) and how it ended."""
        if self.proc is None or self.proc.poll() is None:
            return None
        rc = self.proc.returncode
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        doc: dict[str, Any] = {}
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                    break
                except ValueError:
                    continue
        if rc == EXIT_BUSY:
            return RefitResult("busy", "another refit holds the state directory", doc,
                               time.monotonic() - self.started)
        result = str(doc.get("result") or ("accepted" if rc == 0 else "failed"))
        reason = str(doc.get("reason") or (text.strip().splitlines() or [f"exit code {rc}"])[-1])[:300]
        return RefitResult(result, reason, doc, time.monotonic() - self.started)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop a running refit (the agent stops); what it wrote is temporary until renamed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


class Learner:
    """The agent while it has no model: record, report, fit the first model (see the module doc)."""

    def __init__(self, cfg: AgentConfig, log: Any = None) -> None:
        if any(s.codec == "sparkplug" for s in cfg.subscriptions):
            raise ConfigError("learning mode (no model file yet) reads json and json-multi subscriptions; "
                              "fit a first model from a Sparkplug history with vigil-train fit")
        self.cfg = cfg
        self.log = log or structlog.get_logger("vigil.learning")
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.history_gauge = Gauge("vigil_learning_history_seconds",
                                   "Event time recorded while learning (the first fit needs [learn] "
                                   "min_history).", registry=self.registry)
        self._rejects_log = RateLimited(self.log)
        self.channels: list[str] = []
        self.decoders = [OpenDecoder(s, self.channels) for s in cfg.subscriptions]
        from agent.recorder import Recorder

        # The channel names grow as they arrive (append-only: an index never changes meaning), and
        # the recorder names a buffer's channels when it writes it: no buffer sealed per new name.
        self.recorder = Recorder(cfg.record, cfg.record_dir, self.channels, self.metrics, self.log)
        self.events = EventLog(cfg.state.dir / "events.csv")
        # Each asset's first and last event time recorded, from what is on disk and then live.
        on_disk = recorded_history(cfg.record_dir)
        self.spans = {a: [h.first_ts, h.last_ts] for a, h in on_disk.assets.items()}
        self.rows = on_disk.readings
        self.last = max((h.last_ts for h in on_disk.assets.values()), default=-math.inf)
        self.queue: deque[tuple[int, str, bytes, float]] = deque()
        self.control: deque[Control] = deque()
        self.link = Link(cfg, on_message=self._enqueue, on_ack=lambda mid, ok: None,
                         on_state=self._state, log=self.log, on_control=self._enqueue_control)
        host, port = cfg.http.host_port
        self.http = HealthServer(host, port, self.registry, self.readiness, self.detail)
        self._stop = threading.Event()
        self._accepting = threading.Event()
        self.fit: RefitChild | None = None
        self.fit_state = "waiting for history"
        self._next_try = 0.0
        self.model_ready = False

    # -- paho's thread ---------------------------------------------------------------------------

    def _enqueue(self, sub: int, topic: str, payload: bytes) -> bool:
        if not self._accepting.is_set():
            return False  # not acknowledged: the broker keeps it for the serving agent
        if len(self.queue) >= self.cfg.inference.queue_size:
            self.metrics.messages_dropped.inc()
            return True
        self.queue.append((sub, topic, payload, time.time()))
        return True

    def _enqueue_control(self, msg: Control) -> bool:
        if not self._accepting.is_set():
            return False
        self.control.append(msg)
        return True

    def _state(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)

    # -- what it tells -------------------------------------------------------------------------------

    @property
    def history_s(self) -> float:
        """The longest span of event time recorded for one asset."""
        return max((b - a for a, b in self.spans.values()), default=0.0)

    def readiness(self) -> dict[str, bool]:
        return {"connected": self.link.connected.is_set(), "subscribed": self.link.subscribed.is_set(),
                "recording": True}

    def detail(self) -> dict[str, Any]:
        return {"mode": "learning", "history_s": round(self.history_s, 1),
                "min_history_s": self.cfg.learn.min_history, "fit": self.fit_state}

    def health(self) -> dict[str, Any]:
        return {"agent_id": self.cfg.resolved_agent_id, **self.detail(),
                "ts": rfc3339_ms(self.last) if self.last > -math.inf else None,
                "assets": len(self.spans), "channels": list(self.channels), "readings_recorded": self.rows}

    # -- lifecycle -------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> bool:
        """Learn until the first model is there (True) or the agent is stopped (False)."""
        self.http.start()
        self.recorder.start()
        self._accepting.set()
        self.link.start()
        self.log.info("learning", min_history_s=self.cfg.learn.min_history, history_s=self.history_s,
                      recording=str(self.recorder.dir), model=str(self.cfg.model.path))
        systemd.notify_ready("learning: recording until the first model is fit")
        next_second = 0.0
        try:
            while not self._stop.is_set() and not self.model_ready:
                self._ingest()
                self._commands()
                now = time.monotonic()
                if now >= next_second:
                    next_second = now + 1.0
                    self.recorder.tick()
                    self._step_fit()
                    self.history_gauge.set(self.history_s)
                    self.link.publish(health_topic(self.cfg), encode(self.health()), qos=1, retain=True)
                if not self.queue:
                    self._stop.wait(0.01)
        finally:
            self._accepting.clear()
            if self.fit is not None and not self.model_ready:
                self.fit.stop()
            self.recorder.close(timeout=2.0)
            self.link.stop(timeout=0.5, offline=not self.model_ready)
            self.http.stop()
        return self.model_ready

    def _ingest(self) -> None:
        rejects: Counter[Reason] = Counter()
        accepted = 0
        for _ in range(5000):
            try:
                sub, topic, payload, wall = self.queue.popleft()
            except IndexError:
                break
            why: list[Reason] = []
            got = self.decoders[sub].decode_cells(topic, payload, wall, why)
            rejects.update(why)
            if got is None:
                continue
            asset, cells = got
            span = self.spans.get(asset)
            if span is None:
                if len(self.spans) >= self.cfg.windows.max_assets:
                    rejects[Reason.ASSET_LIMIT] += sum(len(c[1]) for c in cells)
                    continue
                span = self.spans[asset] = [math.inf, -math.inf]
            w = self.cfg.windows
            for ts, chans, values in cells:
                if (bound := w.out_of_bounds(ts, wall)) is not None:
                    rejects[Reason(bound)] += len(chans)
                    continue
                self.recorder.add(asset, ts, chans, values)
                span[0], span[1] = min(span[0], ts), max(span[1], ts)
                self.last = max(self.last, ts)
                accepted += len(chans)
        self.rows += accepted
        self.metrics.count_readings(accepted, rejects)
        for reason in rejects:
            if reason.is_rejection:
                self._rejects_log.warning("readings_rejected", key=reason.value, reason=reason.value)

    def _commands(self) -> None:
        """Events are recorded (they label the first fit); commands are answered: nothing to act on."""
        p = self.cfg.outputs.prefix
        while self.control:
            msg = self.control.popleft()
            if msg.topic.startswith(f"{p}/events/"):
                ev = parse_event(msg.topic.removeprefix(f"{p}/events/"), msg.payload)
                if not isinstance(ev, str):  # the same time bounds as the serving agent's
                    ev = within_time_bounds(ev, self.cfg.windows, time.time())
                if isinstance(ev, str):
                    self._rejects_log.warning("event_rejected", key="event", reason=ev, topic=msg.topic[:200])
                    continue
                self.events.append(ev)
                self.metrics.events.labels(ev.event).inc()
                continue
            cmd = parse_command(p, self.cfg.resolved_agent_id, msg.topic, msg.payload, sender_of(msg.user))
            name = cmd if isinstance(cmd, str) else cmd.name
            self.log.info("command_while_learning", command=name)
            self.link.reply(msg, encode({"command": None if isinstance(cmd, str) else cmd.name,
                                         "asset": None if isinstance(cmd, str) else cmd.asset,
                                         "result": "rejected", "reason": "learning: no model yet",
                                         "agent_id": self.cfg.resolved_agent_id}))

    def _step_fit(self) -> None:
        if self.fit is None:
            if self.history_s < self.cfg.learn.min_history or time.monotonic() < self._next_try:
                return
            self.recorder.close(timeout=5.0)  # what is buffered goes to disk for the fit...
            self.recorder = self._reopen()    # ...and recording goes on meanwhile
            self.fit = RefitChild(self.cfg, first=True)
            self.fit.start()
            self.fit_state = "running"
            self.metrics.refit_running.set(1)
            self.log.info("first_fit_started", history_s=round(self.history_s),
                          command=" ".join(self.fit.cmd))
            return
        got = self.fit.result()
        if got is None:
            return
        self.metrics.refit_running.set(0)
        self.fit = None
        if got.result in ("accepted", "first") and self.cfg.model.path.exists():
            self.model_ready = True
            self.fit_state = "done"
            self.metrics.candidates.labels("accepted").inc()
            self.log.info("first_model_fit", path=str(self.cfg.model.path), wall_s=round(got.wall_s, 1),
                          **{k: v for k, v in got.doc.items() if k in ("version", "peak_rss_mib")})
            return
        self.metrics.candidates.labels("failed").inc()
        self.fit_state = f"failed: {got.reason}"
        self._next_try = time.monotonic() + min(RETRY_S, max(self.cfg.learn.min_history / 4, 60.0))
        self.log.error("first_fit_failed", reason=got.reason, log=str(refit_log(self.cfg)))

    def _reopen(self) -> Any:
        from agent.recorder import Recorder

        rec = Recorder(self.cfg.record, self.cfg.record_dir, self.channels, self.metrics, self.log)
        rec.start()
        return rec
