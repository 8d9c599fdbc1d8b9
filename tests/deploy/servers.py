"""Real servers started from the shipped configs on free loopback ports, stopped by their PID."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.broker import free_port, wait_until
from tests.deploy.tools import DEPLOY, tool
from tests.procs import http_get


def prometheus_config(workdir: Path, target: str, interval: str = "1s") -> Path:
    """deploy/prometheus/prometheus.yml pointed at `target`, scraping and evaluating every `interval`.

    Everything else (job name, relabelling, rule files) is used as shipped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = interval
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "vigil"]
    job["scrape_timeout"] = interval
    (static,) = job["static_configs"]
    static["targets"] = [target]
    # No Alertmanager in this test: a closed loopback port, never the default 9093.
    cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{free_port()}"]
    for rules in cfg["rule_files"]:
        shutil.copy(DEPLOY / "prometheus" / rules, workdir / rules)
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Prometheus:
    """A Prometheus server of our own, queried through its HTTP API."""

    config: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={self.workdir / 'data'}", "--storage.tsdb.retention.time=1h",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            return http_get(self.base + "/-/ready")[0] == 200
        wait_until(ready, 30, interval=0.1, what="prometheus /-/ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, or raises with Prometheus's error."""
        code, body = http_get(f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=5)
        doc = json.loads(body) if body else {}
        if code != 200 or doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {code}: {doc.get('error', body[:500])}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result
