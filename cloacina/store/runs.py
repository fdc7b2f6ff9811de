"""Repository for workflow runs, their task rows and task attempts.

Every state change is a guarded ``UPDATE ... WHERE status = <expected>``: when two parties race (two tasks of a
fan-in finishing together, a timed-out attempt finishing late, two sweepers), exactly one wins and the others
see ``False`` and back off. That is what keeps a task from being dispatched or completed twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import Decision, TaskView
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database
from cloacina.store.models import CronExecution, TaskAttempt, TaskRun, TriggerExecution, WorkflowRun, utcnow


def _loads(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class TriggerClaim:
    """Links a new run to the trigger fire that started it; ``dedup`` makes it count for deduplication."""

    trigger_name: str
    context_hash: str
    dedup: bool


@dataclass(frozen=True)
class CronClaim:
    """Claims one due time of a cron schedule for a new run; a second claim of the same time is refused."""

    schedule_id: int
    scheduled_time: datetime


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    workflow_name: str
    workflow_version: str
    status: RunStatus
    input_context: dict[str, Any]
    final_context: dict[str, Any] | None
    error_message: str | None
    trigger_name: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    deadline_at: datetime | None


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    status: TaskStatus
    attempt: int
    max_attempts: int
    input_context: dict[str, Any] | None
    output_context: dict[str, Any] | None
    error_message: str | None
    error_kind: str | None
    skip_reason: str | None
    started_at: datetime | None
    completed_at: datetime | None
    next_attempt_at: datetime | None

    def view(self) -> TaskView:
        return TaskView(self.status, self.output_context, self.skip_reason)


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    status: str
    error_message: str | None
    error_kind: str | None
    started_at: datetime
    completed_at: datetime | None
    duration_ms: int | None


def _run_record(row: WorkflowRun) -> RunRecord:
    return RunRecord(
        run_id=row.id,
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        status=RunStatus(row.status),
        input_context=json.loads(row.input_context),
        final_context=_loads(row.final_context),
        error_message=row.error_message,
        trigger_name=row.trigger_name,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        deadline_at=row.deadline_at,
    )


def _task_record(row: TaskRun) -> TaskRecord:
    return TaskRecord(
        task_id=row.task_id,
        status=TaskStatus(row.status),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        input_context=_loads(row.input_context),
        output_context=_loads(row.output_context),
        error_message=row.error_message,
        error_kind=row.error_kind,
        skip_reason=row.skip_reason,
        started_at=row.started_at,
        completed_at=row.completed_at,
        next_attempt_at=row.next_attempt_at,
    )


class RunStore:
    """Reads and writes runs; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- creation ---------------------------------------------------------------------------------------
    def create_run(
        self,
        workflow: Workflow,
        input_context: Mapping[str, Any],
        *,
        trigger: TriggerClaim | None = None,
        cron: CronClaim | None = None,
        deadline_s: float | None = None,
        owner: str | None = None,
        package_fingerprint: str | None = None,
    ) -> str | None:
        """Insert the run, its task rows and (for a trigger fire) its trigger-execution row atomically.

        Returns the new run id, or ``None`` when the claim was refused: ``trigger.dedup`` is set and a run for the
        same (trigger, context hash) is still active (partial unique index), or ``cron`` names a due time that
        was already claimed (unique (schedule, scheduled_time)). Nothing is written in that case.
        """
        now = utcnow()
        run_id = str(uuid.uuid4())
        run = WorkflowRun(
            id=run_id,
            workflow_name=workflow.name,
            workflow_version=workflow.version,
            status=RunStatus.PENDING.value,
            input_context=canonical_json(dict(input_context)),
            trigger_name=trigger.trigger_name if trigger else None,
            cron_schedule_id=cron.schedule_id if cron else None,
            package_fingerprint=package_fingerprint,
            owner=owner,
            created_at=now,
            updated_at=now,
            heartbeat_at=now,
            deadline_at=now + timedelta(seconds=deadline_s) if deadline_s else None,
        )
        tasks = [
            TaskRun(
                run_id=run_id,
                task_id=t.task_id,
                status=TaskStatus.NOT_STARTED.value,
                attempt=0,
                max_attempts=t.retry.max_attempts,
                updated_at=now,
            )
            for t in workflow.tasks.values()
        ]
        try:
            with self.db.session() as s:
                s.add(run)
                s.flush()
                s.add_all(tasks)
                if trigger is not None:
                    s.add(
                        TriggerExecution(
                            trigger_name=trigger.trigger_name,
                            context_hash=trigger.context_hash,
                            run_id=run_id,
                            dedup_active=trigger.dedup,
                            started_at=now,
                        )
                    )
                if cron is not None:
                    s.add(
                        CronExecution(
                            schedule_id=cron.schedule_id,
                            scheduled_time=cron.scheduled_time,
                            run_id=run_id,
                            claimed_at=now,
                        )
                    )
        except IntegrityError:
            if (trigger is not None and trigger.dedup) or cron is not None:
                return None
            raise
        return run_id

    # -- reading ----------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        with self.db.session() as s:
            row = s.get(WorkflowRun, run_id)
            return _run_record(row) if row else None

    def get_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id).order_by(TaskRun.id)).all()
            return {r.task_id: _task_record(r) for r in rows}

    def load(self, run_id: str) -> tuple[RunRecord, dict[str, TaskRecord]] | None:
        """The run and its tasks, read in one transaction (a consistent snapshot for the planner)."""
        with self.db.session() as s:
            row = s.get(WorkflowRun, run_id)
            if row is None:
                return None
            rows = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id).order_by(TaskRun.id)).all()
            return _run_record(row), {r.task_id: _task_record(r) for r in rows}

    def get_attempts(self, run_id: str, task_id: str) -> list[AttemptRecord]:
        with self.db.session() as s:
            rows = s.scalars(
                select(TaskAttempt)
                .join(TaskRun, TaskAttempt.task_run_id == TaskRun.id)
                .where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)
                .order_by(TaskAttempt.attempt)
            ).all()
            return [
                AttemptRecord(
                    a.attempt,
                    a.status,
                    a.error_message,
                    a.error_kind,
                    a.started_at,
                    a.completed_at,
                    a.duration_ms,
                )
                for a in rows
            ]

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        with self.db.session() as s:
            q = select(WorkflowRun).order_by(WorkflowRun.created_at.desc(), WorkflowRun.id)
            if workflow_name:
                q = q.where(WorkflowRun.workflow_name == workflow_name)
            if status:
                q = q.where(WorkflowRun.status == status)
            return [_run_record(r) for r in s.scalars(q.limit(limit).offset(offset)).all()]

    def count_runs(self, status: str | None = None) -> int:
        with self.db.session() as s:
            q = select(func.count()).select_from(WorkflowRun)
            if status:
                q = q.where(WorkflowRun.status == status)
            return int(s.scalar(q) or 0)

    # -- transitions ------------------------------------------------------------------------------------
    def apply_decisions(self, run_id: str, decisions: Iterable[Decision]) -> list[str]:
        """Mark planned tasks Ready (returned: the caller now owns their dispatch) or Skipped."""
        now = utcnow()
        won: list[str] = []
        with self.db.session() as s:
            for d in decisions:
                values: dict[str, Any] = {"input_context": canonical_json(d.input_context), "updated_at": now}
                if d.action == "run":
                    values["status"] = TaskStatus.READY.value
                else:
                    values.update(
                        status=TaskStatus.SKIPPED.value,
                        skip_reason=d.skip_reason,
                        output_context=values["input_context"],
                        completed_at=now,
                    )
                res = s.execute(
                    update(TaskRun)
                    .where(
                        TaskRun.run_id == run_id,
                        TaskRun.task_id == d.task_id,
                        TaskRun.status == TaskStatus.NOT_STARTED.value,
                    )
                    .values(**values)
                )
                if res.rowcount == 1 and d.action == "run":
                    won.append(d.task_id)
        return won

    def start_attempt(
        self, run_id: str, task_id: str, *, worker: str | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """Ready -> Running with a new attempt number; ``None`` if the task is not Ready or the run has ended."""
        now = utcnow()
        with self.db.session() as s:
            run = s.get(WorkflowRun, run_id)
            if run is None or RunStatus(run.status).is_terminal:
                return None
            row = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)).one_or_none()
            if row is None or row.status != TaskStatus.READY.value:
                return None
            attempt = row.attempt + 1
            res = s.execute(
                update(TaskRun)
                .where(
                    TaskRun.id == row.id,
                    TaskRun.status == TaskStatus.READY.value,
                    TaskRun.attempt == row.attempt,
                )
                .values(
                    status=TaskStatus.RUNNING.value,
                    attempt=attempt,
                    started_at=row.started_at or now,
                    heartbeat_at=now,
                    next_attempt_at=None,
                    updated_at=now,
                )
            )
            if res.rowcount != 1:
                return None
            s.add(
                TaskAttempt(
                    task_run_id=row.id,
                    attempt=attempt,
                    status=TaskStatus.RUNNING.value,
                    worker=worker,
                    started_at=now,
                )
            )
            if run.status == RunStatus.PENDING.value:
                s.execute(
                    update(WorkflowRun)
                    .where(WorkflowRun.id == run_id, WorkflowRun.status == RunStatus.PENDING.value)
                    .values(status=RunStatus.RUNNING.value, started_at=now, updated_at=now)
                )
            return attempt, json.loads(row.input_context or "{}")

    def _finish_attempt(
        self,
        s: Session,
        task_row_id: int,
        attempt: int,
        status: str,
        error: str | None,
        kind: str | None,
        now: datetime,
    ) -> None:
        a = s.scalars(
            select(TaskAttempt).where(TaskAttempt.task_run_id == task_row_id, TaskAttempt.attempt == attempt)
        ).one_or_none()
        if a is not None:
            a.status, a.error_message, a.error_kind, a.completed_at = status, error, kind, now
            a.duration_ms = int((now - a.started_at).total_seconds() * 1000)

    def complete_attempt(self, run_id: str, task_id: str, attempt: int, output: Mapping[str, Any]) -> bool:
        """Running -> Completed for exactly this attempt; ``False`` if it was already resolved (e.g. timed out)."""
        now = utcnow()
        with self.db.session() as s:
            row = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)).one()
            res = s.execute(
                update(TaskRun)
                .where(
                    TaskRun.id == row.id,
                    TaskRun.status == TaskStatus.RUNNING.value,
                    TaskRun.attempt == attempt,
                )
                .values(
                    status=TaskStatus.COMPLETED.value,
                    output_context=canonical_json(dict(output)),
                    error_message=None,
                    error_kind=None,
                    completed_at=now,
                    updated_at=now,
                )
            )
            if res.rowcount != 1:
                return False
            self._finish_attempt(s, row.id, attempt, TaskStatus.COMPLETED.value, None, None, now)
            return True

    def fail_attempt(
        self, run_id: str, task_id: str, attempt: int, error: str, kind: str, retry_at: datetime | None
    ) -> bool:
        """Running -> Ready (retry at ``retry_at``) or Failed, for exactly this attempt."""
        now = utcnow()
        with self.db.session() as s:
            row = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)).one()
            values: dict[str, Any] = {"error_message": error, "error_kind": kind, "updated_at": now}
            if retry_at is not None:
                values.update(status=TaskStatus.READY.value, next_attempt_at=retry_at)
            else:
                values.update(status=TaskStatus.FAILED.value, completed_at=now)
            res = s.execute(
                update(TaskRun)
                .where(
                    TaskRun.id == row.id,
                    TaskRun.status == TaskStatus.RUNNING.value,
                    TaskRun.attempt == attempt,
                )
                .values(**values)
            )
            if res.rowcount != 1:
                return False
            self._finish_attempt(s, row.id, attempt, TaskStatus.FAILED.value, error, kind, now)
            return True

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        final_context: Mapping[str, Any] | None,
        error_message: str | None,
    ) -> bool:
        """End the run (once) and free its deduplication key in the same transaction.

        Tasks that never started are marked Skipped (``run_ended``) and tasks still running (only possible when
        the run timed out) Failed, so nothing of the run is left pending.
        """
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(
                update(WorkflowRun)
                .where(
                    WorkflowRun.id == run_id,
                    WorkflowRun.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
                )
                .values(
                    status=status.value,
                    completed_at=now,
                    updated_at=now,
                    error_message=error_message,
                    final_context=canonical_json(dict(final_context)) if final_context is not None else None,
                )
            )
            if res.rowcount != 1:
                return False
            s.execute(
                update(TriggerExecution)
                .where(TriggerExecution.run_id == run_id)
                .values(dedup_active=False, completed_at=now)
            )
            s.execute(
                update(TaskRun)
                .where(
                    TaskRun.run_id == run_id,
                    TaskRun.status.in_([TaskStatus.NOT_STARTED.value, TaskStatus.READY.value]),
                )
                .values(status=TaskStatus.SKIPPED.value, skip_reason="run_ended", completed_at=now, updated_at=now)
            )
            # Only a timed-out run ends with a task still running; a late result of that attempt is refused.
            s.execute(
                update(TaskRun)
                .where(TaskRun.run_id == run_id, TaskRun.status == TaskStatus.RUNNING.value)
                .values(
                    status=TaskStatus.FAILED.value,
                    completed_at=now,
                    updated_at=now,
                    error_kind="error",
                    error_message=f"run ended ({error_message}) while the task was running",
                )
            )
            return True
