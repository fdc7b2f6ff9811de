"""Repository for trigger schedules (one row per trigger name) and trigger executions (one row per fire).

Returned dicts carry the keys of cloaca's trigger management API (``id`` is the row's public UUID, times are
RFC 3339 text) plus cloacina's poll statistics.

Poll statistics are written in batches (:meth:`TriggerStore.flush_poll_stats`): a runner with a thousand
triggers polled every second would otherwise spend a transaction per poll. Fires are not batched: a fire is a
run creation, and it goes through :meth:`cloacina.store.runs.RunStore.create_run` with its dedup claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from cloacina.store.database import Database, rowcount
from cloacina.store.models import TriggerExecution, TriggerSchedule, WorkflowRun
from cloacina.timestamps import iso, utcnow


@dataclass
class PollStats:
    """Counters accumulated in memory between two flushes, for one trigger."""

    polls: int = 0
    fires: int = 0
    skips: int = 0
    dedup_skips: int = 0
    errors: int = 0
    last_poll_at: datetime | None = None
    last_fire_at: datetime | None = None
    next_poll_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def is_empty(self) -> bool:
        return all(not value for value in self.__dict__.values())


@dataclass(frozen=True)
class ScheduleState:
    """The parts of a schedule row the poller re-reads: may it poll, and how often."""

    enabled: bool
    poll_interval_ms: int
    workflow_name: str
    allow_concurrent: bool


def _keep(column: Any, name: str) -> Any:
    """``COALESCE(:name, column)``: a NULL parameter leaves the stored value alone."""
    return func.coalesce(bindparam(name, type_=column.type), column)


_FLUSH_STATS = (
    update(TriggerSchedule)
    .where(TriggerSchedule.trigger_name == bindparam("b_name"))
    .values(
        poll_count=TriggerSchedule.poll_count + bindparam("polls"),
        fire_count=TriggerSchedule.fire_count + bindparam("fires"),
        skip_count=TriggerSchedule.skip_count + bindparam("skips"),
        dedup_skip_count=TriggerSchedule.dedup_skip_count + bindparam("dedup_skips"),
        error_count=TriggerSchedule.error_count + bindparam("errors"),
        last_poll_at=_keep(TriggerSchedule.last_poll_at, "b_last_poll_at"),
        last_fire_at=_keep(TriggerSchedule.last_fire_at, "b_last_fire_at"),
        next_poll_at=_keep(TriggerSchedule.next_poll_at, "b_next_poll_at"),
        last_error=_keep(TriggerSchedule.last_error, "b_last_error"),
        last_error_at=_keep(TriggerSchedule.last_error_at, "b_last_error_at"),
        updated_at=bindparam("now", type_=TriggerSchedule.updated_at.type),
    )
)


def _schedule_dict(row: TriggerSchedule) -> dict[str, Any]:
    return {
        "id": row.public_id,
        "trigger_name": row.trigger_name,
        "workflow_name": row.workflow_name,
        "poll_interval_ms": row.poll_interval_ms,
        "allow_concurrent": row.allow_concurrent,
        "enabled": row.enabled,
        "last_poll_at": iso(row.last_poll_at),
        "next_poll_at": iso(row.next_poll_at),
        "last_fire_at": iso(row.last_fire_at),
        "poll_count": row.poll_count,
        "fire_count": row.fire_count,
        "skip_count": row.skip_count,
        "dedup_skip_count": row.dedup_skip_count,
        "error_count": row.error_count,
        "last_error": row.last_error,
        "last_error_at": iso(row.last_error_at),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


class TriggerStore:
    """Reads and writes trigger schedules and executions; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert_schedule(
        self, trigger_name: str, workflow_name: str, poll_interval_ms: int, allow_concurrent: bool
    ) -> None:
        """Create the schedule row, or update what the code defines; a stored ``enabled`` flag is kept."""
        now = utcnow()
        for _ in range(3):  # two processes may insert the same new trigger at once; the loser updates
            try:
                with self.db.session() as s:
                    row = s.scalars(
                        select(TriggerSchedule).where(TriggerSchedule.trigger_name == trigger_name)
                    ).one_or_none()
                    if row is None:
                        s.add(
                            TriggerSchedule(
                                trigger_name=trigger_name,
                                workflow_name=workflow_name,
                                poll_interval_ms=poll_interval_ms,
                                allow_concurrent=allow_concurrent,
                                enabled=True,
                                poll_count=0,
                                fire_count=0,
                                skip_count=0,
                                dedup_skip_count=0,
                                error_count=0,
                                created_at=now,
                                updated_at=now,
                            )
                        )
                    elif (row.workflow_name, row.poll_interval_ms, row.allow_concurrent) != (
                        workflow_name,
                        poll_interval_ms,
                        allow_concurrent,
                    ):
                        row.workflow_name = workflow_name
                        row.poll_interval_ms = poll_interval_ms
                        row.allow_concurrent = allow_concurrent
                        row.updated_at = now
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"could not upsert trigger schedule {trigger_name!r}")

    def get_schedule(self, trigger_name: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.scalars(select(TriggerSchedule).where(TriggerSchedule.trigger_name == trigger_name)).one_or_none()
            return _schedule_dict(row) if row else None

    def list_schedules(self, enabled_only: bool = False, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Schedules newest first, ``limit``/``offset`` paged; with ``enabled_only`` every enabled one, oldest
        first, unpaged (cloaca's semantics: the set a poller would poll)."""
        with self.db.session() as s:
            if enabled_only:
                q = (
                    select(TriggerSchedule)
                    .where(TriggerSchedule.enabled.is_(True))
                    .order_by(TriggerSchedule.created_at, TriggerSchedule.id)
                )
            else:
                newest = (TriggerSchedule.created_at.desc(), TriggerSchedule.id.desc())
                q = select(TriggerSchedule).order_by(*newest).limit(limit).offset(offset)
            return [_schedule_dict(r) for r in s.scalars(q).all()]

    def schedule_states(self) -> dict[str, ScheduleState]:
        """Enabled flag and interval of every schedule (what the poller re-reads periodically)."""
        with self.db.session() as s:
            rows = s.execute(
                select(
                    TriggerSchedule.trigger_name,
                    TriggerSchedule.enabled,
                    TriggerSchedule.poll_interval_ms,
                    TriggerSchedule.workflow_name,
                    TriggerSchedule.allow_concurrent,
                )
            ).all()
            return {r[0]: ScheduleState(bool(r[1]), int(r[2]), r[3], bool(r[4])) for r in rows}

    def set_enabled(self, trigger_name: str, enabled: bool) -> bool:
        """Enable or disable polling; ``False`` if no trigger has that name."""
        with self.db.session() as s:
            res = s.execute(
                update(TriggerSchedule)
                .where(TriggerSchedule.trigger_name == trigger_name)
                .values(enabled=bool(enabled), updated_at=utcnow())
            )
            return rowcount(res) == 1

    def flush_poll_stats(self, stats: Mapping[str, PollStats]) -> None:
        """Add accumulated counters to their schedule rows: one prepared UPDATE executed for all of them, in one
        transaction (a thousand triggers cost one round of executemany, not a thousand statements)."""
        rows = [
            {
                "b_name": name,
                "polls": st.polls,
                "fires": st.fires,
                "skips": st.skips,
                "dedup_skips": st.dedup_skips,
                "errors": st.errors,
                "b_last_poll_at": st.last_poll_at,
                "b_last_fire_at": st.last_fire_at,
                "b_next_poll_at": st.next_poll_at,
                "b_last_error": st.last_error,
                "b_last_error_at": st.last_error_at,
                "now": utcnow(),
            }
            for name, st in stats.items()
            if not st.is_empty()
        ]
        if rows:
            with self.db.connection() as c:
                c.execute(_FLUSH_STATS, rows)

    def execution_history(self, trigger_name: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Fires of ``trigger_name`` that started a run, newest first, with the run's status (``[]`` for an
        unknown name). ``schedule_id`` is the public id of the trigger's schedule (``None`` if it was removed)."""
        with self.db.session() as s:
            rows = s.execute(
                select(
                    TriggerExecution,
                    TriggerSchedule.public_id,
                    WorkflowRun.status,
                    WorkflowRun.workflow_name,
                    WorkflowRun.error_message,
                )
                .join(WorkflowRun, WorkflowRun.id == TriggerExecution.run_id)
                .outerjoin(TriggerSchedule, TriggerSchedule.trigger_name == TriggerExecution.trigger_name)
                .where(TriggerExecution.trigger_name == trigger_name)
                .order_by(TriggerExecution.started_at.desc(), TriggerExecution.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [
                {
                    "id": ex.public_id,
                    "schedule_id": schedule_id,
                    "context_hash": ex.context_hash,
                    "workflow_execution_id": ex.run_id,
                    "started_at": iso(ex.started_at),
                    "completed_at": iso(ex.completed_at),
                    "created_at": iso(ex.started_at),
                    "trigger_name": ex.trigger_name,
                    "workflow_name": workflow_name,
                    "run_id": ex.run_id,
                    "status": status,
                    "is_active": ex.dedup_active,
                    "error_message": error,
                }
                for ex, schedule_id, status, workflow_name, error in rows
            ]

    def active_hashes(self, trigger_name: str) -> set[str]:
        """Context hashes of runs fired by ``trigger_name`` that are still active (deduplicated only)."""
        with self.db.session() as s:
            rows = s.scalars(
                select(TriggerExecution.context_hash).where(
                    TriggerExecution.trigger_name == trigger_name, TriggerExecution.dedup_active.is_(True)
                )
            ).all()
            return set(rows)
