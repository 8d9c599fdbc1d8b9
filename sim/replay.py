"""A history file played to MQTT in event-time order, keeping each reading's own timestamp."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from tqdm import tqdm

from agent.errors import ConfigError, DataError
from sim.publisher import Publisher, PublisherOptions, check_topic_prefix
from sim.reader import Chunk, count_rows, read_history
from sim.timestamps import format_rfc3339, json_ts

Codec: TypeAlias = Literal["json", "json-multi"]
CODECS: tuple[Codec, ...] = ("json", "json-multi")


@dataclass(frozen=True)
class ReplayOptions:
    """How to play a file: topic layout, payload codec and pace."""

    topic_prefix: str = "plant"
    codec: Codec = "json"
    speed: float = 1.0
    """Event-time gaps are divided by this; 0 or inf publish as fast as acks allow."""
    ack_timeout_s: float = 60.0
    """How long to wait for the last acknowledgements before giving up."""
    progress: bool | None = None
    """Progress bar on stderr; None shows it only on a terminal."""

    def __post_init__(self) -> None:
        check_topic_prefix(self.topic_prefix)
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if math.isnan(self.speed) or self.speed < 0:
            raise ConfigError(f"speed must be 0 or more, got {self.speed}")

    @property
    def paced(self) -> bool:
        """Whether gaps between event times are kept (scaled) at all."""
        return 0 < self.speed < math.inf


@dataclass
class ReplaySummary:
    """What a replay did."""

    rows: int = 0
    published: int = 0
    acked: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    interrupted: bool = False

    @property
    def all_acked(self) -> bool:
        """Whether the broker acknowledged every message."""
        return self.acked >= self.published

    def describe(self) -> str:
        """One line for people: counts and the event-time span."""
        span = ""
        if self.first_ts is not None and self.last_ts is not None:
            span = f", event time {format_rfc3339(self.first_ts)} .. {format_rfc3339(self.last_ts)}"
        return (
            f"{self.rows} rows, {self.published} messages published, "
            f"{self.acked} acknowledged{span}"
        )


class _Player:
    """Walks rows in order: paces on each new timestamp, encodes, publishes."""

    def __init__(
        self,
        pub: Publisher,
        opts: ReplayOptions,
        stop: threading.Event,
        summary: ReplaySummary,
        clock: Callable[[], float],
        bar: tqdm[None],
    ) -> None:
        self.pub, self.opts, self.stop, self.summary, self.clock = pub, opts, stop, summary, clock
        self.bar = bar
        self.shown_rows = 0
        self.wall0 = 0.0
        # json-multi: the readings of the current timestamp, per asset in first-seen order.
        self.pending: dict[str, dict[str, float]] = {}

    def play(self, path: Path, chunk: Chunk) -> bool:
        """Publish one chunk; False when stopped. DataError when event time goes backwards."""
        s = self.summary
        prefix, multi = self.opts.topic_prefix, self.opts.codec == "json-multi"
        values = chunk.value.tolist()
        for i, ts in enumerate(chunk.ts.tolist()):
            if ts != s.last_ts:
                if s.last_ts is not None and ts < s.last_ts:
                    raise DataError(
                        f"{path} row {chunk.first_row + i}: ts {json_ts(ts)} is earlier than "
                        f"the row before ({json_ts(s.last_ts)}); the file must be sorted by ts"
                    )
                self._progress()
                if not self._flush() or not self._pace(ts):
                    return False
                s.last_ts = ts
                if s.first_ts is None:
                    s.first_ts = ts
                    self.wall0 = self.clock()
            if multi:
                self.pending.setdefault(chunk.asset[i], {})[chunk.channel[i]] = values[i]
            else:
                topic = f"{prefix}/{chunk.asset[i]}/{chunk.channel[i]}"
                payload = json.dumps({"ts": json_ts(ts), "value": values[i]}).encode()
                if not self.pub.publish(topic, payload):
                    return False
            s.rows += 1
        return True

    def finish(self) -> bool:
        """Publish what the last timestamp still holds."""
        self._progress()
        return self._flush()

    def _progress(self) -> None:
        self.bar.update(self.summary.rows - self.shown_rows)
        self.shown_rows = self.summary.rows

    def _flush(self) -> bool:
        if not self.pending:
            return True
        ts = json_ts(self.summary.last_ts or 0.0)
        prefix = self.opts.topic_prefix
        pending, self.pending = self.pending, {}
        for asset, readings in pending.items():
            payload = json.dumps({"ts": ts, "values": readings}).encode()
            if not self.pub.publish(f"{prefix}/{asset}", payload):
                return False
        return True

    def _pace(self, ts: float) -> bool:
        first = self.summary.first_ts
        if not self.opts.paced or first is None:
            return True
        wait = self.wall0 + (ts - first) / self.opts.speed - self.clock()
        return wait <= 0 or not self.stop.wait(wait)


def run_replay(
    path: Path,
    publisher: PublisherOptions,
    opts: ReplayOptions,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> ReplaySummary:
    """Play `path` to the broker and wait for every acknowledgement (or the ack timeout).

    Raises DataError for a malformed or unsorted file (after acknowledging what was already
    sent), BrokerError when the broker cannot be reached.
    """
    chunks = read_history(path)
    # Read the first chunk before connecting: a missing or malformed file fails fast.
    first = next(chunks, None)
    summary = ReplaySummary()
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    with (
        Publisher(publisher, stop) as pub,
        tqdm(total=count_rows(path), unit="row", desc="replay", file=sys.stderr,
             disable=not show) as bar,
    ):
        player = _Player(pub, opts, stop, summary, clock, bar)
        try:
            chunk = first
            while chunk is not None:
                if not player.play(path, chunk):
                    summary.interrupted = True
                    break
                chunk = next(chunks, None)
            else:
                summary.interrupted = not player.finish()
        finally:
            pub.drain(opts.ack_timeout_s)
            summary.published, summary.acked = pub.published, pub.acked
    return summary
