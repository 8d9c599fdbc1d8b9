"""deploy/grafana: provisioning files and the dashboard's structure (its queries run in test_prometheus)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy.tools import DEPLOY

GRAFANA = DEPLOY / "grafana"
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__range_s", "__name"}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "vigil.json").read_text())
    return doc


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


class TestDashboard:
    def test_has_the_panels_operators_need(self) -> None:
        """The dashboard has a panel for each view the deployment issue lists."""
        titles = " | ".join(p["title"].lower() for p in panels())
        for view in ("fleet risk", "risk timeline", "ingest rate", "rejected readings by reason",
                     "inference latency", "batch size", "outbox depth", "alerts by level",
                     "model version", "broker connection"):
            assert view in titles, view

    def test_shows_live_lead_time_and_false_alarms(self) -> None:
        """The operations loop's views: live lead time, false alarms and misses (live beside shadow),
        alarm floods and rate, drift; each queries the metric it names."""
        exprs = {p["title"].lower(): " ".join(t["expr"] for t in p["targets"]) for p in panels()}
        for title, metric in (("live lead time", "vigil_alert_lead_time_seconds_bucket"),
                              ("false alarms (live", "vigil_false_alarms_total"),
                              ("missed failures", "vigil_failures_missed_total"),
                              ("live vs shadow", "vigil_alert_lead_time_seconds_bucket"),
                              ("alarm flood", "vigil_alarm_flood_active"),
                              ("alarm rate", "vigil_alarms_in_flood_window"),
                              ("input drift", "vigil_input_drift_psi")):
            (hit,) = [e for t, e in exprs.items() if t.startswith(title)]
            assert metric in hit, title
        (versus,) = [e for t, e in exprs.items() if t.startswith("live vs shadow")]
        assert "by (le, model)" in versus and "by (model)" in versus

    def test_shows_the_model_lifecycle(self) -> None:
        """The learning loop's decisions are on the dashboard: candidates by result, promotions by
        reason, rollbacks, and the shadow's trial."""
        exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
        for metric in ("vigil_model_candidates_total", "vigil_model_promotions_total",
                       "vigil_model_rollbacks_total", "vigil_model_trial_seconds", "vigil_refit_running"):
            assert metric in exprs, metric

    def test_latency_panels_show_quantiles(self) -> None:
        """The inference latency panel plots p50, p90 and p99 from the histogram's buckets."""
        (panel,) = [p for p in panels() if p["title"].lower().startswith("inference latency")]
        exprs = [t["expr"] for t in panel["targets"]]
        quantiles = [re.findall(r"histogram_quantile\((0\.\d+)", e) for e in exprs]
        assert quantiles == [["0.5"], ["0.9"], ["0.99"]]
        assert all("vigil_inference_duration_seconds_bucket" in e for e in exprs)

    def test_asset_variable_drives_the_timeline(self) -> None:
        """An `asset` variable lists the assets from vigil_asset_risk and the risk timeline filters on it."""
        variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
        assert "vigil_asset_risk" in variables["asset"]["query"]["query"]
        assert variables["asset"]["multi"] and variables["asset"]["includeAll"]
        (timeline,) = [p for p in panels() if "timeline" in p["title"].lower()]
        assert 'asset=~"$asset"' in timeline["targets"][0]["expr"]

    def test_counts_of_assets_use_the_fleet_series(self) -> None:
        """Only the top-risk bar gauge and the per-asset timeline read per-asset series (bounded by
        [metrics] per_asset); counts of assets and the risk distribution read the fleet series."""
        per_asset = re.compile(r"vigil_asset_(risk|level)\b")
        readers = {p["title"] for p in panels() for t in p["targets"] if per_asset.search(t["expr"])}
        assert readers == {"Fleet risk (top 40, latest, highest first)", "Risk timeline ($asset)"}
        exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
        assert 'vigil_assets_by_level{instance=~"$instance", level="critical"}' in exprs["Assets at critical"]
        assert 'vigil_assets_by_level{instance=~"$instance", level="warning"}' in exprs["Assets at warning"]
        assert "vigil_assets_omitted" in exprs["Assets with their own risk series"]
        for title in ("Fleet risk distribution (assets per risk band)", "Fleet risk p50 / p90"):
            assert "vigil_asset_risk_distribution_bucket" in exprs[title], title

    def test_variables_are_defined(self) -> None:
        """Every $variable used in a query or title is a dashboard variable or a Grafana built-in."""
        defined = {v["name"] for v in dashboard()["templating"]["list"]} | BUILTIN_VARS
        text = json.dumps(dashboard()["panels"])
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used - defined == set()

    def test_every_query_uses_the_datasource_variable(self) -> None:
        """Panels and targets use the ${datasource} variable, so any provisioned Prometheus works."""
        for p in panels():
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]

    def test_layout(self) -> None:
        """Panel ids are unique and no two panels overlap on the 24-column grid."""
        all_panels = dashboard()["panels"]
        ids = [p["id"] for p in all_panels]
        assert len(ids) == len(set(ids))
        cells: dict[tuple[int, int], str] = {}
        for p in all_panels:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]

    def test_identity(self) -> None:
        """The dashboard has a fixed uid and title, so provisioning updates it in place."""
        d = dashboard()
        assert d["uid"] == "vigil-agents" and d["title"].startswith("Vigil")
        assert d["schemaVersion"] >= 36


class TestProvisioning:
    def test_datasource(self) -> None:
        """The datasource provisioning file declares one Prometheus datasource with a fixed uid."""
        doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "vigil.yaml").read_text())
        assert doc["apiVersion"] == 1
        (ds,) = doc["datasources"]
        assert ds["type"] == "prometheus" and ds["uid"] and ds["url"].startswith("http")

    def test_dashboard_provider(self) -> None:
        """The dashboard provider loads files from a folder, into a Vigil folder in Grafana."""
        doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vigil.yaml").read_text())
        assert doc["apiVersion"] == 1
        (provider,) = doc["providers"]
        assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
        assert provider["folder"] == "Vigil"
