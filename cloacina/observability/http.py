"""A small HTTP server for a service's ``/metrics``, ``/livez`` and ``/readyz``, on a daemon thread.

- ``/metrics``: the registry in the Prometheus text format (``prometheus_client.generate_latest``).
- ``/livez``: ``live()`` is called per request: is the process's own loop alive? (A liveness probe: it must never
  depend on Redis or the database, or an outage of theirs restarts every healthy pod.) Default: always alive.
- ``/readyz``: ``health()`` (readiness: dependencies reachable, schema compatible). ``/healthz`` is its older name.
- Each answers ``200`` and its details as JSON when the check says yes, ``503`` otherwise (also when it raises:
  the error is the detail). Anything else: ``404``. No access log: probes every few seconds would drown the
  service's own log. Checks must answer at once (the services' checks read state other threads keep fresh).

>>> from cloacina.observability.metrics import Metrics
>>> server = start_http_server(0, Metrics().registry, lambda: (True, {"loop": "ok"}), host="127.0.0.1")
>>> import urllib.request
>>> urllib.request.urlopen(server.url + "/healthz", timeout=5).status
200
>>> server.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cloacina.observability.logs import redact

log = logging.getLogger("cloacina.http")
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class ObservabilityServer(ThreadingHTTPServer):
    """The running server: :attr:`port` (the bound one, useful with port 0), :attr:`url`, :meth:`stop`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: HealthCheck, live: HealthCheck | None = None
    ) -> None:
        super().__init__((host, port), _Handler)
        self.registry = registry
        self.health = health
        self.live = live or _always_live
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` (``0.0.0.0`` is shown as ``127.0.0.1``, the address a local client uses)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="cloacina-http", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(wait_s)
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ObservabilityServer
    server_version = "cloacina"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path in ("/readyz", "/healthz", "/livez"):
            ok, details = self._check(self.server.live if path == "/livez" else self.server.health)
            body = json.dumps({"ok": ok, **details}, default=str, sort_keys=True).encode()
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n", "text/plain; charset=utf-8")

    def _check(self, check: HealthCheck) -> tuple[bool, dict[str, Any]]:
        try:
            ok, details = check()
            return bool(ok), dict(details)
        except Exception as exc:
            log.warning("health check raised: %s", redact(f"{type(exc).__name__}: {exc}"))
            return False, {"error": redact(f"health check raised {type(exc).__name__}: {exc}")}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _always_live() -> tuple[bool, dict[str, Any]]:
    return True, {"process": "serving"}


def start_http_server(
    port: int,
    registry: CollectorRegistry,
    health: HealthCheck,
    host: str = "0.0.0.0",
    *,
    live: HealthCheck | None = None,
) -> ObservabilityServer:
    """Serve ``/metrics``, ``/livez`` (``live``) and ``/readyz`` (``health``) on ``host:port`` (``0``: any free port)
    from a daemon thread."""
    server = ObservabilityServer(host, port, registry, health, live)
    server.start()
    log.info("serving /metrics, /livez and /readyz on %s", server.url)
    return server
