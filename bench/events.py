"""How bench/real.py scores alerts against labelled anomalies, the same for every detector.

An alert starts where a level leaves ok. An anomaly window (a run of labelled rows) is caught
by onset when an alert starts inside it, or within ONSET_ROWS rows of its start for a window
shorter than that (a level raised before the window does not count). An alert that starts in
no window (with that allowance) is a false alarm. Event-F1 is the harmonic mean of the share
of windows caught and the share of alerts that are true (alert precision); point-adjusted
scores are not used (see ../shared/data/smd/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ONSET_ROWS = 5
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Alert:
    """A level change at a row of a stream; `top` names the channels that drove it."""

    row: int
    level: str
    previous: str
    top: tuple[str, ...] = ()

    @property
    def starts(self) -> bool:
        return self.previous == "ok" and self.level != "ok"


def windows(labels: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """The runs of labelled rows as (first, last) rows."""
    d = np.diff(np.concatenate([[0], (labels > 0).astype(np.int64), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), (np.flatnonzero(d == -1) - 1).tolist(), strict=True))


def raised(alerts: Sequence[Alert], n: int) -> npt.NDArray[np.bool_]:
    """Per row, whether a level above ok stood (from the transitions, in order)."""
    out = np.zeros(n, dtype=bool)
    up_since: int | None = None
    for a in sorted(alerts, key=lambda a: a.row):
        if a.level != "ok" and up_since is None:
            up_since = a.row
        elif a.level == "ok" and up_since is not None:
            out[up_since:a.row] = True
            up_since = None
    if up_since is not None:
        out[up_since:] = True
    return out


@dataclass
class EventScore:
    windows: int = 0
    caught: int = 0
    true_alerts: int = 0
    false_alerts: int = 0
    normal_days: float = 0.0
    driver_hits: int = 0
    driver_judged: int = 0
    driver_labelled: float = 0.0   # summed over judged windows: the share of the top 3 that are labelled

    def add(self, other: EventScore) -> None:
        for k, v in vars(other).items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def recall(self) -> float:
        return self.caught / self.windows if self.windows else float("nan")

    @property
    def precision(self) -> float:
        n = self.true_alerts + self.false_alerts
        return self.true_alerts / n if n else 0.0

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p > 0 else 0.0

    @property
    def false_per_day(self) -> float:
        return self.false_alerts / self.normal_days if self.normal_days else float("nan")

    @property
    def driver_top3(self) -> float:
        """Caught windows whose first alert names a labelled channel among its top three."""
        return self.driver_hits / self.driver_judged if self.driver_judged else float("nan")

    @property
    def driver_precision(self) -> float:
        """The share of the top three channels that are labelled ones, over caught windows."""
        return self.driver_labelled / self.driver_judged if self.driver_judged else float("nan")


def score_events(alerts: Sequence[Alert], labels: npt.NDArray[np.int64], period_s: float,
                 scored: npt.NDArray[np.bool_] | None = None,
                 interpretation: dict[int, list[int]] | None = None,
                 channels: tuple[str, ...] = ()) -> EventScore:
    """Windows caught by onset, true and false alerts, and (with `interpretation`) whether the
    first alert that caught each window named one of its labelled channels among its top three."""
    scored = np.ones(len(labels), dtype=bool) if scored is None else scored
    spans = [(s, max(e, s + ONSET_ROWS)) for s, e in windows(labels * scored)]
    starts = sorted((a for a in alerts if a.starts and 0 <= a.row < len(labels) and scored[a.row]),
                    key=lambda a: a.row)
    out = EventScore(windows=len(spans), normal_days=float((scored & (labels == 0)).sum()) * period_s
                     / SECONDS_PER_DAY)
    for s, e in spans:
        first = next((a for a in starts if s <= a.row <= e), None)
        if first is None:
            continue
        out.caught += 1
        truth = (interpretation or {}).get(s)
        if truth is not None and first.top:
            labelled = {channels[c] for c in truth} & set(first.top[:3])
            out.driver_judged += 1
            out.driver_hits += bool(labelled)
            out.driver_labelled += len(labelled) / len(first.top[:3])
    for a in starts:
        if any(s <= a.row <= e for s, e in spans):
            out.true_alerts += 1
        else:
            out.false_alerts += 1
    return out


@dataclass
class PointScore:
    """Per unit (a cycle of rows): flagged when a level stood in any of its rows."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    by_kind: dict[str, float] | None = None

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r + p > 0 else 0.0


def score_units(alerts: Sequence[Alert], labels: npt.NDArray[np.int64], scored: npt.NDArray[np.bool_],
                unit: int, kinds: dict[str, npt.NDArray[np.bool_]]) -> PointScore:
    """Units of `unit` rows: degraded ones flagged (recall, also per kind), normal ones not."""
    n = len(labels) // unit
    up = raised(alerts, len(labels))[: n * unit].reshape(n, unit).any(axis=1)
    bad = labels[: n * unit].reshape(n, unit).max(axis=1) > 0
    use = scored[: n * unit].reshape(n, unit).all(axis=1)
    out = PointScore(int((up & bad & use).sum()), int((up & ~bad & use).sum()), int((~up & bad & use).sum()))
    out.by_kind = {}
    for k, rows in kinds.items():
        mine = rows[: n * unit].reshape(n, unit).all(axis=1) & use
        out.by_kind[k] = float(up[mine].mean()) if mine.any() else float("nan")
    return out
