"""Repository for workflow runs: creation and every state transition of runs, tasks and attempts.

Two rules keep concurrent executors (threads, Celery workers on many machines, sweepers) from stepping on each
other:

- Every task transition is a guarded ``UPDATE ... WHERE status = <expected> [AND attempt = <n>]``: of two
  parties racing (a duplicate delivery, a late result of a timed-out attempt, two sweepers) exactly one wins.
- Planning what comes next happens in the same transaction as the task outcome that caused it, under a lock
  on the run's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite is serialised per process and locked per
  database). Two tasks of a fan-in finishing together therefore plan one after the other, and the second
  always sees the first: the fan-in task is scheduled exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import Decision, TaskView, final_context, plan, run_outcome
from cloacina.engine.states import RunStatus, SkipReason, TaskStatus
from cloacina.store.database import Database
from cloacina.store.models import CronExecution, TaskAttempt, TaskRun, TriggerExecution, WorkflowRun, utcnow
from cloacina.store.run_queries import RunQueries
from cloacina.store.run_records import (
    AttemptRecord,
    CronClaim,
    RunEnd,
    RunRecord,
    StartedAttempt,
    TaskRecord,
    Transition,
    TriggerClaim,
    loads,
)

__all__ = [
    "AttemptRecord",
    "CronClaim",
    "RunEnd",
    "RunRecord",
    "RunStore",
    "StartedAttempt",
    "TaskRecord",
    "Transition",
    "TriggerClaim",
]

_ACTIVE_RUN = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def failed_tasks_message(views: Mapping[str, Any]) -> str | None:
    """``task failed: a: ValueError: ...; b: ...`` for the run's error message, from (status, error) pairs."""
    failed = [f"{tid}: {err}" for tid, (status, err) in views.items() if status == TaskStatus.FAILED]
    return ("task failed: " + "; ".join(failed)) if failed else None


class RunStore(RunQueries):
    """Writes runs; every method is one transaction."""

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
        """Insert the run, its task rows and its claim (trigger fire or cron time) atomically.

        Returns the new run id, or ``None`` when the claim was refused: ``trigger.dedup`` is set and a run for the
        same (trigger, context hash) is still active (partial unique index), or ``cron`` names a due time that
        was already claimed (unique (schedule, scheduled_time)). Nothing is written in that case.
        """
        now = utcnow()
        run_id = str(uuid.uuid4())
        try:
            with self.db.session() as s:
                s.execute(
                    insert(WorkflowRun).values(
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
                )
                s.execute(
                    insert(TaskRun),
                    [
                        {
                            "run_id": run_id,
                            "task_id": t.task_id,
                            "status": TaskStatus.NOT_STARTED.value,
                            "attempt": 0,
                            "max_attempts": t.retry.max_attempts,
                            "updated_at": now,
                        }
                        for t in workflow.tasks.values()
                    ],
                )
                if trigger is not None:
                    s.execute(
                        insert(TriggerExecution).values(
                            trigger_name=trigger.trigger_name,
                            context_hash=trigger.context_hash,
                            run_id=run_id,
                            dedup_active=trigger.dedup,
                            lock_token=trigger.lock_token,
                            started_at=now,
                        )
                    )
                if cron is not None:
                    s.execute(
                        insert(CronExecution).values(
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

    # -- the planning step (run row locked) -----------------------------------------------------------------
    @staticmethod
    def _lock_run(s: Session, run_id: str) -> WorkflowRun | None:
        q = select(WorkflowRun).where(WorkflowRun.id == run_id)
        if s.bind is not None and s.bind.dialect.name == "postgresql":
            q = q.with_for_update()
        return s.scalars(q).one_or_none()

    def _plan_locked(self, s: Session, run: WorkflowRun, workflow: Workflow, now: datetime) -> Transition:
        """Plan and apply what can happen next; finish the run if everything is terminal. Caller holds the lock."""
        rows = s.scalars(select(TaskRun).where(TaskRun.run_id == run.id)).all()
        views = {r.task_id: TaskView(TaskStatus(r.status), loads(r.output_context), r.skip_reason) for r in rows}
        by_id = {r.task_id: r for r in rows}
        ready: list[str] = []
        for d in plan(workflow, loads(run.input_context) or {}, views):
            row = by_id.get(d.task_id)
            if row is None or row.status != TaskStatus.NOT_STARTED.value:
                continue
            row.input_context = canonical_json(d.input_context)
            row.updated_at = now
            if d.action == "run":
                row.status = TaskStatus.READY.value
                ready.append(d.task_id)
                views[d.task_id] = TaskView(TaskStatus.READY)
            else:
                row.status, row.skip_reason, row.completed_at = TaskStatus.SKIPPED.value, d.skip_reason, now
                row.output_context = row.input_context
                views[d.task_id] = TaskView(TaskStatus.SKIPPED, d.input_context, d.skip_reason)
        outcome = run_outcome(views)
        if outcome is None:
            return Transition(True, tuple(ready))
        errors = {r.task_id: (TaskStatus(r.status), r.error_message) for r in rows}
        message = failed_tasks_message(errors) if outcome == RunStatus.FAILED else None
        ended = self._end_run_locked(s, run, outcome, final_context(workflow, views), message, now)
        return Transition(True, tuple(ready), ended)

    def _end_run_locked(
        self,
        s: Session,
        run: WorkflowRun,
        status: RunStatus,
        final: Mapping[str, Any] | None,
        message: str | None,
        now: datetime,
    ) -> RunEnd:
        run.status, run.completed_at, run.updated_at, run.error_message = status.value, now, now, message
        run.final_context = canonical_json(dict(final)) if final is not None else None
        execution = s.scalars(select(TriggerExecution).where(TriggerExecution.run_id == run.id)).first()
        # Freeing the dedup key in the same transaction that ends the run: the key is free the moment the run is.
        s.execute(
            update(TriggerExecution)
            .where(TriggerExecution.run_id == run.id)
            .values(dedup_active=False, completed_at=now)
        )
        s.execute(
            update(TaskRun)
            .where(TaskRun.run_id == run.id, TaskRun.status.in_([TaskStatus.NOT_STARTED.value, TaskStatus.READY.value]))
            .values(status=TaskStatus.SKIPPED.value, skip_reason="run_ended", completed_at=now, updated_at=now)
        )
        # Only a run ended from outside (timeout) has tasks still running; a late result of theirs is refused.
        s.execute(
            update(TaskRun)
            .where(TaskRun.run_id == run.id, TaskRun.status == TaskStatus.RUNNING.value)
            .values(
                status=TaskStatus.FAILED.value,
                completed_at=now,
                updated_at=now,
                error_kind="error",
                error_message=f"run ended ({message}) while the task was running",
            )
        )
        if execution is None:
            return RunEnd(run.id, status)
        return RunEnd(run.id, status, execution.trigger_name, execution.context_hash, execution.lock_token)

    def _step(self, run_id: str, workflow: Workflow | None, mutate: Callable[[Session, datetime], bool]) -> Transition:
        now = utcnow()
        with self.db.session() as s:
            run = self._lock_run(s, run_id)
            if run is None or run.status not in _ACTIVE_RUN:
                return Transition(False)
            if not mutate(s, now):
                return Transition(False)
            run.heartbeat_at = now
            if workflow is None:
                return Transition(True)
            return self._plan_locked(s, run, workflow, now)

    def advance(self, run_id: str, workflow: Workflow) -> Transition:
        """Plan the run (used after creation and by recovery): newly Ready tasks, skips, and the run's end."""
        return self._step(run_id, workflow, lambda s, now: True)

    # -- attempts ---------------------------------------------------------------------------------------
    def start_attempt(self, run_id: str, task_id: str, *, worker: str | None = None) -> StartedAttempt | None:
        """Ready -> Running with a new attempt number; ``None`` if the task is not Ready or the run has ended."""
        now = utcnow()
        with self.db.session() as s:
            run = s.execute(
                select(
                    WorkflowRun.status,
                    WorkflowRun.workflow_name,
                    WorkflowRun.workflow_version,
                    WorkflowRun.package_fingerprint,
                    WorkflowRun.input_context,
                ).where(WorkflowRun.id == run_id)
            ).one_or_none()
            if run is None or run.status not in _ACTIVE_RUN:
                return None
            row = s.execute(
                update(TaskRun)
                .where(TaskRun.run_id == run_id, TaskRun.task_id == task_id, TaskRun.status == TaskStatus.READY.value)
                .values(
                    status=TaskStatus.RUNNING.value,
                    attempt=TaskRun.attempt + 1,
                    heartbeat_at=now,
                    next_attempt_at=None,
                    updated_at=now,
                )
                .returning(TaskRun.id, TaskRun.attempt, TaskRun.input_context, TaskRun.started_at)
            ).one_or_none()
            if row is None:
                return None
            if row.started_at is None:
                s.execute(update(TaskRun).where(TaskRun.id == row.id).values(started_at=now))
            s.execute(
                insert(TaskAttempt).values(
                    task_run_id=row.id,
                    attempt=row.attempt,
                    status=TaskStatus.RUNNING.value,
                    worker=worker,
                    started_at=now,
                )
            )
            values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
            if run.status == RunStatus.PENDING.value:
                values.update(status=RunStatus.RUNNING.value, started_at=now)
            s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(**values))
            triggered_at = (loads(run.input_context) or {}).get("triggered_at") if row.attempt == 1 else None
            return StartedAttempt(
                attempt=row.attempt,
                input_context=loads(row.input_context) or {},
                workflow_name=run.workflow_name,
                workflow_version=run.workflow_version,
                package_fingerprint=run.package_fingerprint,
                triggered_at=triggered_at if isinstance(triggered_at, str) else None,
            )

    @staticmethod
    def _resolve_attempt(
        s: Session,
        run_id: str,
        task_id: str,
        attempt: int,
        values: dict[str, Any],
        attempt_status: str,
        error: str | None,
        kind: str | None,
        now: datetime,
    ) -> bool:
        row = s.execute(
            update(TaskRun)
            .where(
                TaskRun.run_id == run_id,
                TaskRun.task_id == task_id,
                TaskRun.status == TaskStatus.RUNNING.value,
                TaskRun.attempt == attempt,
            )
            .values(updated_at=now, **values)
            .returning(TaskRun.id)
        ).one_or_none()
        if row is None:
            return False
        a = s.scalars(
            select(TaskAttempt).where(TaskAttempt.task_run_id == row.id, TaskAttempt.attempt == attempt)
        ).one_or_none()
        if a is not None:
            a.status, a.error_message, a.error_kind, a.completed_at = attempt_status, error, kind, now
            a.duration_ms = int((now - a.started_at).total_seconds() * 1000)
        return True

    def complete_attempt(
        self, run_id: str, task_id: str, attempt: int, output: Mapping[str, Any], workflow: Workflow | None = None
    ) -> Transition:
        """Running -> Completed for exactly this attempt, then (given ``workflow``) plan the run in the same
        transaction. ``applied`` is False if the attempt was already resolved (e.g. timed out)."""
        values = {
            "status": TaskStatus.COMPLETED.value,
            "output_context": canonical_json(dict(output)),
            "error_message": None,
            "error_kind": None,
        }

        def mutate(s: Session, now: datetime) -> bool:
            values["completed_at"] = now
            return self._resolve_attempt(
                s, run_id, task_id, attempt, values, TaskStatus.COMPLETED.value, None, None, now
            )

        return self._step(run_id, workflow, mutate)

    def fail_attempt(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        error: str,
        kind: str,
        retry_at: datetime | None,
        workflow: Workflow | None = None,
    ) -> Transition:
        """Running -> Ready (to retry at ``retry_at``) or Failed for exactly this attempt; a final failure plans
        the run (given ``workflow``) in the same transaction."""

        def mutate(s: Session, now: datetime) -> bool:
            values: dict[str, Any] = {"error_message": error, "error_kind": kind}
            if retry_at is not None:
                values.update(status=TaskStatus.READY.value, next_attempt_at=retry_at)
            else:
                values.update(status=TaskStatus.FAILED.value, completed_at=now)
            return self._resolve_attempt(s, run_id, task_id, attempt, values, TaskStatus.FAILED.value, error, kind, now)

        return self._step(run_id, None if retry_at is not None else workflow, mutate)

    def heartbeat(self, attempts: Iterable[tuple[str, str, int]]) -> int:
        """Mark running attempts (run_id, task_id, attempt) as alive; returns how many rows were touched."""
        now = utcnow()
        touched = 0
        with self.db.session() as s:
            for run_id, task_id, attempt in attempts:
                res = s.execute(
                    update(TaskRun)
                    .where(
                        TaskRun.run_id == run_id,
                        TaskRun.task_id == task_id,
                        TaskRun.attempt == attempt,
                        TaskRun.status == TaskStatus.RUNNING.value,
                    )
                    .values(heartbeat_at=now)
                )
                touched += res.rowcount
                s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(heartbeat_at=now))
        return touched

    # -- compatibility with direct use (tests, tools) ----------------------------------------------------
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
                        skip_reason=d.skip_reason or SkipReason.RULE_FALSE,
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

    def finish_run(
        self, run_id: str, status: RunStatus, final_context: Mapping[str, Any] | None, error_message: str | None
    ) -> RunEnd | None:
        """End the run from outside the planner (timeout, cancellation), once; frees its dedup key.

        Tasks that never started are marked Skipped (``run_ended``) and tasks still running Failed, so nothing of
        the run is left pending. Returns the run's end, or ``None`` if it had already ended.
        """
        now = utcnow()
        with self.db.session() as s:
            run = self._lock_run(s, run_id)
            if run is None or run.status not in _ACTIVE_RUN:
                return None
            return self._end_run_locked(s, run, status, final_context, error_message, now)
