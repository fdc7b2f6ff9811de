"""Shared fixtures: isolated registries, and real databases (SQLite and the local PostgreSQL).

PostgreSQL isolation: every test gets its own schema, dropped afterwards. If the server is not answering, the
PostgreSQL cases are skipped on a developer machine but fail under CI (``CI=true``), as Dramatiq does.

Redis isolation: no test touches a shared Redis server. ``redis_url`` hands each test a flushed database of its
own on a private ``redis-server`` started once per pytest session; ``redis_server`` is a whole server of the
test's own (for tests that kill or restart Redis).
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from cloacina.definitions import registry

PG_URL = os.environ.get("CLOACINA_TEST_PG_URL", "postgresql://postgres@localhost:5432/test")
REDIS_DATABASES = 256  # databases of the session's private redis-server, handed out one per test in turn
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


PG_AVAILABLE = _pg_available()


def require_postgres() -> None:
    if not PG_AVAILABLE:
        if IN_CI:
            pytest.fail(f"PostgreSQL is not answering at {PG_URL} (required in CI)")
        pytest.skip(f"PostgreSQL is not answering at {PG_URL}")


@dataclass(frozen=True)
class Backend:
    """A database for one test: ``url`` plus an optional PostgreSQL ``schema``."""

    name: str
    url: str
    schema: str | None = None


@pytest.fixture(autouse=True)
def isolated_registry() -> Iterator[None]:
    """Workflows, tasks and triggers declared in a test disappear after it."""
    saved = registry.snapshot()
    yield
    registry.restore(saved)


def _pg_schema() -> Iterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def pg_store(pg_schema: str) -> Iterator[Any]:
    """A ``RunStore`` on a fresh, migrated PostgreSQL schema."""
    from cloacina.store.database import Database
    from cloacina.store.runs import RunStore

    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    yield RunStore(db)
    db.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema name (dropped after the test)."""
    yield from _pg_schema()


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Backend]:
    """The same test on in-memory SQLite, file SQLite and PostgreSQL."""
    if request.param == "sqlite-memory":
        yield Backend("sqlite-memory", ":memory:")
    elif request.param == "sqlite-file":
        yield Backend("sqlite-file", f"sqlite:///{tmp_path}/cloacina.db")
    else:
        yield from (Backend("postgresql", PG_URL, schema) for schema in _pg_schema())


@pytest.fixture(params=["sqlite-file", "postgresql"])
def durable_backend(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Backend]:
    """Backends that several processes can share."""
    if request.param == "sqlite-file":
        yield Backend("sqlite-file", f"sqlite:///{tmp_path}/cloacina.db")
    else:
        yield from (Backend("postgresql", PG_URL, schema) for schema in _pg_schema())


@pytest.fixture
def make_runner(backend: Backend) -> Iterator[object]:
    """Factory for DefaultRunners on the parametrised backend; all are shut down after the test."""
    from cloacina import DefaultRunner, DefaultRunnerConfig

    runners: list[DefaultRunner] = []

    def factory(config: DefaultRunnerConfig | None = None, **overrides: object) -> DefaultRunner:
        cfg = config or DefaultRunnerConfig(**overrides)
        runner = DefaultRunner(backend.url, cfg, schema=backend.schema)
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        runner.shutdown()


# -- Redis: never a shared server ---------------------------------------------------------------------------------
def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH (required in CI)")
        pytest.skip("redis-server is not on PATH")


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private redis-server for this pytest session, whose databases ``redis_url`` hands out one per test."""
    from tests.distributed_harness import RedisServer

    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis"), databases=REDIS_DATABASES) as server:
        yield server


_redis_db_numbers = itertools.count()


@pytest.fixture
def redis_url(session_redis: Any) -> Iterator[str]:
    """A Redis database of this test's own, flushed before and after it (tests of a session run one at a time)."""
    import redis

    url = str(session_redis.url_for(next(_redis_db_numbers) % REDIS_DATABASES))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    """A redis-py client on the test's own Redis database."""
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A private redis-server: test runs on one machine must not share broker queues, and tests may kill it."""
    from tests.distributed_harness import RedisServer

    require_redis_server()
    with RedisServer(tmp_path) as server:
        yield server


# -- distributed tests: a cluster on a migrated schema -------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path, redis_server: Any) -> Iterator[Any]:
    """Services (started by the test) on the private Redis and a fresh migrated PostgreSQL schema."""
    from tests.distributed_harness import running_cluster

    require_postgres()
    with running_cluster(PG_URL, redis_server.url, tmp_path) as c:
        yield c
