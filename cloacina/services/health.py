"""Health checks: the component's own liveness and its connections, for ``cloacina health`` and ``/healthz``.

Each ``check_*`` returns ``(ok, detail)``; it never raises and never waits much longer than its timeout, and
``detail`` is one line without any password (it goes through :func:`~cloacina.observability.logs.redact`).

- :func:`check_database`: connect, ``SELECT 1``, schema at the newest migration.
- :func:`check_redis`: ``PING``.
- :func:`check_poller`: ``GET /healthz`` of a running poller (its loop is ticking and its connections work).
- :func:`check_worker`: a Celery ``ping`` broadcast; healthy if at least one worker answers.
- :func:`run_health`: the checks of one component (``poller``, ``worker`` or ``all``), run concurrently.
- :func:`poller_health`: the callable a poller gives :func:`~cloacina.observability.http.start_http_server`.

>>> check_redis("redis://:secret@127.0.0.1:1/0", timeout_s=0.5)[1].startswith("redis://:***@127.0.0.1:1/0: ")
True
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from cloacina.observability.logs import redact

Component = Literal["poller", "worker", "all"]
CheckResult = tuple[bool, str]
COMPONENTS: tuple[str, ...] = ("poller", "worker", "all")


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    text = " ".join(str(reason).split()) or repr(reason)
    return redact(f"{type(reason).__name__}: {text}")


# -- connections -----------------------------------------------------------------------------------------
def check_database(url: str, schema: str | None = None, timeout_s: float = 5.0) -> CheckResult:
    """Connect to ``url`` (in PostgreSQL ``schema`` if given), run ``SELECT 1``, and require the newest migration.

    A SQLite file that does not exist is reported as such (and not created).
    """
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
        db.check_migrated()
        revision = db.current_revision()
    except Exception as exc:
        message = _describe(exc)
        if type(exc).__name__ == "SchemaNotMigratedError":
            message = redact(str(exc)).replace(shown_with_timeout, parsed.display)
        return False, message if parsed.display in message else f"{where}: {message}"
    finally:
        if db is not None:
            db.dispose()
    return True, f"{where}: reachable, schema at migration {revision}"


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


# -- liveness of the components --------------------------------------------------------------------------
def check_poller(healthz_url: str, timeout_s: float = 3.0) -> CheckResult:
    """``GET healthz_url``: healthy on ``200``; the poller's own report is the detail either way."""
    shown = redact(healthz_url)
    try:
        with urllib.request.urlopen(healthz_url, timeout=timeout_s) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except Exception as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, f"{shown}: no answer ({_describe(reason) if isinstance(reason, BaseException) else reason})"
    return status == 200, f"{shown}: HTTP {status} {_summary(body, healthy=status == 200)}"


def _summary(body: bytes, healthy: bool) -> str:
    """One line about a ``/healthz`` body: ``healthy``, else each failing part's detail (or the compact body).

    Failing parts are recognised in this module's shape (``{"part": {"ok": false, "detail": ...}}``); any other
    JSON shape is shown compactly.
    """
    if healthy:
        return "healthy"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    failing: list[str] = []
    if isinstance(doc, dict):
        failing = [
            f"{k}: {v.get('detail', '')}" for k, v in doc.items() if isinstance(v, dict) and v.get("ok") is False
        ]
        if "error" in doc:
            failing.append(str(doc["error"]))
    text = "; ".join(failing) if failing else " ".join(body.decode(errors="replace").split())
    return redact(text[:500])


def check_worker(broker_url: str, timeout_s: float = 5.0, settings: Any | None = None) -> CheckResult:
    """Broadcast a Celery ``ping`` on ``broker_url``; healthy if at least one worker answers within ``timeout_s``."""
    from cloacina.deployment.settings import CloacinaSettings
    from cloacina.deployment.wiring import celery_options
    from cloacina.dispatch.celery_app import ping_workers

    shown = redact(broker_url)
    try:
        if settings is not None:
            settings = settings.model_copy(update={"broker_url": broker_url})
        else:
            settings = CloacinaSettings(broker_url=broker_url, database_url=":memory:")
        options = celery_options(settings)
    except Exception as exc:
        return False, f"{shown}: {_describe(exc)}"
    outcome: dict[str, Any] = {}

    def ping() -> None:
        try:
            outcome["names"] = ping_workers(options, timeout_s)
        except Exception as exc:
            outcome["error"] = exc

    # The broadcast runs on a thread so that a broker that swallows packets cannot hold us past the deadline.
    thread = threading.Thread(target=ping, name="cloacina-health-ping", daemon=True)
    thread.start()
    thread.join(timeout_s + 2.0)
    if "error" in outcome:
        return False, f"{shown}: cannot reach the broker ({_describe(outcome['error'])})"
    if "names" not in outcome:
        return False, f"{shown}: the broker did not answer within {timeout_s + 2.0:g}s"
    names = outcome["names"]
    if not names:
        return False, f"{shown}: no worker answered the ping within {timeout_s:g}s"
    return True, f"{shown}: {len(names)} worker(s) answered: {', '.join(names)}"


# -- putting them together -------------------------------------------------------------------------------
def default_poller_url(settings: Any) -> str | None:
    """``http://127.0.0.1:<metrics_port>/healthz`` when the metrics port is configured."""
    port = getattr(settings, "metrics_port", None)
    return f"http://127.0.0.1:{port}/healthz" if port else None


def run_health(
    component: Component,
    settings: Any,
    *,
    poller_url: str | None = None,
    schema: str | None = None,
    timeout_s: float = 5.0,
) -> tuple[bool, dict[str, Any]]:
    """Check ``component`` and its connections; returns ``(all ok, report)``.

    ``poller``: database, Redis, the poller's ``/healthz``. ``worker``: database, Redis (and the broker if it is
    another server), a Celery ping. ``all``: every one of them. The checks run concurrently, so the whole call
    takes about the slowest timeout. Report: ``{"component", "ok", "checks": {name: {"ok", "detail"}}}``.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}, got {component!r}")
    checks: dict[str, Callable[[], CheckResult]] = {
        "database": lambda: check_database(settings.database_url, schema=schema, timeout_s=timeout_s),
    }
    redis_url = settings.effective_redis_url
    if redis_url:
        checks["redis"] = lambda: check_redis(redis_url, timeout_s=min(timeout_s, 2.0))
    else:
        checks["redis"] = lambda: (False, "not configured: set CLOACINA_BROKER_URL (or CLOACINA_REDIS_URL)")
    if settings.broker_url and settings.broker_url != redis_url:
        checks["broker"] = lambda: check_redis(settings.broker_url, timeout_s=min(timeout_s, 2.0))
    if component in ("poller", "all"):
        url = poller_url or default_poller_url(settings)
        if url:
            checks["poller"] = lambda: check_poller(url, timeout_s=timeout_s)
        else:
            checks["poller"] = lambda: (
                False,
                "no /healthz to ask: set CLOACINA_METRICS_PORT (as on the poller) or pass --poller-url",
            )
    if component in ("worker", "all"):
        if settings.broker_url:
            checks["worker"] = lambda: check_worker(settings.broker_url, timeout_s=timeout_s, settings=settings)
        else:
            checks["worker"] = lambda: (False, "not configured: set CLOACINA_BROKER_URL")
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="cloacina-health") as pool:
        futures = {name: pool.submit(_guarded, fn) for name, fn in checks.items()}
        results = {name: future.result() for name, future in futures.items()}
    report_checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()}
    ok = all(ok for ok, _ in results.values())
    return ok, {"component": component, "ok": ok, "checks": report_checks}


def _guarded(fn: Callable[[], CheckResult]) -> CheckResult:
    try:
        return fn()
    except Exception as exc:  # a check is written not to raise; a bug in one must not hide the others
        return False, f"check failed: {_describe(exc)}"


def check_loop(metrics: Any, max_tick_age_s: float) -> CheckResult:
    """Is the poller loop ticking? ``metrics`` is a :class:`~cloacina.observability.metrics.Metrics`."""
    age = metrics.seconds_since_tick()
    if age is None:
        return False, "the loop has not completed a pass yet"
    if age > max_tick_age_s:
        return False, f"the loop's last pass was {age:.1f}s ago (limit {max_tick_age_s:g}s): stuck or dead"
    return True, f"last pass {age:.2f}s ago"


def poller_health(
    metrics: Any,
    *,
    max_tick_age_s: float = 30.0,
    database_url: str | None = None,
    schema: str | None = None,
    redis_url: str | None = None,
    cache_s: float = 5.0,
    timeout_s: float = 2.0,
) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """The poller's ``/healthz``: the loop ticked within ``max_tick_age_s``, and the connections given work.

    Connection checks are cached for ``cache_s`` so that frequent probes do not load the database.
    """
    lock = threading.Lock()
    cache: dict[str, Any] = {"at": None, "parts": {}}

    def connections() -> dict[str, dict[str, Any]]:
        with lock:
            now = time.monotonic()
            if cache["at"] is None or now - cache["at"] >= cache_s:
                parts: dict[str, dict[str, Any]] = {}
                if database_url:
                    ok, detail = check_database(database_url, schema=schema, timeout_s=timeout_s)
                    parts["database"] = {"ok": ok, "detail": detail}
                if redis_url:
                    ok, detail = check_redis(redis_url, timeout_s=timeout_s)
                    parts["redis"] = {"ok": ok, "detail": detail}
                cache["at"], cache["parts"] = now, parts
            return dict(cache["parts"])

    def health() -> tuple[bool, dict[str, Any]]:
        ok, detail = check_loop(metrics, max_tick_age_s)
        parts = {"loop": {"ok": ok, "detail": detail}, **connections()}
        return all(p["ok"] for p in parts.values()), parts

    return health
