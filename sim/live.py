"""The plant published live to MQTT, its simulated clock running `speed` times wall time."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import ConfigError
from sim.plant import CHANNELS, FAILURE, HOUR, Event, Plant, PlantConfig
from sim.publisher import Publisher, PublisherOptions, check_topic_prefix
from sim.timestamps import json_ts

DEFAULT_FAIL_WITHIN_S = 6 * HOUR
DEFAULT_BACKLOG_S = 86400.0  # without --duration, start one simulated day in the past


@dataclass(frozen=True)
class LiveOptions:
    """What to publish and for how long; times are epoch seconds, durations wall seconds."""

    topic_prefix: str = "plant"
    speed: float = 1.0
    start_ts: float | None = None
    """First simulated timestamp; None picks one in the past (see default_start)."""
    duration_s: float | None = None
    """Wall seconds to run; None runs until stopped."""
    fail: tuple[str, ...] = ()
    """Assets forced to fail within fail_within_s simulated seconds of the start."""
    fail_within_s: float = DEFAULT_FAIL_WITHIN_S
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_topic_prefix(self.topic_prefix)
        if not self.speed > 0:
            raise ConfigError(f"speed must be positive, got {self.speed}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ConfigError(f"duration must be a positive number, got {self.duration_s}")
        if not (math.isfinite(self.fail_within_s) and self.fail_within_s > 0):
            raise ConfigError(f"fail-within must be a positive number, got {self.fail_within_s}")


@dataclass
class LiveSummary:
    """What a live run did."""

    start_ts: float
    end_ts: float | None = None
    steps: int = 0
    published: int = 0
    acked: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def all_acked(self) -> bool:
        """Whether the broker acknowledged every message."""
        return self.acked >= self.published

    @property
    def failures(self) -> list[str]:
        """Assets that failed during the run, in order."""
        return [asset for _, asset, event in self.events if event == FAILURE]


def default_start(now: float, period_s: float, speed: float, duration_s: float | None) -> float:
    """A start in the past, aligned to the period, so simulated time reaches `now` at the end.

    Event time must never run ahead of the wall clock (the agent rejects readings from the
    future), so the run starts `duration * speed` simulated seconds ago, or a day ago.
    """
    backlog = duration_s * speed if duration_s is not None and math.isfinite(speed) else DEFAULT_BACKLOG_S
    return math.floor((now - backlog) / period_s) * period_s


def publish_at(ts: float, start_ts: float, wall0: float, speed: float) -> float:
    """Wall time at which the step with event time `ts` goes out.

    On schedule, simulated time runs `speed` times wall time from `wall0`; but never before
    the wall clock reaches `ts` itself, so a run that catches up with now slows to real time.
    """
    return max(wall0 + (ts - start_ts) / speed, ts)


def run_live(
    cfg: PlantConfig,
    publisher: PublisherOptions,
    opts: LiveOptions,
    stop: threading.Event,
    on_event: Callable[[Event], None] = lambda event: None,
    clock: Callable[[], float] = time.time,
) -> LiveSummary:
    """Publish the plant until the duration is over or `stop` is set; wait for every ack.

    Steps go out at `publish_at`; each step's messages are sent as one batch, then the loop
    sleeps until the next step is due.
    """
    names = cfg.asset_names
    unknown = [a for a in opts.fail if a not in names]
    if unknown:
        raise ConfigError(
            f"--fail {unknown[0]}: no such asset (assets are {names[0]}..{names[-1]})"
        )
    start = opts.start_ts
    if start is None:
        start = default_start(clock(), cfg.period_s, opts.speed, opts.duration_s)
    plant = Plant(cfg, start)
    for asset in opts.fail:
        plant.force_failure(names.index(asset), opts.fail_within_s)
    topics = [[f"{opts.topic_prefix}/{a}/{c}" for c in CHANNELS] for a in names]
    summary = LiveSummary(start_ts=start)

    with Publisher(publisher, stop) as pub:
        wall0 = clock()
        end_wall = wall0 + opts.duration_s if opts.duration_s is not None else math.inf
        try:
            while not stop.is_set():
                ts = start + summary.steps * cfg.period_s
                due = publish_at(ts, start, wall0, opts.speed)
                if due >= end_wall or clock() >= end_wall:
                    break
                if stop.wait(max(0.0, due - clock())):
                    break
                step = plant.step()
                summary.steps += 1
                summary.end_ts = step.ts
                for event in step.events:
                    summary.events.append(event)
                    on_event(event)
                if not _publish_step(pub, topics, step.ts, step.values.tolist(), step.up.tolist()):
                    break
        finally:
            pub.drain(opts.drain_timeout_s)
            summary.published, summary.acked = pub.published, pub.acked
    return summary


def _publish_step(
    pub: Publisher,
    topics: list[list[str]],
    ts: float,
    values: list[list[float]],
    up: list[bool],
) -> bool:
    ts_json = json_ts(ts)
    for asset_topics, row, is_up in zip(topics, values, up, strict=True):
        if not is_up:
            continue  # a failed pump sends nothing until it is repaired
        for topic, value in zip(asset_topics, row, strict=True):
            payload = json.dumps({"ts": ts_json, "value": value}).encode()
            if not pub.publish(topic, payload):
                return False
    return True
