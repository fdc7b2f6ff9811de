"""Health: what the poller's and the worker's ``/livez`` and ``/readyz`` answer, and ``cloacina health``.

The model (the chart's and compose's probes follow it):

- **live** (``/livez``, liveness and startup probes): the process's own loop is alive: the poller's maintenance
  loop ticked recently; the worker's event loop ticks, or its consumer is waiting for the broker
  (:mod:`cloacina.dispatch.worker_probe`). It never depends on Redis or PostgreSQL: an outage of theirs must not
  restart healthy pods. Not live before the loop first ran (a startup probe waits for that).
- **ready** (``/readyz``, readiness probes): live, and the dependencies answer: the database is reachable with a
  schema this code can run on (:meth:`~cloacina.store.database.Database.schema_status`), Redis (and the broker if
  it is another server) answers ``PING``, and the worker consumes.

Dependencies are checked by a :class:`DependencyMonitor` on a thread of its own every few seconds; a probe reads
the latest results, so it answers at once and costs nothing, however often it comes. ``cloacina health`` asks the
local process's endpoint over HTTP (no Celery broadcast: a probe checks this pod's own process), or, for
``--component all``, checks the connections itself.

Each ``check_*`` returns ``(ok, detail)``; it never raises and never waits much longer than its timeout, and
``detail`` is one line without any password (it goes through :func:`~cloacina.observability.logs.redact`).

>>> check_redis("redis://:secret@127.0.0.1:1/0", timeout_s=0.5)[1].startswith("redis://:***@127.0.0.1:1/0: ")
True
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cloacina.observability.logs import redact

Component = Literal["poller", "worker", "web", "all"]
Probe = Literal["live", "ready"]
CheckResult = tuple[bool, str]
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
COMPONENTS: tuple[str, ...] = ("poller", "worker", "web", "all")
PROBES: tuple[str, ...] = ("live", "ready")
WEB_PORT_ENV = "CLOACINA_WEB_PORT"


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = " ".join(str(reason).split()) or repr(reason)
    return redact(f"{type(reason).__name__}: {text}")


# -- connections -----------------------------------------------------------------------------------------
def check_database(url: str, schema: str | None = None, timeout_s: float = 5.0) -> CheckResult:
    """Connect to ``url`` (in PostgreSQL ``schema`` if given), run ``SELECT 1``, and require a schema this code can
    run on (its own migration, or a newer compatible one). A SQLite file that does not exist is reported as such
    (and not created)."""
    from sqlalchemy.engine import make_url

    from cloacina.store.database import Database
    from cloacina.store.urls import parse_database_url

    try:
        parsed = parse_database_url(url)
    except Exception as exc:
        return False, _describe(exc)
    where = parsed.display + (f" (schema {schema})" if schema else "")
    if parsed.dialect == "sqlite" and not parsed.is_memory:
        path = make_url(parsed.sqlalchemy_url).database
        if path and not Path(path).exists():
            return False, f"{where}: database file does not exist; run `cloacina db upgrade`"
    if parsed.dialect == "postgresql" and "connect_timeout=" not in url:
        url += ("&" if "?" in url else "?") + f"connect_timeout={max(1, round(timeout_s))}"
    shown_with_timeout = parse_database_url(url).display
    db = None
    try:
        db = Database(url, schema=schema, pool_size=1)
        db.ping()
        status = db.schema_status()
    except Exception as exc:
        message = _describe(exc)
        return False, message if parsed.display in message else f"{where}: {message}"
    finally:
        if db is not None:
            db.dispose()
    if not status.compatible:
        return False, redact(status.detail).replace(shown_with_timeout, parsed.display)
    if status.relation == "newer":
        return True, f"{where}: reachable, schema at migration {status.current} (newer, compatible)"
    return True, f"{where}: reachable, schema at migration {status.current}"


def check_redis(url: str, timeout_s: float = 2.0) -> CheckResult:
    """``PING`` the Redis at ``url`` with short connect and read timeouts and no retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    shown = redact(url)
    started = time.perf_counter()
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except Exception as exc:
        return False, f"{shown}: {_describe(exc)}"
    try:
        client.ping()
    except Exception as exc:
        return False, f"{shown}: {_describe(exc)}"
    finally:
        client.close()
    return True, f"{shown}: PONG in {(time.perf_counter() - started) * 1000:.1f} ms"


def check_endpoint(url: str, timeout_s: float = 3.0) -> CheckResult:
    """``GET url`` (a process's ``/readyz`` or ``/livez``): healthy on ``200``; its own report is the detail."""
    shown = redact(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except Exception as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, f"{shown}: no answer ({_describe(reason) if isinstance(reason, BaseException) else reason})"
    return status == 200, f"{shown}: HTTP {status} {_summary(body, healthy=status == 200)}"


def _summary(body: bytes, healthy: bool) -> str:
    """One line about a probe's body: ``healthy``, else each failing part's detail (or the compact body).

    Failing parts are recognised in this module's shape (``{"part": {"ok": false, "detail": ...}}``, also under
    ``checks``); any other JSON shape is shown compactly.
    """
    if healthy:
        return "healthy"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    failing: list[str] = []
    if isinstance(doc, dict):
        checks = doc.get("checks")
        parts: dict[str, Any] = checks if isinstance(checks, dict) else doc
        failing = [
            f"{k}: {v.get('detail', '')}" for k, v in parts.items() if isinstance(v, dict) and v.get("ok") is False
        ]
        if "error" in doc:
            failing.append(str(doc["error"]))
    text = "; ".join(failing) if failing else " ".join(body.decode(errors="replace").split())
    return redact(text[:500])


# -- the dependency monitor ------------------------------------------------------------------------------
class DependencyMonitor:
    """Runs ``checks`` every ``interval_s`` on a daemon thread; :meth:`snapshot` returns the latest results at once.

    A result older than ``stale_after_s`` counts as failed (a check that hangs must not look healthy), and so does
    a check that has not answered yet. Tests call :meth:`run_once` instead of starting the thread.
    """

    def __init__(
        self,
        checks: dict[str, Callable[[], CheckResult]],
        *,
        interval_s: float = 5.0,
        stale_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.checks = checks
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s if stale_after_s is not None else 3 * interval_s + 10
        self._clock = clock
        self._lock = threading.Lock()
        self._results: dict[str, tuple[float, bool, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """Run every check (concurrently) and record its result."""
        if not self.checks:
            return
        with ThreadPoolExecutor(len(self.checks), thread_name_prefix="cloacina-health") as pool:
            futures = {name: pool.submit(_guarded, fn) for name, fn in self.checks.items()}
            for name, future in futures.items():
                ok, detail = future.result()
                with self._lock:
                    self._results[name] = (self._clock(), ok, detail)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{check: {"ok", "detail"}}`` from the latest results."""
        now = self._clock()
        parts: dict[str, dict[str, Any]] = {}
        with self._lock:
            for name in self.checks:
                found = self._results.get(name)
                if found is None:
                    parts[name] = {"ok": False, "detail": "not checked yet"}
                elif now - found[0] > self.stale_after_s:
                    parts[name] = {"ok": False, "detail": f"no result for {now - found[0]:.0f}s (the check hangs)"}
                else:
                    parts[name] = {"ok": found[1], "detail": found[2]}
        return parts

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cloacina-dependency-monitor", daemon=True)
            self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_once()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))


def _guarded(fn: Callable[[], CheckResult]) -> CheckResult:
    try:
        return fn()
    except Exception as exc:  # a check is written not to raise; a bug in one must not hide the others
        return False, f"check failed: {_describe(exc)}"


def connection_checks(settings: Any, *, schema: str | None = None, timeout_s: float = 2.0) -> dict[str, Any]:
    """The dependency checks of a service: ``database``, ``redis`` and (another server) ``broker``."""
    checks: dict[str, Callable[[], CheckResult]] = {
        "database": lambda: check_database(
            settings.database_url, schema=schema or settings.database_schema, timeout_s=timeout_s
        ),
    }
    redis_url = settings.effective_redis_url
    if redis_url:
        checks["redis"] = lambda: check_redis(redis_url, timeout_s=timeout_s)
    else:
        checks["redis"] = lambda: (False, "not configured: set CLOACINA_BROKER_URL (or CLOACINA_REDIS_URL)")
    if settings.broker_url and settings.broker_url != redis_url:
        checks["broker"] = lambda: check_redis(settings.broker_url, timeout_s=timeout_s)
    return checks


# -- the probes of the services --------------------------------------------------------------------------
@dataclass
class Probes:
    """A service's ``live`` and ``ready`` checks and the monitor feeding ``ready``; :meth:`start` the monitor with
    the HTTP server, :meth:`stop` it with the service."""

    live: HealthCheck
    ready: HealthCheck
    monitor: DependencyMonitor

    def start(self) -> None:
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()


def _probes(
    name: str, own_live: Callable[[], CheckResult], own_ready: Callable[[], CheckResult], monitor: DependencyMonitor
) -> Probes:
    """``live``: the process's own check; ``ready``: its own readiness and every dependency of ``monitor``."""

    def live() -> tuple[bool, dict[str, Any]]:
        ok, detail = own_live()
        return ok, {name: {"ok": ok, "detail": detail}}

    def ready() -> tuple[bool, dict[str, Any]]:
        ok, detail = own_ready()
        parts = {name: {"ok": ok, "detail": detail}, **monitor.snapshot()}
        return all(p["ok"] for p in parts.values()), parts

    return Probes(live, ready, monitor)


def check_loop(metrics: Any, max_tick_age_s: float) -> CheckResult:
    """Is the poller loop ticking? ``metrics`` is a :class:`~cloacina.observability.metrics.Metrics`."""
    age = metrics.seconds_since_tick()
    if age is None:
        return False, "the loop has not completed a pass yet"
    if age > max_tick_age_s:
        return False, f"the loop's last pass was {age:.1f}s ago (limit {max_tick_age_s:g}s): stuck or dead"
    return True, f"last pass {age:.2f}s ago"


def poller_probes(
    metrics: Any, settings: Any, *, max_tick_age_s: float = 60.0, monitor: DependencyMonitor | None = None
) -> Probes:
    """The poller's probes: live while its maintenance loop ticks (``metrics.tick``), ready when the connections
    work too."""
    loop = lambda: check_loop(metrics, max_tick_age_s)  # noqa: E731
    return _probes("loop", loop, loop, monitor or DependencyMonitor(connection_checks(settings)))


def worker_probes(settings: Any, *, state: Any = None, monitor: DependencyMonitor | None = None) -> Probes:
    """The worker's probes, from its own Celery consumer (``state``: a
    :class:`~cloacina.dispatch.worker_probe.WorkerProbeState`, default this process's)."""
    from cloacina.dispatch import worker_probe

    own = state or worker_probe.STATE
    return _probes("worker", own.live, own.ready, monitor or DependencyMonitor(connection_checks(settings)))


# -- cloacina health -------------------------------------------------------------------------------------
def default_probe_url(settings: Any, component: str = "poller", probe: str = "ready") -> str | None:
    """The local process's probe: ``http://127.0.0.1:<port>/<probe>z``, the metrics port for poller and worker,
    ``CLOACINA_WEB_PORT`` (8080) for web; ``None`` when the port is not configured."""
    if component == "web":
        port: Any = os.environ.get(WEB_PORT_ENV, "8080")
    else:
        port = getattr(settings, "metrics_port", None)
    return f"http://127.0.0.1:{port}/{probe}z" if port else None


def run_health(
    component: Component,
    settings: Any,
    *,
    url: str | None = None,
    probe: Probe = "ready",
    schema: str | None = None,
    timeout_s: float = 5.0,
) -> tuple[bool, dict[str, Any]]:
    """Check ``component``; returns ``(ok, report)``.

    ``poller``, ``worker``, ``web``: ``GET`` the process's own ``/readyz`` (``probe="live"``: ``/livez``) at ``url``
    (default :func:`default_probe_url`); nothing else is contacted. ``all``: database, Redis (and the broker if it is
    another server), concurrently, plus the local process's probe when ``url`` is given. Report:
    ``{"component", "ok", "checks": {name: {"ok", "detail"}}}``.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    checks: dict[str, Callable[[], CheckResult]] = {}
    if component == "all":
        checks.update(connection_checks(settings, schema=schema, timeout_s=min(timeout_s, 5.0)))
        if url:
            checks["process"] = lambda: check_endpoint(url, timeout_s=timeout_s)
    else:
        target = url or default_probe_url(settings, component, probe)
        if target:
            checks[component] = lambda: check_endpoint(target, timeout_s=timeout_s)
        else:
            checks[component] = lambda: (
                False,
                f"no /{probe}z to ask: set CLOACINA_METRICS_PORT (as on the {component}) or pass --url",
            )
    monitor = DependencyMonitor(checks)
    monitor.run_once()
    report_checks = monitor.snapshot()
    ok = all(part["ok"] for part in report_checks.values())
    return ok, {"component": component, "ok": ok, "checks": report_checks}
