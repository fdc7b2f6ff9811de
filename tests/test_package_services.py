"""Packages across processes: ``cloacina daemon`` end to end (our archives and cloaca's), and a Celery worker that
loads a package it was never given from the database registry.

Both start real processes (the daemon on a SQLite file under a temporary ``HOME``; the worker on a fresh
PostgreSQL schema and its own Redis database) and clean them up by process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from conftest import PG_URL
from package_fixtures import SEED_PACKAGE, build_ingest, cloaca_sources, write_sources
from sqlalchemy import text

from cloacina import DefaultRunner, DefaultRunnerConfig
from cloacina.cli.main import main
from cloacina.packaging.archive import read_archive
from cloacina.packaging.builder import build_package
from cloacina.packaging.isolation import MODULE_PREFIX
from cloacina.store.database import Database
from cloacina.store.packages import PackageStore
from tests.support import wait_until

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")


def wait_logged(predicate: Callable[[], T], timeout_s: float, what: str, log: Path | None = None) -> T:
    """:func:`tests.support.wait_until`, with the tail of ``log`` in the timeout message."""

    def message() -> str:
        tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
        return f"{what}\n{tail}"

    return wait_until(predicate, timeout_s, interval_s=0.1, message=message)


@contextlib.contextmanager
def service(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session (so the whole group can be stopped), output in ``log``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
                break


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOACINA_") and k != "PYTHONPATH"}
    # INFO: the tests read the services' INFO lines (a worker logs "<name> ready." at INFO; its default is WARNING).
    return {**env, "PYTHONUNBUFFERED": "1", "CLOACINA_LOG_LEVEL": "INFO", **extra}


def query(db_file: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db_file, timeout=30)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the daemon has not created the table yet
            return []


def test_daemon_deploys_a_copied_archive_runs_its_trigger_and_stops_it_on_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "orders_20260328.parquet").write_bytes(b"PAR1")
    archive = build_package(SEED_PACKAGE, tmp_path / "dist")  # the tutorial's package, polling every 5 s
    log = tmp_path / "daemon.log"
    env = clean_env(HOME=str(home), INBOX_PATH=str(inbox))
    db_file = home / ".cloacina" / "cloacina.db"
    with service([sys.executable, "-m", "cloacina", "daemon", "--rescan-interval", "2"], log, env, tmp_path) as proc:
        wait_logged(lambda: "cloacina daemon watching" in log.read_text(), 60, "the daemon to start", log)
        assert (home / ".cloacina" / "packages").is_dir()

        monkeypatch.setenv("HOME", str(home))  # `package deploy` copies into ~/.cloacina/packages by default
        result = CliRunner().invoke(main, ["package", "deploy", str(archive)])
        assert result.exit_code == 0, result.output
        deployed = home / ".cloacina" / "packages" / "data-ingest-1.0.0.cloacina"
        assert f"to {deployed}" in result.output

        wait_logged(lambda: "package data-ingest 1.0.0 deployed" in log.read_text(), 60, "the deployment", log)
        completed = "SELECT final_context, package_fingerprint FROM workflow_runs WHERE status = 'Completed'"
        ((context, fingerprint), *_) = wait_logged(lambda: query(db_file, completed), 60, "a completed run", log)
        assert fingerprint == read_archive(archive).fingerprint and "orders_20260328.parquet" in str(context)
        assert query(db_file, "SELECT active FROM packages") == [(1,)]

        deployed.unlink()
        wait_logged(lambda: "package data-ingest 1.0.0 removed" in log.read_text(), 60, "the removal", log)
        assert query(db_file, "SELECT enabled FROM trigger_schedules WHERE trigger_name = 'inbox_watcher'") == [(0,)]
        assert query(db_file, "SELECT active FROM packages") == [(0,)]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert "cloacina daemon stopped" in log.read_text()


def test_daemon_deploys_a_cloaca_package_toml_archive_and_runs_its_trigger(tmp_path: Path) -> None:
    """A cloaca archive (bzip2 tar, package.toml, workflow/) dropped in the watched folder is deployed like ours."""
    home, watch = tmp_path / "home", tmp_path / "watch"
    src = write_sources(tmp_path / "data-pipeline", cloaca_sources())
    built = CliRunner().invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "dist")])
    assert built.exit_code == 0, built.output
    archive = tmp_path / "dist" / "data-pipeline-1.0.0.cloacina"
    log = tmp_path / "daemon.log"
    db_file = home / ".cloacina" / "cloacina.db"
    argv = [sys.executable, "-m", "cloacina", "daemon", "--watch", str(watch), "--rescan-interval", "2"]
    with service(argv, log, clean_env(HOME=str(home)), tmp_path) as proc:
        wait_logged(lambda: "cloacina daemon watching" in log.read_text(), 60, "the daemon to start", log)
        (watch / archive.name).write_bytes(archive.read_bytes())
        wait_logged(lambda: "package data-pipeline 1.0.0 deployed" in log.read_text(), 60, "the deployment", log)
        completed = (
            "SELECT final_context, package_fingerprint, trigger_name FROM workflow_runs WHERE status = 'Completed'"
        )
        ((context, fingerprint, trigger), *_) = wait_logged(lambda: query(db_file, completed), 60, "a run", log)
        assert fingerprint == read_archive(archive).fingerprint and trigger == "new_data"
        assert json.loads(context)["total"] == 6
        ((manifest,),) = query(db_file, "SELECT manifest FROM packages")
        assert json.loads(manifest)["origin"]["format"] == "cloaca"  # the registry keeps our canonical manifest
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


# -- a worker on another machine (each test has a Redis database of its own: ``redis_url``) --------------------
def service_db_url(schema: str) -> str:
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL).set(query={}).render_as_string(hide_password=False)
    return f"{base}?options={quote(f'-csearch_path={schema}')}"


@pytest.mark.postgres
def test_a_worker_that_never_imported_the_package_loads_it_from_the_registry(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    queue = f"cloacina-packages-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("CLOACINA_QUEUE", queue)  # the runner below publishes there (settings read the env)
    migrating = Database(PG_URL, schema=pg_schema, pool_size=1)
    migrating.upgrade()
    migrating.dispose()
    url = service_db_url(pg_schema)
    validated = read_archive(build_ingest(tmp_path, version="3.1.4"))
    fingerprint = validated.fingerprint
    registry_db = Database(url, pool_size=1)
    PackageStore(registry_db).put(validated)
    registry_db.dispose()

    workdir, cache = tmp_path / "worker-cwd", tmp_path / "worker-cache"
    workdir.mkdir()
    env = clean_env(
        CLOACINA_DATABASE_URL=url,
        CLOACINA_BROKER_URL=redis_url,
        CLOACINA_QUEUE=queue,
        CLOACINA_PACKAGE_CACHE=str(cache),
    )
    probe = "import importlib.util, sys; print(importlib.util.find_spec('data_ingest')); print(sys.path)"
    found = subprocess.run([sys.executable, "-c", probe], env=env, cwd=workdir, capture_output=True, text=True)
    assert found.stdout.startswith("None"), found.stdout  # nothing on the worker's path provides the package

    log = tmp_path / "worker.log"
    argv = [
        sys.executable,
        "-m",
        "cloacina",
        "worker",
        "--pool",
        "solo",
        "--hostname",
        f"pkg-{uuid.uuid4().hex[:8]}@%h",
    ]
    with service(argv, log, env, workdir) as worker:
        wait_logged(lambda: " ready." in log.read_text(), 60, "the worker to be ready", log)
        runner = DefaultRunner(url, DefaultRunnerConfig(broker_url=redis_url))
        try:
            workflow = runner.packages.load(fingerprint).workflows["data_ingest"]
            run_id = runner.coordinator.create_run(workflow, {"filename": "x.parquet"}, package_fingerprint=fingerprint)
            assert run_id is not None
            result = runner.wait_for_run(run_id, timeout=90)
        finally:
            runner.shutdown()
        assert result.status == "Completed", f"{result.error_message}\n{log.read_text()[-4000:]}"
        context = result.final_context
        assert context.get("pid") == worker.pid  # the tasks ran in the worker process
        assert context.get("package_version") == "3.1.4" and context.get("valid") is True
        assert context.get("module") == f"{MODULE_PREFIX}{fingerprint[:16]}.data_ingest"
        assert str(context.get("module_file")).startswith(str(cache / fingerprint))  # loaded from the registry


@pytest.mark.postgres
def test_daemon_with_a_broker_publishes_package_runs_to_a_worker(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    queue = f"cloacina-packages-{uuid.uuid4().hex[:12]}"
    migrating = Database(PG_URL, schema=pg_schema, pool_size=1)
    migrating.upgrade()
    migrating.dispose()
    url = service_db_url(pg_schema)
    inbox, watch = tmp_path / "inbox", tmp_path / "watch"
    inbox.mkdir()
    # Redis dedup keys are (trigger, context hash) whatever the database: a file name of its own keeps this
    # test's fires clear of locks other runs of it may have left behind.
    (inbox / f"{queue}.parquet").write_bytes(b"PAR1")
    archive = build_ingest(tmp_path, version="4.0.0", poll="500ms")
    env = clean_env(
        CLOACINA_DATABASE_URL=url, CLOACINA_BROKER_URL=redis_url, CLOACINA_QUEUE=queue, INBOX_PATH=str(inbox)
    )
    daemon_log, worker_log = tmp_path / "daemon.log", tmp_path / "worker.log"
    daemon_argv = [sys.executable, "-m", "cloacina", "daemon", "--watch", str(watch)]
    worker_argv = [sys.executable, "-m", "cloacina", "worker", "--pool", "solo", "--hostname", f"pkgd-{queue[-8:]}@%h"]
    with service(daemon_argv, daemon_log, env, tmp_path), service(worker_argv, worker_log, env, tmp_path) as worker:
        wait_logged(lambda: "(distributed (Celery))" in daemon_log.read_text(), 60, "the daemon", daemon_log)
        wait_logged(lambda: " ready." in worker_log.read_text(), 60, "the worker", worker_log)
        monkeypatch.setenv("HOME", str(tmp_path))
        result = CliRunner().invoke(main, ["package", "deploy", str(archive), "--to", str(watch)])
        assert result.exit_code == 0, result.output
        deployed = "package data-ingest 4.0.0 deployed"
        wait_logged(lambda: deployed in daemon_log.read_text(), 60, "the deploy", daemon_log)

        registry_db = Database(url, pool_size=1)
        try:

            def completed() -> list[object]:
                with registry_db.session() as s:
                    sql = "SELECT final_context FROM workflow_runs WHERE status = 'Completed'"
                    return list(s.execute(text(sql)).scalars())

            (context, *_) = wait_logged(completed, 60, "a run completed by the worker", worker_log)
        finally:
            registry_db.dispose()
        values = json.loads(context) if isinstance(context, str) else context
        assert values["pid"] == worker.pid and values["package_version"] == "4.0.0"  # type: ignore[index]


@pytest.mark.postgres
def test_plain_pollers_poll_triggers_of_packages_in_the_registry(
    tmp_path: Path, pg_schema: str, redis_url: str
) -> None:
    """`package deploy --db` stores a package; a `cloacina poller` started with no --app polls its trigger and a
    worker with no --app runs the workflow (both load the package from the registry)."""
    queue = f"cloacina-packages-{uuid.uuid4().hex[:12]}"
    migrating = Database(PG_URL, schema=pg_schema, pool_size=1)
    migrating.upgrade()
    migrating.dispose()
    url = service_db_url(pg_schema)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / f"{queue}.parquet").write_bytes(b"PAR1")
    archive = build_ingest(tmp_path, version="5.0.0", poll="500ms")
    result = CliRunner().invoke(main, ["package", "deploy", str(archive), "--db", url])
    assert result.exit_code == 0, result.output
    env = clean_env(
        CLOACINA_DATABASE_URL=url, CLOACINA_BROKER_URL=redis_url, CLOACINA_QUEUE=queue, INBOX_PATH=str(inbox)
    )
    poller_log, worker_log = tmp_path / "poller.log", tmp_path / "worker.log"
    poller_argv = [sys.executable, "-m", "cloacina", "poller"]
    worker_argv = [sys.executable, "-m", "cloacina", "worker", "--pool", "solo", "--hostname", f"pkgp-{queue[-8:]}@%h"]
    with service(poller_argv, poller_log, env, tmp_path), service(worker_argv, worker_log, env, tmp_path):
        registry_db = Database(url, pool_size=1)
        try:

            def completed() -> list[object]:
                with registry_db.session() as s:
                    sql = "SELECT trigger_name FROM workflow_runs WHERE status = 'Completed'"
                    return list(s.execute(text(sql)).scalars())

            names = wait_logged(completed, 90, "a package run fired by the plain poller", poller_log)
        finally:
            registry_db.dispose()
        assert names[0] == "inbox_watcher"
