"""Bounded per-asset series ([metrics] per_asset) and the fleet series beside them.

Unit tests render the collector through a real prometheus_client registry; the end-to-end
tests run the agent as a subprocess on a real broker and scrape its /metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.asset_series import LEVEL_NAMES, RISK_BUCKETS, AssetSeries, select
from agent.ingest import Reason
from agent.runtime import load_model, read_spec
from tests.agent.conftest import CHANNELS, PERIOD_S, WINDOW, ModelFile
from tests.agent.test_hotswap import rewrite
from tests.agent.test_pipeline import T0 as PIPE_T0
from tests.agent.test_pipeline import Harness, config
from tests.broker import Broker, free_port, wait_until
from tests.procs import Capture, metric, publish_all, running_agent, write_agent_config


def scrape_of(series: AssetSeries) -> str:
    registry = CollectorRegistry()
    registry.register(series)
    return generate_latest(registry).decode()


def exported(text: str, name: str = "vigil_asset_risk") -> dict[str, float]:
    """asset -> value of every `name{asset="..."}` sample in a scrape."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + '{asset="'):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) + 8:-2]] = float(value)
    return out


class TestSelect:
    def test_top_orders_by_level_then_risk(self) -> None:
        """`top` keeps the limit's worth of assets: critical ones first, even below a warning's risk."""
        entries = [("a", 0.90, 1), ("b", 0.70, 2), ("c", 0.95, 1), ("d", 0.10, 0), ("e", 0.85, 2)]
        sel = select(entries, "top", 3)
        assert [e[0] for e in sel.assets] == ["e", "b", "c"]
        assert sel.by_level == (1, 2, 2) and sel.omitted == 2

    def test_ties_go_by_name(self) -> None:
        """Equal level and risk: the first names stay in, whatever order they were updated in."""
        entries = [(f"p{i:02d}", 0.5, 0) for i in (7, 3, 9, 1, 5)]
        assert [e[0] for e in select(entries, "top", 2).assets] == ["p01", "p03"]

    def test_all_none_and_a_small_fleet(self) -> None:
        """`all` exports every asset, `none` none; `top` exports every asset while they fit."""
        entries = [(f"p{i}", i / 10, 0) for i in range(5)]
        assert len(select(entries, "all", 2).assets) == 5 and select(entries, "all", 2).omitted == 0
        assert select(entries, "none", 2).assets == [] and select(entries, "none", 2).omitted == 5
        assert len(select(entries, "top", 5).assets) == 5 and select(entries, "top", 5).omitted == 0

    def test_histogram_counts_every_asset(self) -> None:
        """The cumulative buckets count assets at or below each bound; the last counts all."""
        entries = [("a", 0.05, 0), ("b", 0.1, 0), ("c", 0.55, 1), ("d", 0.999, 2)]
        sel = select(entries, "none", 1)
        bounds = dict(zip(RISK_BUCKETS, sel.buckets, strict=False))
        assert (bounds[0.1], bounds[0.5], bounds[0.6], bounds[0.99]) == (2, 2, 3, 3)
        assert sel.buckets[-1] == 4 and sel.risk_sum == pytest.approx(1.699)


class TestCollector:
    def test_scrape_holds_the_top_and_counts_the_fleet(self) -> None:
        """A scrape has the limit's worth of per-asset series, and fleet series over every asset."""
        series = AssetSeries("top", 3)
        series.update([(f"p{i:02d}", i / 100, 2 if i >= 28 else 0) for i in range(30)])
        text = scrape_of(series)
        assert exported(text) == {"p29": 0.29, "p28": 0.28, "p27": 0.27}
        assert exported(text, "vigil_asset_level") == {"p29": 2.0, "p28": 2.0, "p27": 0.0}
        assert metric(text, "vigil_assets_by_level", 'level="ok"') == 28
        assert metric(text, "vigil_assets_by_level", 'level="critical"') == 2
        assert metric(text, "vigil_assets_omitted") == 27
        assert metric(text, "vigil_asset_risk_distribution_bucket", 'le="0.1"') == 11
        assert metric(text, "vigil_asset_risk_distribution_bucket", 'le="+Inf"') == 30
        assert metric(text, "vigil_asset_risk_distribution_gcount") == 30

    def test_an_asset_overtaken_or_forgotten_leaves_the_scrape(self) -> None:
        """An asset pushed out of the top, or no longer held by the agent, is in no later scrape."""
        series = AssetSeries("top", 2)
        series.update([("a", 0.9, 0), ("b", 0.8, 0), ("c", 0.1, 0)])
        assert set(exported(scrape_of(series))) == {"a", "b"}
        series.update([("c", 0.95, 1)])
        assert set(exported(scrape_of(series))) == {"c", "a"}
        series.retain({"b", "c"})
        text = scrape_of(series)
        assert set(exported(text)) == {"c", "b"}
        assert sum(metric(text, "vigil_assets_by_level", f'level="{lv}"') or 0 for lv in LEVEL_NAMES) == 2

    def test_none_keeps_the_fleet_series(self) -> None:
        """`none`: no per-asset sample, the fleet series still count every asset."""
        series = AssetSeries("none", 10)
        series.update([("a", 0.5, 1)])
        text = scrape_of(series)
        assert exported(text) == {} and metric(text, "vigil_assets_omitted") == 1
        assert metric(text, "vigil_assets_by_level", 'level="warning"') == 1


def test_a_flood_of_asset_ids_leaves_no_topic_cached(tmp_path: Path, model_file: ModelFile) -> None:
    """1,000 asset ids against max_assets = 3: the ones refused leave nothing in the decoder's
    topic cache (memory stays with the assets held), the held assets' topics stay cached."""
    h = Harness(config(tmp_path, model_file.path), load_model(model_file.path))
    for i in range(1000):
        for ch in CHANNELS:
            n, why = h.send(f"a{i:04d}", ch, PIPE_T0 + 1, 1.0)
            assert (n, why) == ((1, []) if i < 3 else (0, [Reason.ASSET_LIMIT]))
    assert set(h.pipe.assets) == {"a0000", "a0001", "a0002"}
    assert h.pipe.decoders[0].cached_topics == 3 * len(CHANNELS)


# -- end to end: a real broker, the agent as a subprocess, /metrics over HTTP ----------------

T0 = time.time() - 3600 * PERIOD_S  # an hour's cells back: every reading within the skew bounds
EXTRA = """
[[subscriptions]]
filter = "multi/+"
template = "multi/{asset}"
codec = "json-multi"

[metrics]
per_asset_limit = 10
"""


def window_message(asset: str, first_cell: int, level: float) -> tuple[str, bytes]:
    """One json-multi message holding a whole window of cells for `asset` (one risk)."""
    cells = [{"ts": T0 + (first_cell + k) * PERIOD_S + 1.0,
              "values": {ch: level * (1 + j) + 0.1 * (k % 3) for j, ch in enumerate(CHANNELS)}}
             for k in range(WINDOW)]
    return f"multi/{asset}", json.dumps(cells).encode()


def expected_top(latest: dict[str, dict[str, object]], n: int) -> list[str]:
    """The `n` assets the agent should export, from its own risk messages."""
    rank = {"ok": 0, "warning": 1, "critical": 2}
    order = sorted(latest, key=lambda a: (-rank[str(latest[a]["level"])], -float(str(latest[a]["risk"])), a))
    return order[:n]


def risk_docs(capture: Capture) -> list[dict[str, object]]:
    """This test's risk messages (retained ones of other tests on the broker left out)."""
    return capture.json("vigil/risk/unit-")


def latest_risks(capture: Capture) -> dict[str, dict[str, object]]:
    return {str(d["asset"]): d for d in risk_docs(capture)}


def scored(capture: Capture, n: int) -> bool:
    """Whether every asset has had `n` risk messages (one a window)."""
    counts: dict[str, int] = {}
    for d in risk_docs(capture):
        counts[str(d["asset"])] = counts.get(str(d["asset"]), 0) + 1
    return len(counts) == 30 and min(counts.values()) >= n


@pytest.mark.integration
def test_scrape_holds_the_top_assets_and_counts_them_all(model_file: ModelFile, broker: Broker,
                                                         tmp_path: Path) -> None:
    """30 assets, per_asset_limit = 10: the scrape holds exactly the 10 of highest level and risk
    (as the agent's own risk messages rank them), the fleet series count all 30; after a second
    round of windows the ranking changes and the assets that fell out are gone from the scrape;
    after a model swap that restarts every asset, no asset is left in it."""
    model = tmp_path / "model.pt"
    model.write_bytes(model_file.path.read_bytes())
    port = free_port()
    config = write_agent_config(tmp_path / "agent.toml", broker_url=broker.url, model=model,
                                state=tmp_path / "state", http_port=port, client_id="gw-series",
                                extra=EXTRA)
    assets = [f"unit-{i:02d}" for i in range(30)]
    capture = Capture(broker.port, ["vigil/risk/#"]).start()
    with running_agent(config, port, tmp_path / "agent.log") as agent:
        agent.wait_ready()
        publish_all(broker.port, [window_message(a, 0, 0.2 * i) for i, a in enumerate(assets)], "series-pub")
        wait_until(lambda: scored(capture, 1), 30, what="a risk for every asset")

        def matches(latest: dict[str, dict[str, object]]) -> bool:
            text = agent.scrape()
            return set(exported(text)) == set(expected_top(latest, 10))
        first = latest_risks(capture)
        wait_until(lambda: matches(first), 10, what="the top 10 in the scrape")
        text = agent.scrape()
        top = exported(text)
        assert top == {a: first[a]["risk"] for a in expected_top(first, 10)}
        levels = exported(text, "vigil_asset_level")
        rank = {"ok": 0, "warning": 1, "critical": 2}
        assert levels == {a: rank[str(first[a]["level"])] for a in top}
        for lv in LEVEL_NAMES:
            assert metric(text, "vigil_assets_by_level", f'level="{lv}"') == sum(
                1 for d in first.values() if d["level"] == lv)
        assert metric(text, "vigil_assets_omitted") == 20
        assert metric(text, "vigil_asset_risk_distribution_bucket", 'le="+Inf"') == 30

        # The next window: the former top ten read calm values, the rest the wildest ones.
        calm = set(top)
        publish_all(broker.port, [window_message(a, WINDOW, 0.0 if a in calm else 0.2 * (30 + i))
                                  for i, a in enumerate(assets)], "series-pub")
        # Each of its cells closes a window (stride 1): WINDOW more risks an asset.
        wait_until(lambda: scored(capture, 1 + WINDOW), 30, what="the second round scored")
        second = latest_risks(capture)
        wait_until(lambda: matches(second), 10, what="the new top 10 in the scrape")
        left = calm - set(exported(agent.scrape()))
        assert left, "the second round changed nothing: the test no longer shows assets leaving"
        assert metric(agent.scrape(), "vigil_assets_omitted") == 20

        # A model reading another window length: every asset starts afresh, none keeps a series.
        spec = read_spec(model)
        rewrite(model_file.path, model, dataclasses.replace(spec, window=WINDOW + 1, version="feedbeef0002"))
        wait_until(lambda: metric(agent.scrape(), "vigil_model_reloads_total", 'result="success"') == 1,
                   15, what="the new model swapped in")
        text = agent.scrape()
        assert exported(text) == {} and exported(text, "vigil_asset_level") == {}
        assert all(metric(text, "vigil_assets_by_level", f'level="{lv}"') == 0 for lv in LEVEL_NAMES)
    capture.stop()
