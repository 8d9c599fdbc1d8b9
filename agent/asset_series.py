"""Per-asset risk series, bounded, and fleet-level series beside them, made at scrape time.

The worker keeps one plain entry per asset (latest risk and level) in `AssetSeries`; a scrape
turns them into `vigil_asset_risk{asset}` / `vigil_asset_level{asset}` for the assets that
`[metrics] per_asset` selects, and into fleet series whose size does not depend on the fleet:
`vigil_assets_by_level{level}`, the gauge histogram `vigil_asset_risk_distribution` and
`vigil_assets_omitted`. No labelled child object is kept per asset, and an asset the agent
forgets (`retain`) leaves the next scrape.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LEVEL_NAMES = ("ok", "warning", "critical")
# Upper bounds of the risk histogram (risk is in [0, 1]): finer near the thresholds, where
# warning and critical usually sit.
RISK_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
Entry = tuple[str, float, int]  # asset, latest risk, level (0 ok, 1 warning, 2 critical)


@dataclass(frozen=True)
class Selection:
    """What one scrape exports: the chosen assets, and fleet counts over every asset."""

    assets: list[Entry]
    by_level: tuple[int, int, int]
    buckets: list[int]  # assets with risk <= each bound of RISK_BUCKETS, then all (+Inf)
    risk_sum: float
    omitted: int


def select(entries: Iterable[Entry], mode: str, limit: int) -> Selection:
    """The per-asset entries `mode` exports (`top`, `all`, `none`) and the fleet counts.

    `top` orders by level, then risk, highest first, so that every critical asset is shown
    before any warning one while fewer than `limit` are critical; equal ones go by name, so
    the same assets stay in from one scrape to the next instead of changing series.
    """
    everything = list(entries)
    by_level = [0, 0, 0]
    counts = [0] * (len(RISK_BUCKETS) + 1)
    risk_sum = 0.0
    for _, risk, level in everything:
        by_level[level] += 1
        counts[bisect_left(RISK_BUCKETS, risk)] += 1
        risk_sum += risk
    cumulative, running = [], 0
    for n in counts:
        running += n
        cumulative.append(running)
    if mode == "all":
        chosen = everything
    elif mode == "none":
        chosen = []
    elif len(everything) <= limit:
        chosen = everything
    else:
        everything.sort()  # by name: ties below keep this order (sort is stable, also reversed)
        everything.sort(key=lambda e: (e[2], e[1]), reverse=True)
        chosen = everything[:limit]
    return Selection(chosen, (by_level[0], by_level[1], by_level[2]), cumulative, risk_sum,
                     len(everything) - len(chosen))


class AssetSeries(Collector):
    """The latest risk and level of every asset, exported per `[metrics] per_asset` at scrape time."""

    def __init__(self, mode: str = "top", limit: int = 500) -> None:
        self.mode = mode
        self.limit = limit
        self._latest: dict[str, tuple[float, int]] = {}
        # The worker writes, the HTTP thread reads: a scrape takes a copy under the lock.
        self._lock = threading.Lock()

    def update(self, entries: Iterable[Entry]) -> None:
        """The latest risk and level of some assets (the worker, once per batch)."""
        with self._lock:
            latest = self._latest
            for asset, risk, level in entries:
                latest[asset] = (risk, level)

    def retain(self, assets: Collection[str]) -> None:
        """Forget every asset not in `assets` (the agent no longer holds them)."""
        with self._lock:
            self._latest = {a: v for a, v in self._latest.items() if a in assets}

    def snapshot(self) -> Selection:
        with self._lock:
            items = list(self._latest.items())
        return select(((a, r, lv) for a, (r, lv) in items), self.mode, self.limit)

    def describe(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        """The families without samples: registering this collector must not compute a scrape."""
        return self._families(Selection([], (0, 0, 0), [0] * (len(RISK_BUCKETS) + 1), 0.0, 0),
                              samples=False)

    def collect(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        return self._families(self.snapshot())

    def _families(self, sel: Selection, samples: bool = True
                  ) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        risk = GaugeMetricFamily("vigil_asset_risk", "Latest risk per asset ([metrics] per_asset).",
                                 labels=["asset"])
        level = GaugeMetricFamily("vigil_asset_level", "Current level per asset: 0 ok, 1 warning, "
                                  "2 critical ([metrics] per_asset).", labels=["asset"])
        for asset, r, lv in sel.assets:
            risk.add_metric([asset], r)
            level.add_metric([asset], lv)
        yield risk
        yield level
        by_level = GaugeMetricFamily("vigil_assets_by_level", "Assets with a risk, by current level.",
                                     labels=["level"])
        for name, n in zip(LEVEL_NAMES, sel.by_level, strict=True):
            by_level.add_metric([name], n)
        yield by_level
        bounds = [*(str(b) for b in RISK_BUCKETS), "+Inf"]
        yield GaugeHistogramMetricFamily(
            "vigil_asset_risk_distribution", "Latest risk of every asset (a gauge histogram).",
            buckets=list(zip(bounds, sel.buckets, strict=True)) if samples else None,
            gsum_value=sel.risk_sum if samples else None)
        yield GaugeMetricFamily("vigil_assets_omitted",
                                "Assets with a risk whose per-asset series this scrape leaves out "
                                "([metrics] per_asset, per_asset_limit).",
                                value=sel.omitted if samples else None)
