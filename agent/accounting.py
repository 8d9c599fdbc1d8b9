"""Live lead time and precision: alerts held against the failures and repairs the CMMS reports.

All in event time (the alert's and the event's `ts`), so a replay scores as the plant would:
- a `failure` confirms every alert raised within the horizon before it; the lead time is that of
  the first of them; with none, the failure was missed;
- a `repair` confirms the alerts within the horizon before it (the fault was found in time);
- an alert whose horizon (plus a grace for late reports) has passed unconfirmed is a false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_PENDING = 64  # alerts awaiting judgement per asset and model; older ones are judged first


@dataclass(frozen=True)
class Raised:
    """An alert (a raise from ok) waiting for its horizon to tell whether it was right."""

    alert_id: str
    ts: float
    horizon_s: float


@dataclass(frozen=True)
class FailureOutcome:
    """What a failure made of the pending alerts: a lead time, or a miss (None)."""

    lead_time_s: float | None
    confirmed: int


@dataclass
class LeadTimeBook:
    """Alerts of one model per asset, until a failure, a repair or their horizon judges them."""

    grace_s: float = 0.0
    pending: dict[str, list[Raised]] = field(default_factory=dict)

    def raised(self, asset: str, alert_id: str, ts: float, horizon_s: float) -> list[Raised]:
        """Hold a new alert; returns any that had to be judged early to keep the book bounded."""
        lst = self.pending.setdefault(asset, [])
        if any(r.alert_id == alert_id for r in lst):
            return []  # the same transition decided again (restart): already held
        lst.append(Raised(alert_id, ts, horizon_s))
        lst.sort(key=lambda r: r.ts)
        overflow, self.pending[asset] = lst[:-MAX_PENDING], lst[-MAX_PENDING:]
        return overflow

    def _confirm(self, asset: str, ts: float) -> list[Raised]:
        lst = self.pending.get(asset, [])
        hit = [r for r in lst if r.ts <= ts and ts - r.ts <= r.horizon_s + self.grace_s]
        rest = [r for r in lst if r not in hit]
        if rest:
            self.pending[asset] = rest
        else:
            self.pending.pop(asset, None)
        return hit

    def failure(self, asset: str, ts: float) -> FailureOutcome:
        """A failure at `ts`: the lead time of the first alert within the horizon before it."""
        hit = self._confirm(asset, ts)
        if not hit:
            return FailureOutcome(None, 0)
        return FailureOutcome(ts - min(r.ts for r in hit), len(hit))

    def repair(self, asset: str, ts: float) -> int:
        """A repair at `ts`: alerts within the horizon before it were right; returns how many."""
        return len(self._confirm(asset, ts))

    def expire(self, now: float) -> list[tuple[str, Raised]]:
        """Alerts whose horizon and grace ended before event time `now`: false alarms."""
        out: list[tuple[str, Raised]] = []
        for asset in list(self.pending):
            lst = self.pending[asset]
            gone = [r for r in lst if r.ts + r.horizon_s + self.grace_s < now]
            if gone:
                out.extend((asset, r) for r in gone)
                rest = [r for r in lst if r not in gone]
                if rest:
                    self.pending[asset] = rest
                else:
                    del self.pending[asset]
        return out

    def dump(self, asset: str) -> list[list[Any]]:
        return [[r.alert_id, r.ts, r.horizon_s] for r in self.pending.get(asset, [])]

    def load(self, asset: str, rows: list[list[Any]]) -> None:
        got = [Raised(str(a), float(t), float(h)) for a, t, h in rows]
        if got:
            self.pending[asset] = sorted(got, key=lambda r: r.ts)[-MAX_PENDING:]
