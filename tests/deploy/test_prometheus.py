"""deploy/prometheus: promtool, amtool and a real Prometheus server scraping a live agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.broker import wait_until
from tests.deploy.conftest import TOP_ASSETS, TOP_LIMIT, LiveAgent
from tests.deploy.promql import metric_names, scrape_names
from tests.deploy.servers import Prometheus, prometheus_config
from tests.deploy.tools import DEPLOY, run_tool

PROM = DEPLOY / "prometheus"
# Series Prometheus makes itself for every target rather than reading them from a scrape.
SYNTHETIC = {"up"}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM / "vigil-rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard: panel targets and query variables."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "vigil.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = var["query"]["query"]  # label_values(SELECTOR, label)
            exprs.append(inner.removeprefix("label_values(").rsplit(",", 1)[0])
    return exprs


def as_query(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana would send it."""
    for var, value in (("$__rate_interval", "15s"), ("$__range", "5m"), ("$__interval", "5s"),
                       ("$instance", ".+"), ("$asset", ".+")):
        expr = expr.replace(var, value)
    return expr


class TestPromtool:
    def test_config_is_valid(self) -> None:
        """`promtool check config` accepts the shipped prometheus.yml and the rule files it names."""
        proc = run_tool("promtool", "check", "config", "prometheus.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 rule files found" in proc.stdout

    def test_rules_are_valid(self) -> None:
        """`promtool check rules` accepts vigil-rules.yml."""
        proc = run_tool("promtool", "check", "rules", "vigil-rules.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{len(rules())} rules found" in proc.stdout

    def test_rule_unit_tests_pass(self) -> None:
        """`promtool test rules` passes every rule unit test file (*.test.yml)."""
        files = sorted(p.name for p in PROM.glob("*.test.yml"))
        proc = run_tool("promtool", "test", "rules", *files, cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("SUCCESS") == len(files) == 2

    def test_every_alert_has_a_firing_unit_test(self) -> None:
        """Each alert in vigil-rules.yml is expected to fire in at least one rule unit test."""
        docs = [yaml.safe_load(p.read_text()) for p in PROM.glob("*.test.yml")]
        fired = {case["alertname"] for doc in docs for t in doc["tests"]
                 for case in t["alert_rule_test"] if case["exp_alerts"]}
        assert {r["alert"] for r in rules()} - fired == set()

    def test_the_issue_alerts_are_there(self) -> None:
        """The alerts the deployment issue asks for exist, each with a severity and a summary."""
        by_name = {r["alert"]: r for r in rules()}
        assert {"VigilAgentDown", "VigilBrokerDisconnected", "VigilOutboxGrowing", "VigilAssetCritical",
                "VigilModelStale", "VigilModelReloadFailing", "VigilReadingsRejected",
                "VigilInferenceSlow"} <= set(by_name)
        for r in by_name.values():
            assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


class TestAlertmanager:
    def test_config_is_valid(self) -> None:
        """`amtool check-config` accepts the example alertmanager.yml."""
        proc = run_tool("amtool", "check-config", "alertmanager.yml", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    @pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
    def test_routes_by_severity(self, rule: dict[str, Any]) -> None:
        """`amtool config routes test` sends each Vigil alert to the pager if critical, else to email."""
        severity = rule["labels"]["severity"]
        want = "on-call-pager" if severity == "critical" else "maintenance-email"
        proc = run_tool("amtool", "config", "routes", "test", "--config.file=alertmanager.yml",
                        f"--verify.receivers={want}", f"alertname={rule['alert']}", f"severity={severity}",
                        "instance=gw-01:9108", cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestMetricNames:
    def test_extractor(self) -> None:
        """metric_names finds selected metrics and skips functions, labels, keywords and durations."""
        expr = ('histogram_quantile(0.99, sum by (job, le) (rate(vigil_inference_duration_seconds_bucket'
                '{instance=~"$instance", le!="foo_total"}[$__rate_interval]))) > 0.5 and on (job) up == 1'
                " unless vigil_outbox_depth offset 5m or time() - 1e3")
        assert metric_names(expr) == {"vigil_inference_duration_seconds_bucket", "up", "vigil_outbox_depth"}

    def test_rules_and_dashboard_name_only_agent_metrics(self) -> None:
        """Every name the rules and the dashboard query is a vigil_ metric (or Prometheus's own `up`)."""
        names = set().union(*(metric_names(r["expr"]) for r in rules()),
                            *(metric_names(q) for q in dashboard_queries()))
        assert {n for n in names if not n.startswith("vigil_")} <= SYNTHETIC

    @pytest.mark.integration
    def test_rules_use_only_exported_metrics(self, live_agent: LiveAgent) -> None:
        """Every metric named in an alert rule is in a live scrape of the agent."""
        exported = scrape_names(live_agent.scrape()) | SYNTHETIC
        unknown = {r["alert"]: metric_names(r["expr"]) - exported for r in rules()}
        assert {k: v for k, v in unknown.items() if v} == {}

    @pytest.mark.integration
    def test_dashboard_uses_only_exported_metrics(self, live_agent: LiveAgent) -> None:
        """Every metric named in a dashboard query or variable is in a live scrape of the agent."""
        exported = scrape_names(live_agent.scrape()) | SYNTHETIC
        unknown = {q: metric_names(q) - exported for q in dashboard_queries()}
        assert {k: v for k, v in unknown.items() if v} == {}

    @pytest.mark.integration
    def test_live_scrape_passes_promtool_check_metrics(self, live_agent: LiveAgent) -> None:
        """`promtool check metrics` finds no problem in a live scrape of a scoring agent."""
        proc = run_tool("promtool", "check", "metrics", stdin=live_agent.scrape())
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
            proc.stdout + proc.stderr


    @pytest.mark.integration
    def test_top_n_scrape_names_everything_and_passes_promtool(self, top_agent: LiveAgent) -> None:
        """With per-asset series for only the top few assets, a scrape still exports every metric the
        rules and the dashboard name, and `promtool check metrics` finds no problem in it."""
        text = top_agent.scrape()
        exported = scrape_names(text) | SYNTHETIC
        names = set().union(*(metric_names(r["expr"]) for r in rules()),
                            *(metric_names(q) for q in dashboard_queries()))
        assert names - exported == set()
        proc = run_tool("promtool", "check", "metrics", stdin=text)
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
            proc.stdout + proc.stderr


def serve(target: LiveAgent, workdir: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus with the shipped scrape config and rules, pointed at one agent."""
    server = Prometheus(prometheus_config(workdir, target.address), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus(live_agent: LiveAgent, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the agent that exports every asset's series."""
    yield from serve(live_agent, tmp_path)


@pytest.fixture
def prometheus_top(top_agent: LiveAgent, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the agent that exports the series of its top TOP_LIMIT assets only."""
    yield from serve(top_agent, tmp_path)


def wait_target_up(prometheus: Prometheus) -> None:
    def target_up() -> bool:
        active = prometheus.api("targets", state="active")["activeTargets"]
        return any(t["labels"]["job"] == "vigil" and t["health"] == "up" for t in active)
    wait_until(target_up, 60, interval=0.2, what="the vigil target to be up")


def evaluated_rules(prometheus: Prometheus) -> list[dict[str, Any]]:
    """Every alert rule once each has been evaluated at least once (empty until then)."""
    groups = prometheus.api("rules", type="alert")["groups"]
    got = [r for g in groups for r in g["rules"]]
    return got if len(got) == len(rules()) and all(r["lastEvaluation"][:4] != "0001" for r in got) else []


def query_at(prometheus: Prometheus, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query, at the unix time `at` if given (queries at one time see one scrape)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    result: list[dict[str, Any]] = prometheus.api("query", **params)["result"]
    return result


def value(prometheus: Prometheus, expr: str, at: float | None = None) -> float | None:
    """The single value of an instant query without labels left (None: no data)."""
    result = query_at(prometheus, expr, at)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.integration
def test_prometheus_scrapes_agent(prometheus: Prometheus, live_agent: LiveAgent) -> None:
    """A real Prometheus with the shipped config finds the agent up, stores a risk series per asset,
    evaluates every rule without error or alert, and answers every dashboard query with data."""
    wait_target_up(prometheus)
    (target,) = prometheus.api("targets", state="active")["activeTargets"]
    assert target["labels"]["gateway"] == "127.0.0.1"  # the shipped relabelling ran
    assert target["scrapeUrl"] == f"http://{live_agent.address}/metrics"

    def risk_series() -> set[str]:
        return {r["metric"]["asset"] for r in prometheus.query('vigil_asset_risk{job="vigil"}')}
    wait_until(lambda: risk_series() >= set(live_agent.assets), 60, interval=0.2,
               what="a risk series per asset")
    assert prometheus.query('up{job="vigil"}')[0]["value"][1] == "1"

    # Every dashboard query is valid PromQL and has data once a few scrapes are in.
    queries = [as_query(q) for q in dashboard_queries()]
    def all_answer() -> bool:
        return all(prometheus.query(q) for q in queries)
    wait_until(all_answer, 60, interval=0.5, what="data for every dashboard query")

    # Every rule has been evaluated without error, and none fires for a healthy agent. Asset
    # alerts follow the simulated plant; latency and scrape alerts may turn pending (never
    # firing, their `for` is minutes) on a loaded CI machine. The unit tests cover the logic.
    wait_until(lambda: evaluated_rules(prometheus), 60, interval=0.2, what="every rule evaluated")
    got = evaluated_rules(prometheus)
    assert [(r["name"], r["health"], r.get("lastError")) for r in got if r["health"] != "ok"] == []
    states = {r["name"]: r["state"] for r in got if r["name"] != "VigilAssetCritical"}
    load_dependent = {"VigilAgentDown", "VigilInferenceSlow", "VigilRiskLate"}
    unexpected = {n: s for n, s in states.items()
                  if s == "firing" or (s == "pending" and n not in load_dependent)}
    assert unexpected == {}


@pytest.mark.integration
def test_prometheus_at_top_n(prometheus_top: Prometheus, top_agent: LiveAgent) -> None:
    """An agent exporting per-asset series for its top TOP_LIMIT of TOP_ASSETS assets: in a real
    Prometheus the fleet series still count every asset, exactly TOP_LIMIT assets have a risk
    series at any instant, the dashboard's fleet panels give those numbers, every dashboard query
    has data and every rule is evaluated without error."""
    prometheus = prometheus_top
    wait_target_up(prometheus)
    sel = '{job="vigil"}'
    wait_until(lambda: value(prometheus, f"sum(vigil_assets_by_level{sel})") == TOP_ASSETS, 60,
               interval=0.2, what="every asset counted by level")
    # Every query below at the time of one scrape: they all see that scrape, while the
    # simulated plant keeps changing which assets are the riskiest.
    at = value(prometheus, f"timestamp(vigil_assets_omitted{sel})")
    assert at is not None
    assert value(prometheus, f"count(vigil_asset_risk{sel})", at) == TOP_LIMIT
    assert value(prometheus, f"count(vigil_asset_level{sel})", at) == TOP_LIMIT
    assert value(prometheus, f"sum(vigil_assets_omitted{sel})", at) == TOP_ASSETS - TOP_LIMIT
    assert value(prometheus, 'sum(vigil_asset_risk_distribution_bucket{job="vigil", le="+Inf"})', at) \
        == TOP_ASSETS
    exported = {r["metric"]["asset"] for r in query_at(prometheus, f"vigil_asset_risk{sel}", at)}
    assert len(exported) == TOP_LIMIT and exported <= set(top_agent.assets)

    # The dashboard's fleet panels, as Grafana sends them.
    dash = {p["title"]: [as_query(t["expr"]) for t in p["targets"]]
            for p in json.loads((DEPLOY / "grafana" / "dashboards" / "vigil.json").read_text())["panels"]
            if p.get("targets")}
    shown, of = dash["Assets with their own risk series"]
    assert (value(prometheus, shown, at), value(prometheus, of, at)) == (TOP_LIMIT, TOP_ASSETS)
    for title, level in (("Assets at critical", "critical"), ("Assets at warning", "warning")):
        want = value(prometheus, f'sum(vigil_assets_by_level{{job="vigil", level="{level}"}})', at)
        assert want is not None and value(prometheus, dash[title][0], at) == want, title
    bands = query_at(prometheus, dash["Fleet risk distribution (assets per risk band)"][0], at)
    assert len(bands) == 12 and max(float(b["value"][1]) for b in bands) == TOP_ASSETS
    top = query_at(prometheus, dash["Fleet risk (top 40, latest, highest first)"][0], at)
    assert {r["metric"]["asset"] for r in top} == exported
    p50, p90 = (value(prometheus, q, at) for q in dash["Fleet risk p50 / p90"])
    assert p50 is not None and p90 is not None and 0 <= p50 <= p90 <= 1

    queries = [as_query(q) for q in dashboard_queries()]
    wait_until(lambda: all(prometheus.query(q) for q in queries), 60, interval=0.5,
               what="data for every dashboard query")
    wait_until(lambda: evaluated_rules(prometheus), 60, interval=0.2, what="every rule evaluated")
    got = evaluated_rules(prometheus)
    assert [(r["name"], r["health"], r.get("lastError")) for r in got if r["health"] != "ok"] == []


def test_scrape_port_matches_the_shipped_configs() -> None:
    """The shipped scrape target uses the port the systemd, container and Kubernetes configs listen on."""
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "vigil"]
    ports = {t.rsplit(":", 1)[1] for s in job["static_configs"] for t in s["targets"]}
    listens = {(DEPLOY / f).read_text().split('listen = "', 1)[1].split('"', 1)[0].rsplit(":", 1)[1]
               for f in ("systemd/agent.toml", "docker/agent.toml", "kubernetes/base/configmap.yaml")}
    assert ports == listens == {"9108"}
