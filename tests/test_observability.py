"""Observability: log formats and redaction, metrics, the /metrics + /healthz server, health checks, the CLI.

Health checks run against the real local Redis and PostgreSQL (a fresh schema per test) and against dead ports.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest, values

import cloacina as cloaca
from cloacina.observability.http import ObservabilityServer, start_http_server
from cloacina.observability.logs import ServiceLogHandler, configure_logging, redact
from cloacina.observability.metrics import (
    Metrics,
    enable_multiprocess,
    instrument_scheduler,
    multiprocess_registry,
)
from cloacina.services import health as H
from cloacina.store.database import Database
from tests.conftest import PG_URL
from tests.support import wait_until

DEAD_REDIS = "redis://:hunter2@127.0.0.1:1/0"
# Celery's ping broadcast is scoped to the Redis database: the test's own database (``redis_url``) has no workers.


# -- helpers ---------------------------------------------------------------------------------------------
@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored (handlers and level) after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def log_lines(fmt: str, root: logging.Logger, emit: Any) -> list[str]:
    buf = io.StringIO()
    configure_logging(fmt, "DEBUG", stream=buf)
    emit(logging.getLogger("cloacina.test"))
    return buf.getvalue().splitlines()


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start observability servers on free ports; all are stopped after the test."""
    servers: list[ObservabilityServer] = []

    def start(health: Any, metrics: Metrics | None = None) -> ObservabilityServer:
        server = start_http_server(0, (metrics or Metrics()).registry, health, host="127.0.0.1")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def migrated_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/cloacina.db"
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


# -- logs ------------------------------------------------------------------------------------------------
def test_text_format_appends_structured_fields(root_logger: logging.Logger) -> None:
    lines = log_lines(
        "text",
        root_logger,
        lambda log: log.info(
            "task completed",
            extra={"run_id": "r-1", "workflow": "etl", "task": "load", "attempt": 2, "status": "Completed"},
        ),
    )
    assert len(lines) == 1
    assert lines[0].endswith(" INFO cloacina.test task completed run_id=r-1 workflow=etl task=load attempt=2 "
                             "status=Completed")  # fmt: skip
    lines = log_lines("text", root_logger, lambda log: log.warning("x", extra={"trigger": "two words", "task": None}))
    assert lines[0].endswith('WARNING cloacina.test x trigger="two words"')


def test_json_lines_parse_with_fields_and_exception(root_logger: logging.Logger) -> None:
    def emit(log: logging.Logger) -> None:
        log.info("trigger fired", extra={"trigger": "files", "run_id": "r-9", "context_hash": "ab12"})
        try:
            raise ValueError("bad input")
        except ValueError:
            log.exception("task failed", extra={"task": "t", "attempt": 3})

    first, second = (json.loads(line) for line in log_lines("json", root_logger, emit))
    assert first["message"] == "trigger fired" and first["level"] == "INFO" and first["logger"] == "cloacina.test"
    assert (first["trigger"], first["run_id"], first["context_hash"]) == ("files", "r-9", "ab12")
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert "exc_info" not in first
    assert second["level"] == "ERROR" and second["attempt"] == 3
    assert "ValueError: bad input" in second["exc_info"] and "Traceback" in second["exc_info"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_passwords_are_redacted_in_messages_fields_and_tracebacks(root_logger: logging.Logger, fmt: str) -> None:
    def emit(log: logging.Logger) -> None:
        log.warning("cannot reach %s", "postgresql://app:s3cret@db:5432/prod", extra={"trigger": "redis://:pw@r/0"})
        try:
            raise ConnectionError("broker redis://user:hunter2@cache:6379/0 refused")
        except ConnectionError:
            log.exception("connect failed")

    text = "\n".join(log_lines(fmt, root_logger, emit))
    assert "s3cret" not in text and "hunter2" not in text and ":pw@" not in text
    assert "postgresql://app:***@db:5432/prod" in text
    assert "redis://user:***@cache:6379/0" in text


def test_configure_logging_is_idempotent(root_logger: logging.Logger) -> None:
    buf = io.StringIO()
    configure_logging("text", "INFO", stream=buf)
    configure_logging("json", "INFO", stream=buf)
    configure_logging("json", "warning", stream=buf)
    assert sum(isinstance(h, ServiceLogHandler) for h in root_logger.handlers) == 1
    assert root_logger.level == logging.WARNING
    logging.getLogger("cloacina.test").warning("once")
    assert len(buf.getvalue().splitlines()) == 1
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("text", "LOUD")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql+psycopg://app:p@ss@db/x", "postgresql+psycopg://app:***@db/x"),
        ("a http://u:p@h b amqp://g:g@mq//", "a http://u:***@h b amqp://g:***@mq//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("user@example.com wrote", "user@example.com wrote"),
        ("host=db password=secret user=x", "host=db password=*** user=x"),
    ],
)
def test_redact(raw: str, expected: str) -> None:
    assert redact(raw) == expected


# -- metrics ---------------------------------------------------------------------------------------------
def test_trigger_events_runs_and_tasks_are_counted() -> None:
    m = Metrics()
    for event in ("poll", "poll", "fire", "dedup_skip", "poll_error", "something_new"):
        m.observe_trigger_event(event, "files", {})
    m.poll("files")
    m.run_finished("etl", "Completed")
    m.run_finished("etl", "Completed")
    m.run_finished("etl", "Failed")
    m.task_finished("etl", "load", "completed", 0.2)
    m.task_finished("etl", "load", "failed", 3.0)
    assert m.value("cloacina_trigger_polls_total", trigger="files") == 3
    assert m.value("cloacina_trigger_fires_total", trigger="files") == 1
    assert m.value("cloacina_trigger_dedup_skips_total", trigger="files") == 1
    assert m.value("cloacina_trigger_poll_errors_total", trigger="files") == 1
    assert m.value("cloacina_runs_finished_total", workflow="etl", status="Completed") == 2
    assert m.value("cloacina_runs_finished_total", workflow="etl", status="Failed") == 1
    assert m.value("cloacina_task_attempts_total", workflow="etl", task="load", status="failed") == 1
    assert m.value("cloacina_task_duration_seconds_count", workflow="etl", task="load") == 2
    assert m.value("cloacina_task_duration_seconds_sum", workflow="etl", task="load") == pytest.approx(3.2)
    assert m.value("cloacina_task_duration_seconds_bucket", workflow="etl", task="load", le="0.25") == 1
    assert Metrics().value("cloacina_trigger_fires_total", trigger="files") is None  # registries are separate


def test_fire_to_start_buckets_tick_and_exposition() -> None:
    m = Metrics()
    m.fire_to_start(0.003)
    m.fire_to_start(12.0)
    assert m.value("cloacina_fire_to_start_seconds_bucket", le="0.001") == 0
    assert m.value("cloacina_fire_to_start_seconds_bucket", le="0.005") == 1
    assert m.value("cloacina_fire_to_start_seconds_bucket", le="10.0") == 1
    assert m.value("cloacina_fire_to_start_seconds_bucket", le="+Inf") == 2
    assert m.seconds_since_tick() is None
    m.tick(now=1_700_000_000.0)
    assert m.value("cloacina_poller_loop_last_tick_timestamp_seconds") == 1_700_000_000.0
    assert 0 <= (m.seconds_since_tick() or 0) < 5
    m.observe_trigger_event("fire", "files", {})
    text = generate_latest(m.registry).decode()
    for name in ("cloacina_trigger_fires_total{trigger=\"files\"} 1.0", "cloacina_fire_to_start_seconds_count 2.0",
                 "cloacina_poller_loop_last_tick_timestamp_seconds 1.7e+09"):  # fmt: skip
        assert name in text


@pytest.mark.timeout(30)
def test_instrumented_scheduler_counts_fires_skips_errors_and_ticks() -> None:
    release = threading.Event()
    with cloaca.WorkflowBuilder("obs_slow"):

        @cloaca.task(id="wait", retry_attempts=0)
        def wait(ctx: cloaca.Context) -> cloaca.Context:
            release.wait(15)  # the run stays active (so later fires are dedup skips) until the test has seen one
            return ctx

    @cloaca.trigger(workflow="obs_slow", poll_interval="100ms")
    def obs_same() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire(cloaca.Context({"k": 1}))

    @cloaca.trigger(workflow="obs_slow", poll_interval="100ms")
    def obs_broken() -> cloaca.TriggerResult:
        raise RuntimeError("boom")

    m = Metrics()
    with cloaca.DefaultRunner(":memory:", cloaca.DefaultRunnerConfig(trigger_base_poll_interval_ms=100)) as runner:
        assert runner.trigger_scheduler is not None
        instrument_scheduler(runner.trigger_scheduler, m)
        try:
            wait_until(
                lambda: (
                    (m.value("cloacina_trigger_dedup_skips_total", trigger="obs_same") or 0) >= 1
                    and (m.value("cloacina_trigger_poll_errors_total", trigger="obs_broken") or 0) >= 1
                ),
                15,
                message="a dedup skip and a poll error to be counted",
            )
        finally:
            release.set()
    assert (m.value("cloacina_trigger_dedup_skips_total", trigger="obs_same") or 0) >= 1
    assert (m.value("cloacina_trigger_poll_errors_total", trigger="obs_broken") or 0) >= 1
    assert (m.seconds_since_tick() or 99) < 5
    assert (m.value("cloacina_poller_loop_last_tick_timestamp_seconds") or 0) > time.time() - 30


def _child_work(n: int) -> None:
    m = Metrics()
    for _ in range(n):
        m.task_finished("etl", "load", "completed", 0.01)
    m.run_finished("etl", "Completed")


def test_multiprocess_registry_sums_forked_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        multiprocess_registry()
    fallback = Metrics().registry
    assert multiprocess_registry(fallback) is fallback
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert enable_multiprocess(str(tmp_path)) == str(tmp_path)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_child_work, args=(n,)) for n in (2, 3)]
    for child in children:
        child.start()
    for child in children:
        child.join(20)
        assert child.exitcode == 0
    registry = multiprocess_registry()
    labels = {"workflow": "etl", "task": "load", "status": "completed"}
    assert registry.get_sample_value("cloacina_task_attempts_total", labels) == 5
    assert registry.get_sample_value("cloacina_runs_finished_total", {"workflow": "etl", "status": "Completed"}) == 2
    assert "cloacina_task_duration_seconds_bucket" in generate_latest(registry).decode()


# -- HTTP ------------------------------------------------------------------------------------------------
def test_server_serves_metrics_healthz_and_404(serve: Any) -> None:
    m = Metrics()
    m.observe_trigger_event("fire", "files", {})
    state = {"ok": True}
    server = serve(lambda: (state["ok"], {"loop": {"ok": state["ok"], "detail": "x"}}), m)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    status, ctype, body = get(server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'cloacina_trigger_fires_total{trigger="files"} 1.0' in body
    assert "cloacina_task_duration_seconds" in body and "cloacina_poller_loop_last_tick_timestamp_seconds" in body
    status, ctype, body = get(server.url + "/healthz")
    assert (status, ctype) == (200, "application/json") and json.loads(body)["ok"] is True
    state["ok"] = False
    status, _, body = get(server.url + "/healthz?verbose=1")
    assert status == 503 and json.loads(body)["loop"]["ok"] is False
    assert get(server.url + "/")[0] == 404
    assert get(server.url + "/nope")[0] == 404


def test_server_health_that_raises_is_503_and_stop_frees_the_port(serve: Any) -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("cannot reach postgresql://u:topsecret@db/x")

    server = serve(broken)
    status, _, body = get(server.url + "/healthz")
    assert status == 503 and "topsecret" not in body and "u:***@db" in body
    url = server.url
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/metrics", timeout=2)


# -- health checks ---------------------------------------------------------------------------------------
def test_check_redis_real_and_dead(redis_url: str) -> None:
    ok, detail = H.check_redis(redis_url)
    assert ok, detail
    assert "PONG" in detail
    started = time.monotonic()
    ok, detail = H.check_redis(DEAD_REDIS, timeout_s=1.0)
    assert not ok and time.monotonic() - started < 2.0
    assert "hunter2" not in detail and detail.startswith("redis://:***@127.0.0.1:1/0: ") and "refused" in detail


def test_check_database_postgres_migrated_and_not(pg_schema: str) -> None:
    ok, detail = H.check_database(PG_URL, schema=pg_schema)
    assert not ok and "migration" in detail and "cloacina db upgrade" in detail
    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    db.dispose()
    ok, detail = H.check_database(PG_URL, schema=pg_schema)
    assert ok, detail
    assert pg_schema in detail and "connect_timeout" not in detail


def test_check_database_dead_and_missing(tmp_path: Path, migrated_sqlite: str) -> None:
    started = time.monotonic()
    ok, detail = H.check_database("postgresql://app:s3cret@127.0.0.1:1/prod", timeout_s=1.0)
    assert not ok and time.monotonic() - started < 3.0
    assert "s3cret" not in detail and "app:***@127.0.0.1:1" in detail
    missing = tmp_path / "missing.db"
    ok, detail = H.check_database(f"sqlite:///{missing}")
    assert not ok and "does not exist" in detail and not missing.exists()
    assert H.check_database(migrated_sqlite)[0]


# check_endpoint, the probes, run_health and `cloacina health`: tests/test_health_probes.py
