"""SQLAlchemy 2 models: the durable record of runs, tasks, attempts, triggers and cron schedules.

The SQL rows are the source of truth in every mode. Two constraints carry the product's guarantees:

- ``uq_trigger_exec_active``: a partial unique index on (trigger_name, context_hash) over rows whose
  ``dedup_active`` is true. A trigger execution with ``allow_concurrent=False`` inserts its row (dedup_active)
  in the same transaction as its run and clears the flag in the transaction that ends the run, so two active
  runs for one key cannot exist, whatever the locks say.
- ``uq_cron_exec_time``: unique (schedule_id, scheduled_time), so each due time is claimed once.

Schedules and executions keep their integer primary keys for joins and the hot path; the id the public API shows
is ``public_id``, a random UUID string the database fills in on every insert (``gen_random_uuid()`` on
PostgreSQL, an expression of ``randomblob`` on SQLite), so every insert path, old or new, gets one.

Timestamps are stored as UTC and always read back as aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

# Column defaults; re-exported for execution/coordinator.py until it imports ``cloacina.timestamps`` itself.
from cloacina.timestamps import utcnow as utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is written as UTC and read back as an aware UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NewUuidText(FunctionElement[str]):
    """A random UUID as lower-case hyphenated text, computed by the database (a column's server default)."""

    type = String(36)
    name = "new_uuid_text"
    inherit_cache = True


# The expression PostgreSQL reflects back for the default, so that migrations compare equal to the models.
PG_NEW_UUID = "(gen_random_uuid())::text"
# UUID version 4 on SQLite: 122 random bits, the version nibble 4 and the variant nibble 8, 9, a or b.
SQLITE_NEW_UUID = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2)"
    " || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-'"
    " || lower(hex(randomblob(6))))"
)


@compiles(NewUuidText, "postgresql")
def _pg_new_uuid(element: NewUuidText, compiler: SQLCompiler, **kw: Any) -> str:
    return PG_NEW_UUID


@compiles(NewUuidText, "sqlite")
def _sqlite_new_uuid(element: NewUuidText, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NEW_UUID


def new_public_id() -> str:
    """A fresh public id (what the server default computes, made in Python when cloacina inserts the row)."""
    return str(uuid.uuid4())


def public_id_column() -> Mapped[str]:
    """The UUID string the public API shows for a row (see the module docstring)."""
    return mapped_column(String(36), default=new_public_id, server_default=NewUuidText(), unique=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}


class WorkflowRun(Base):
    __tablename__ = "workflow_runs"
    __table_args__ = (
        # The oldest waiting run of a workflow (max_active_runs; migration 0008).
        Index(
            "ix_workflow_runs_waiting",
            "workflow_name",
            "created_at",
            sqlite_where=text("waiting_reason IS NOT NULL"),
            postgresql_where=text("waiting_reason IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow_name: Mapped[str] = mapped_column(String(200), index=True)
    workflow_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    input_context: Mapped[str] = mapped_column(Text)
    final_context: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    trigger_name: Mapped[str | None] = mapped_column(String(200))
    cron_schedule_id: Mapped[int | None] = mapped_column(Integer)
    package_fingerprint: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    deadline_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Bumped, under the run's row lock, by every change a planner would see (a task finishing, a lost attempt
    # given back, a planning step, the run's end): a finishing task whose start-time view of the run still has
    # the same version may plan from that view (see cloacina.store.run_fast_path).
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The run this one re-executes from its failure (``DefaultRunner.retry_run``; migration 0007).
    retry_of: Mapped[str | None] = mapped_column(String(36))
    # Why this Pending run has not started: its workflow's max_active_runs is reached (migration 0008).
    waiting_reason: Mapped[str | None] = mapped_column(Text)


class TaskRun(Base):
    __tablename__ = "task_runs"
    __table_args__ = (
        UniqueConstraint("run_id", "task_id", name="uq_task_runs_run_task"),
        # The slots a pool has in use: SUM(pool_slots) of its Running tasks (migration 0008).
        Index(
            "ix_task_runs_pool_running",
            "pool",
            sqlite_where=text("pool IS NOT NULL AND status = 'Running'"),
            postgresql_where=text("pool IS NOT NULL AND status = 'Running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # Looked up through uq_task_runs_run_task (run_id, task_id): no index of its own.
    run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    input_context: Mapped[str | None] = mapped_column(Text)
    output_context: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(16))
    skip_reason: Mapped[str | None] = mapped_column(String(32))
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The pool the task's definition names and the slots it takes there (migration 0008); NULL without a pool.
    pool: Mapped[str | None] = mapped_column(String(200))
    pool_slots: Mapped[int | None] = mapped_column(Integer)


class TaskPool(Base):
    """A named pool of slots shared by every worker (``cloacina pools set NAME --slots N``; migration 0008)."""

    __tablename__ = "task_pools"
    __table_args__ = (CheckConstraint("slots >= 0", name="ck_task_pools_slots"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TaskAttempt(Base):
    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_run_id", "attempt", name="uq_task_attempts_task_attempt"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # Looked up through uq_task_attempts_task_attempt (task_run_id, attempt): no index of its own.
    task_run_id: Mapped[int] = mapped_column(ForeignKey("task_runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[int | None] = mapped_column(Integer)


class TriggerSchedule(Base):
    __tablename__ = "trigger_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = public_id_column()
    trigger_name: Mapped[str] = mapped_column(String(200), unique=True)
    workflow_name: Mapped[str] = mapped_column(String(200))
    poll_interval_ms: Mapped[int] = mapped_column(Integer)
    allow_concurrent: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_poll_at: Mapped[datetime | None] = mapped_column()
    next_poll_at: Mapped[datetime | None] = mapped_column()
    last_fire_at: Mapped[datetime | None] = mapped_column()
    poll_count: Mapped[int] = mapped_column(BigInteger, default=0)
    fire_count: Mapped[int] = mapped_column(BigInteger, default=0)
    skip_count: Mapped[int] = mapped_column(BigInteger, default=0)
    dedup_skip_count: Mapped[int] = mapped_column(BigInteger, default=0)
    error_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TriggerExecution(Base):
    __tablename__ = "trigger_executions"
    __table_args__ = (
        Index(
            "uq_trigger_exec_active",
            "trigger_name",
            "context_hash",
            unique=True,
            sqlite_where=text("dedup_active = 1"),
            postgresql_where=text("dedup_active"),
        ),
        Index("ix_trigger_exec_name_started", "trigger_name", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    public_id: Mapped[str] = public_id_column()
    trigger_name: Mapped[str] = mapped_column(String(200))
    context_hash: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("workflow_runs.id", ondelete="CASCADE"), index=True)
    dedup_active: Mapped[bool] = mapped_column(Boolean, default=False)
    lock_token: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()


class CronSchedule(Base):
    """A cron schedule; a named *instance* (``instance_name``) also carries ``params`` (JSON) for its runs."""

    __tablename__ = "cron_schedules"
    __table_args__ = (UniqueConstraint("workflow_name", "instance_name", name="uq_cron_schedules_instance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = public_id_column()
    workflow_name: Mapped[str] = mapped_column(String(200), index=True)
    instance_name: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[str | None] = mapped_column(Text)
    cron_expression: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    catchup_policy: Mapped[str] = mapped_column(String(16), default="skip")
    next_run_at: Mapped[datetime | None] = mapped_column()
    last_run_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CronExecution(Base):
    """One claimed due time. Normally claimed together with its run (``run_id`` set at once). A due time whose
    run could not be created (its workflow unknown here) is claimed alone with ``handoff_pending``; cron recovery
    re-fires it later (``recovery_attempts`` counts its tries, ``recovery_claimed_at`` stops two at once)."""

    __tablename__ = "cron_executions"
    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_time", name="uq_cron_exec_time"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    public_id: Mapped[str] = public_id_column()
    schedule_id: Mapped[int] = mapped_column(ForeignKey("cron_schedules.id", ondelete="CASCADE"), index=True)
    scheduled_time: Mapped[datetime] = mapped_column()
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("workflow_runs.id", ondelete="SET NULL"))
    handoff_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    recovery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    recovery_claimed_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime | None] = mapped_column()


class Package(Base):
    """A validated ``.cloacina`` archive, content-addressed by its fingerprint (workers fetch code from here)."""

    __tablename__ = "packages"
    __table_args__ = (Index("ix_packages_name_version", "name", "version"),)

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    manifest: Mapped[str] = mapped_column(Text)
    archive: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    source_path: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CatalogWorkflow(Base):
    """One version of a workflow as a process that registered it recorded it (:mod:`cloacina.store.catalog`).

    ``id`` grows with every new (name, version): the newest version of a name is the one with the highest id, so
    a process that records an older version again never takes the name back (it only refreshes that row).
    """

    __tablename__ = "workflow_catalog"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_workflow_catalog_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[str] = mapped_column(Text)  # JSON object
    tasks: Mapped[str] = mapped_column(Text)  # JSON list of CatalogTask
    origin: Mapped[str] = mapped_column(String(300))
    # The workflow's max_active_runs (migration 0009); NULL: no limit.
    max_active_runs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
