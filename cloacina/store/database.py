"""One database connection for the store: engine setup per backend, sessions, and schema migrations.

SQLite is made safe for a multi-threaded runner by serialising store access in-process (a re-entrant lock)
and using WAL with a busy timeout across processes; ``:memory:`` uses one shared connection. PostgreSQL uses
a normal connection pool; ``schema=`` puts every table in its own PostgreSQL schema (one per tenant): every
connection sets its ``search_path``, and :meth:`Database.upgrade` creates the schema if it is missing (a
tenant's own role, which may not create schemas, can use a schema its administrator made).

Rolling upgrades: code whose newest migration is N runs on schema N and on newer schemas (N+1, ...) that still
have every table and column it uses and no required column it does not know (migrations are additive; a
destructive step ships one release after the code stopped using what it removes). :meth:`Database.schema_status`
says which case a database is in; :meth:`Database.check_migrated` refuses only an incompatible one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from cloacina.errors import SchemaNotMigratedError, StoreError
from cloacina.store.urls import DatabaseURL, InvalidSchemaError, parse_database_url, schema_identifier

log = logging.getLogger("cloacina.store")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE run through ``Session.execute`` matched.

    SQLAlchemy types ``Session.execute`` as returning a plain ``Result``; for these statements it is a
    ``CursorResult``, the kind that carries ``rowcount``.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"expected the CursorResult of an UPDATE or DELETE, got {type(result).__name__}")
    return result.rowcount


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands for this code: ``current`` and ``head`` revisions, and whether this code
    can run on it (``compatible``), with a one-line ``detail`` (no password)."""

    current: str | None
    head: str | None
    relation: Literal["same", "older", "newer"]  # the database's revision, from this code's point of view
    compatible: bool
    detail: str


class Database:
    """Engine + session factory for one database URL."""

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 10) -> None:
        self.url: DatabaseURL = parse_database_url(url)
        self.schema = schema_identifier(schema) if schema is not None else None
        if schema is not None and self.url.dialect != "postgresql":
            raise InvalidSchemaError("with_schema() needs a PostgreSQL URL; SQLite has no schemas")
        self._lock: threading.RLock | None = threading.RLock() if self.url.dialect == "sqlite" else None
        self.engine: Engine = self._create_engine(pool_size)
        # PostgreSQL's single statements have a pool of their own (see single_statement); created here, not on
        # first use, so that threads never race to create it. An engine connects only when used.
        self._autocommit_engine: Engine | None = (
            self._create_engine(pool_size, autocommit=True) if self.url.dialect == "postgresql" else None
        )

    @property
    def dialect(self) -> str:
        return self.url.dialect

    def _create_engine(self, pool_size: int, *, autocommit: bool = False) -> Engine:
        if self.url.dialect == "sqlite":
            kwargs: dict[str, Any] = {
                "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            }
            if self.url.is_memory:
                kwargs["poolclass"] = StaticPool
            engine = create_engine(self.url.sqlalchemy_url, **kwargs)
            is_memory = self.url.is_memory

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                if not is_memory:
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
                # Transactions are begun explicitly below (pysqlite's own implicit BEGIN is switched off).
                dbapi_conn.isolation_level = None

            @event.listens_for(engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                # BEGIN IMMEDIATE takes the write lock up front. Several processes may share one SQLite file;
                # with a deferred BEGIN, two of them reading and then writing would deadlock on the upgrade.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            return engine
        engine = create_engine(
            self.url.sqlalchemy_url,
            # A database that drops packets must not hang a service forever: connects give up and are retried.
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=False,  # a dead connection invalidates the pool on first use; callers retry
            pool_recycle=1800,
            # The single-statement engine's connections are always in autocommit, so no transaction is ever left
            # open and the pool's reset (a ROLLBACK round trip per checkin) is pure cost.
            **({"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None} if autocommit else {}),
        )
        if self.schema is not None:
            schema = self.schema

            @event.listens_for(engine, "connect")
            def _search_path(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                # Only when missing: CREATE SCHEMA needs CREATE on the database even with IF NOT EXISTS, which a
                # tenant's role (DatabaseAdmin.create_tenant) does not have.
                cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                cur.execute(f'SET search_path TO "{schema}"')
                cur.close()
                dbapi_conn.commit()

        return engine

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends normally, rolled back if it raises."""
        lock = self._lock or contextlib.nullcontext()
        with lock, Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core-level unit of work (no ORM session): committed at the end, rolled back if the block raises.
        The hot paths of the run repository use it; it is several times cheaper than a Session."""
        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.connect() as conn:
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    @contextlib.contextmanager
    def single_statement(self) -> Iterator[Connection]:
        """A connection in autocommit: each statement is its own transaction, sent in one round trip (for the
        single-statement transitions of :mod:`cloacina.store.run_fast_path`).

        On PostgreSQL it comes from a second pool whose connections are born in autocommit: no isolation level to
        switch on checkout and back on return, no reset on return."""
        if self._autocommit_engine is None:  # SQLite: one shared connection, switched for the statement
            lock = self._lock or contextlib.nullcontext()
            with lock, self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn
            return
        with self._autocommit_engine.connect() as conn:
            yield conn

    # -- migrations -------------------------------------------------------------------------------------
    def _alembic_config(self, connection: Any) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = connection
        cfg.attributes["schema"] = self.schema
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision`` (``cloacina db upgrade``). A schema a newer release migrated is left
        as it is when this code can run on it (the rolling-upgrade window), else ``SchemaNotMigratedError``."""
        from alembic import command

        if revision == "head" and self.current_revision() not in (None, *self.known_revisions()):
            status = self.schema_status()
            if not status.compatible:
                raise SchemaNotMigratedError(status.detail)
            log.info("%s; not migrating", status.detail)
            return
        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.begin() as conn:
            if self.schema is not None:
                self._ensure_schema(conn)
            command.upgrade(self._alembic_config(conn), revision)
        log.info("database %s migrated to %s", self.url.display, revision)

    def _ensure_schema(self, conn: Connection) -> None:
        """Create the tenant schema unless it exists (checked first: ``CREATE SCHEMA IF NOT EXISTS`` needs the
        privilege to create schemas even when there is nothing to create)."""
        found = conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": self.schema}).first()
        if found is None:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        lock = self._lock or contextlib.nullcontext()
        try:
            with lock, self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise StoreError(f"cannot reach database {self.url.display}: {exc.orig}") from None

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config(None)).get_current_head()

    def downgrade(self, revision: str) -> None:
        """Revert migrations down to ``revision`` (``cloacina db downgrade --to REV``); both the database's revision
        and ``revision`` must be known to this code."""
        from alembic import command

        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.begin() as conn:
            command.downgrade(self._alembic_config(conn), revision)
        log.info("database %s downgraded to %s", self.url.display, revision)

    def known_revisions(self) -> set[str]:
        """Every revision this code's migrations define."""
        from alembic.script import ScriptDirectory

        return {s.revision for s in ScriptDirectory.from_config(self._alembic_config(None)).walk_revisions()}

    def schema_status(self) -> SchemaStatus:
        """Can this code run on the database's schema? (See the module docstring for the window.)"""
        current, head = self.current_revision(), self.head_revision()
        where = f"database {self.url.display}"
        if current == head:
            return SchemaStatus(current, head, "same", True, f"{where} is at migration {head}")
        if current is None or current in self.known_revisions():
            return SchemaStatus(
                current, head, "older", False,
                f"{where} is at migration {current or 'none'}, this cloacina needs {head}; "
                "run `cloacina db upgrade` (with CLOACINA_DATABASE_URL or --db) first",
            )  # fmt: skip
        problems = self._missing_for_this_code()
        if not problems:
            return SchemaStatus(
                current, head, "newer", True,
                f"{where} is at migration {current}, newer than this cloacina's {head} and compatible with it",
            )  # fmt: skip
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return SchemaStatus(
            current, head, "newer", False,
            f"{where} is at migration {current}, newer than this cloacina's {head} and not compatible with it "
            f"({shown}): run the release that migrated it, or `cloacina db downgrade --to {head}` with that release",
        )  # fmt: skip

    def _missing_for_this_code(self) -> list[str]:
        """What this code's tables need and the schema lacks: a table, a column, or a required column unknown here."""
        from cloacina.store.models import Base

        lock = self._lock or contextlib.nullcontext()
        problems: list[str] = []
        with lock, self.engine.connect() as conn:
            inspector = inspect(conn)
            tables = set(inspector.get_table_names())
            for table in Base.metadata.sorted_tables:
                if table.name not in tables:
                    problems.append(f"table {table.name} is missing")
                    continue
                columns = {c["name"]: c for c in inspector.get_columns(table.name)}
                problems += [f"column {table.name}.{c.name} is missing" for c in table.columns if c.name not in columns]
                known = {c.name for c in table.columns}
                problems += [
                    f"column {table.name}.{name} is required and unknown to this cloacina"
                    for name, info in columns.items()
                    if name not in known and not info.get("nullable", True) and info.get("default") is None
                ]
        return problems

    def check_migrated(self) -> None:
        """Raise ``SchemaNotMigratedError`` unless this code can run on the schema: at its newest revision, or at a
        newer one that is still compatible (the rolling-upgrade window)."""
        status = self.schema_status()
        if not status.compatible:
            raise SchemaNotMigratedError(status.detail)

    def table_names(self) -> list[str]:
        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.connect() as conn:
            return sorted(inspect(conn).get_table_names())

    def ping(self) -> None:
        with self.session() as s:
            s.execute(text("SELECT 1"))

    def dispose(self) -> None:
        # Under the lock: closing the shared SQLite connection while another thread uses it can crash sqlite3.
        lock = self._lock or contextlib.nullcontext()
        with lock:
            self.engine.dispose()
            if self._autocommit_engine is not None:
                self._autocommit_engine.dispose()
