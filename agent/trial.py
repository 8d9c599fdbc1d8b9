"""A shadow model on trial beside the live one: promotion and rollback by the live accounting.

The CMMS reports judge both models' alerts the same way (agent.accounting): false alarms,
missed failures, lead times. A trial counts them for each model from the moment the shadow
started, in event time. When `length` of event time has passed:

- a **candidate** (a refit's model) is promoted if it did at least as well as the live model:
  no more missed failures, no more false alarms, and a median lead time no shorter (when both
  warned of failures); otherwise it is dropped;
- a **guard** (the model a promotion replaced, kept as the shadow) is restored if the promoted
  model did worse than it would have: more misses, more false alarms, or a shorter median lead
  time; otherwise the promotion stands and the guard is dropped.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["candidate", "guard"]
MAX_LEADS = 1000  # lead times kept per model: enough for a median


@dataclass
class Tally:
    """One model's judged alerts since the trial began."""

    false_alarms: int = 0
    true_alarms: int = 0
    missed: int = 0
    lead_times: list[float] = field(default_factory=list)

    @property
    def median_lead_s(self) -> float | None:
        return statistics.median(self.lead_times) if self.lead_times else None

    def lead(self, seconds: float) -> None:
        if len(self.lead_times) < MAX_LEADS:
            self.lead_times.append(seconds)


@dataclass(frozen=True)
class Verdict:
    """What a finished trial says: `action` is promote, drop (a candidate), rollback or keep (a guard)."""

    action: Literal["promote", "drop", "rollback", "keep"]
    reason: str
    live: Tally
    shadow: Tally


def at_least_as_good(a: Tally, b: Tally) -> tuple[bool, str]:
    """Whether `a` did at least as well as `b`, and the first way it did not."""
    if a.missed > b.missed:
        return False, f"missed {a.missed} failures against {b.missed}"
    if a.false_alarms > b.false_alarms:
        return False, f"{a.false_alarms} false alarms against {b.false_alarms}"
    la, lb = a.median_lead_s, b.median_lead_s
    if la is not None and lb is not None and la < lb:
        return False, f"median lead time {la:.0f} s against {lb:.0f} s"
    return True, (f"{a.missed} missed, {a.false_alarms} false alarms against "
                  f"{b.missed} missed, {b.false_alarms} false alarms")


@dataclass
class Trial:
    """The shadow's trial: which role it plays, since when (event time), and each model's tally."""

    role: Role
    shadow_version: str
    live_version: str
    started: float | None  # event time; None until the first scored window after the shadow came
    tallies: dict[str, Tally] = field(default_factory=lambda: {"live": Tally(), "shadow": Tally()})

    def verdict(self, now: float, length_s: float) -> Verdict | None:
        """None while the trial runs; then the verdict of the evidence."""
        if self.started is None:
            self.started = now
        if now - self.started < length_s:
            return None
        live, shadow = self.tallies["live"], self.tallies["shadow"]
        if self.role == "candidate":
            ok, why = at_least_as_good(shadow, live)
            return Verdict("promote" if ok else "drop", why, live, shadow)
        ok, why = at_least_as_good(live, shadow)  # the promoted model against the one it replaced
        return Verdict("keep" if ok else "rollback", why, live, shadow)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trial:
        tallies = {k: Tally(int(v["false_alarms"]), int(v["true_alarms"]), int(v["missed"]),
                            [float(x) for x in v["lead_times"]][:MAX_LEADS])
                   for k, v in d["tallies"].items()}
        role: Role = "guard" if d["role"] == "guard" else "candidate"
        started = None if d.get("started") is None else float(d["started"])
        return cls(role, str(d["shadow_version"]), str(d["live_version"]), started, tallies)
