"""The HTTP endpoint: /metrics for Prometheus, /healthz (alive) and /readyz (ready to serve)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    """Serves the three endpoints on a background thread; port 0 picks a free port."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 readiness: Callable[[], dict[str, bool]],
                 detail: Callable[[], dict[str, Any]] | None = None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    outer._send(self, 200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    checks = readiness()
                    ok = all(checks.values())
                    doc = {"ready": ok, "checks": checks, **(detail() if detail is not None else {})}
                    body = json.dumps(doc).encode() + b"\n"
                    outer._send(self, 200 if ok else 503, body, "application/json")
                else:
                    outer._send(self, 404, b"not found\n", "text/plain")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="vigil-http", daemon=True)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
