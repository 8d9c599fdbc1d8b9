"""Alarm-rate bookkeeping in event time: floods (too many alarms) and chattering assets.

ISA-18.2 / IEC 62682 ask for about one alarm per ten minutes per operator and never a flood
(more than 10 in 10 minutes). Both trackers count in event time, like dwell and cooldown, so
a replay at any speed decides exactly as the plant did.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class FloodChange:
    """A flood began (`active`) or ended; what it held back while it lasted."""

    active: bool
    alarms_in_window: int
    suppressed: int
    assets: list[str]


@dataclass
class FloodTracker:
    """Alarms within the last `window_s` of event time; a flood is more than `threshold`.

    A flood ends once the count falls to half the threshold, so a rate hovering at the
    threshold does not start and end floods in turn.
    """

    threshold: int
    window_s: float
    times: deque[float] = field(default_factory=deque)
    active: bool = False
    suppressed: int = 0
    assets: dict[str, None] = field(default_factory=dict)

    def _prune(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()

    def alarm(self, ts: float) -> FloodChange | None:
        """Count one alarm raised at event time `ts`; a FloodChange when a flood begins."""
        self.times.append(ts)
        if len(self.times) > 1 and ts < self.times[-2]:  # out of order: keep the deque sorted
            self.times = deque(sorted(self.times))
        self._prune(max(ts, self.times[-1]))
        if not self.active and len(self.times) > self.threshold:
            self.active = True
            self.suppressed = 0
            self.assets = {}
            return FloodChange(True, len(self.times), 0, [])
        return None

    def held_back(self, asset: str) -> None:
        """A warning that the flood summary stands for instead of its own alert."""
        self.suppressed += 1
        if len(self.assets) < 1000:
            self.assets[asset] = None

    def tick(self, now: float) -> FloodChange | None:
        """Let event time pass; a FloodChange when the flood ends."""
        self._prune(now)
        if self.active and len(self.times) <= self.threshold // 2:
            self.active = False
            return FloodChange(False, len(self.times), self.suppressed, list(self.assets))
        return None

    @property
    def count(self) -> int:
        return len(self.times)


@dataclass
class ChatterTracker:
    """Per asset, level changes within the last `window_s`; more than `toggles` is chatter."""

    toggles: int
    window_s: float
    max_assets: int = 10_000
    changes: dict[str, deque[float]] = field(default_factory=dict)
    chattering: set[str] = field(default_factory=set)

    def change(self, asset: str, ts: float) -> bool:
        """Count one level change; True when the asset starts chattering."""
        d = self.changes.get(asset)
        if d is None:
            if len(self.changes) >= self.max_assets:
                return False
            d = self.changes[asset] = deque(maxlen=self.toggles + 1)
        d.append(ts)
        while d and d[0] <= ts - self.window_s:
            d.popleft()
        if len(d) > self.toggles and asset not in self.chattering:
            self.chattering.add(asset)
            return True
        return False

    def tick(self, now: float) -> list[str]:
        """Let event time pass; the assets that stopped chattering."""
        calm = []
        for asset in list(self.chattering):
            d = self.changes.get(asset, deque())
            while d and d[0] <= now - self.window_s:
                d.popleft()
            if len(d) <= self.toggles:
                self.chattering.discard(asset)
                calm.append(asset)
        for asset in [a for a, d in self.changes.items() if not d or d[-1] <= now - self.window_s]:
            del self.changes[asset]
        return calm

    def forget(self, asset: str) -> None:
        self.changes.pop(asset, None)
        self.chattering.discard(asset)
