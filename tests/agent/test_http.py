"""The HTTP endpoint: /metrics, /healthz and /readyz on loopback, port 0."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent.http import HealthServer

Checks = dict[str, bool]


ALL_READY: Checks = {"connected": True, "subscribed": True, "model_loaded": True}


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[HealthServer, Checks]]:
    """One server for the module (shutdown waits out serve_forever's 0.5 s poll)."""
    registry = CollectorRegistry()
    Counter("demo_things", "Things seen.", registry=registry).inc(3)
    checks: Checks = dict(ALL_READY)
    srv = HealthServer("127.0.0.1", 0, registry, lambda: dict(checks))
    srv.start()
    yield srv, checks
    srv.stop()


@pytest.fixture
def server(running: tuple[HealthServer, Checks]) -> tuple[HealthServer, Checks]:
    """The module's server with every readiness check reset to true."""
    running[1].update(ALL_READY)
    return running


def get(srv: HealthServer, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (error statuses included)."""
    url = f"http://127.0.0.1:{srv.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


class TestHealthServer:
    def test_binds_a_free_port(self, server: tuple[HealthServer, Checks]) -> None:
        """Port 0 picks a real free port."""
        assert server[0].port > 0

    def test_metrics(self, server: tuple[HealthServer, Checks]) -> None:
        """/metrics serves the registry's exposition text."""
        code, ctype, body = get(server[0], "/metrics")
        assert code == 200
        assert ctype.startswith("text/plain")
        assert "demo_things_total 3.0" in body.decode()

    def test_healthz(self, server: tuple[HealthServer, Checks]) -> None:
        """/healthz answers 200 while the process is alive."""
        assert get(server[0], "/healthz")[0] == 200

    def test_readyz_ready(self, server: tuple[HealthServer, Checks]) -> None:
        """/readyz is 200 with every check true."""
        code, ctype, body = get(server[0], "/readyz")
        assert code == 200
        assert ctype == "application/json"
        assert json.loads(body) == {"ready": True, "checks": server[1]}

    def test_readyz_not_ready_names_the_check(self, server: tuple[HealthServer, Checks]) -> None:
        """/readyz is 503 with JSON naming the failing check."""
        server[1]["connected"] = False
        code, _, body = get(server[0], "/readyz")
        doc = json.loads(body)
        assert code == 503
        assert doc["ready"] is False
        assert [k for k, ok in doc["checks"].items() if not ok] == ["connected"]

    def test_query_string_ignored(self, server: tuple[HealthServer, Checks]) -> None:
        """A query string does not change which endpoint answers."""
        assert get(server[0], "/healthz?verbose=1")[0] == 200

    def test_unknown_path(self, server: tuple[HealthServer, Checks]) -> None:
        """Any other path is 404."""
        assert get(server[0], "/nope")[0] == 404

    def test_stop_closes_the_port(self) -> None:
        """After stop() the port no longer answers."""
        srv = HealthServer("127.0.0.1", 0, CollectorRegistry(), lambda: {})
        srv.start()
        assert get(srv, "/healthz")[0] == 200
        srv.stop()
        with pytest.raises(urllib.error.URLError):
            get(srv, "/healthz")
