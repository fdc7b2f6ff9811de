"""Run control in the store: end a run from outside the planner (deadline, cancellation) and re-execute a run
from its failure. Mixed into :class:`cloacina.store.runs.RunStore`; every method is one transaction.

**Cancel** (:meth:`RunControl.cancel_run`) locks the run's row (``LOCK_RUN`` only matches an active run, so of a
cancel and the task finish that would end the run, exactly one wins) and, in that transaction: ends the run
``Cancelled``, frees its dedup key, marks the attempts still running ``Cancelled`` (their tasks ``Failed``, kind
``cancelled``), and skips every task that has not started (``run_cancelled``). Nothing of the run can start
afterwards: every start requires an active run. A cancelled attempt's task may still be running in some thread or
worker; when it returns, its outcome no longer applies (the finish requires an active run too) and
:meth:`RunControl.discard_attempt` records when it returned and that its result was discarded.

**Retry** (:meth:`RunControl.retry_run`) creates a new run of a Failed or Cancelled run's workflow, with the same
input, linked by ``retry_of``. Tasks that completed are copied as Completed with their input and output, and are
not run again, as long as every task they depend on is copied too (a task downstream of one that runs again must
run again as well, since its input changes). Every other task starts afresh, planned as in a new run. The
original run is not changed. A retry of a workflow with ``max_active_runs`` is admitted as a new run is
(:mod:`cloacina.store.run_limits`): at the limit it waits, its tasks still to run NotStarted.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import TaskView, final_context, plan, run_outcome
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store import run_statements as sql
from cloacina.store.database import Database
from cloacina.store.models import TaskAttempt, TaskRun, WorkflowRun
from cloacina.store.run_limits import admit
from cloacina.store.run_planning import apply_new_row_decision, end_run_locked
from cloacina.store.run_queries import RUN_BY_ID
from cloacina.store.run_records import (
    OpenedRun,
    PendingStart,
    RunEnd,
    RunRecord,
    TaskRecord,
    Transition,
    run_record,
    task_record,
)
from cloacina.timestamps import utcnow

CANCELLED_MESSAGE = "run cancelled"
RUNNING_CANCELLED = "run cancelled while the task was running; its result is discarded"
CANCEL_DEADLOCK_RETRIES = 3  # a cancel that meets a task start taking the rows the other way round


class RunControl:
    """Ending runs from outside the planner, and re-executing them (mixed into ``RunStore``)."""

    db: Database

    def finish_run(
        self, run_id: str, status: RunStatus, final_context: Mapping[str, Any] | None, error_message: str | None
    ) -> RunEnd | None:
        """End the run from outside the planner (its deadline passed), once; frees its dedup key.

        Tasks that never started are marked Skipped (``run_ended``) and tasks still running Failed, so nothing of
        the run is left pending. Returns the run's end, or ``None`` if it had already ended.
        """
        now = utcnow()
        with self.db.connection() as c:
            if c.execute(sql.LOCK_RUN, {"b_run": run_id, "now": now}).one_or_none() is None:
                return None
            return end_run_locked(c, run_id, status, final_context, error_message, now, fail_running=True)

    def cancel_run(self, run_id: str) -> RunEnd | None:
        """End an active run ``Cancelled`` (see the module docstring); ``None`` if it had already ended or does
        not exist (tell them apart with ``get_run``)."""
        for attempt in range(CANCEL_DEADLOCK_RETRIES + 1):
            try:
                return self._cancel_once(run_id)
            except OperationalError:
                # PostgreSQL breaks a deadlock with a task start (which takes the task's row, then the run's) by
                # failing one side; the start retries on its own, and so does the cancel.
                if attempt == CANCEL_DEADLOCK_RETRIES:
                    raise
        raise AssertionError("unreachable")

    def _cancel_once(self, run_id: str) -> RunEnd | None:
        now = utcnow()
        with self.db.connection() as c:
            if c.execute(sql.LOCK_RUN, {"b_run": run_id, "now": now}).one_or_none() is None:
                return None
            c.execute(
                sql.END_RUN,
                {
                    "b_run": run_id,
                    "new_status": RunStatus.CANCELLED.value,
                    "error": CANCELLED_MESSAGE,
                    "final": None,
                    "now": now,
                },
            )
            execution = c.execute(sql.FREE_DEDUP_KEY, {"b_run": run_id, "now": now}).first()
            c.execute(sql.CANCEL_ATTEMPTS, {"b_run": run_id, "error": RUNNING_CANCELLED})
            c.execute(sql.CANCEL_RUNNING, {"b_run": run_id, "now": now, "error": RUNNING_CANCELLED})
            c.execute(sql.CANCEL_UNSTARTED, {"b_run": run_id, "now": now})
        if execution is None:
            return RunEnd(run_id, RunStatus.CANCELLED)
        return RunEnd(run_id, RunStatus.CANCELLED, execution.trigger_name, execution.context_hash, execution.lock_token)

    def discard_attempt(
        self, run_id: str, task_id: str, attempt: int, outcome: str, start: PendingStart | None = None
    ) -> bool:
        """The task of an attempt whose run was cancelled returned (``outcome``: what it did, e.g. "completed"):
        record that on the attempt. ``False`` if the attempt was not a cancelled one (it timed out, was lost).

        ``start``: the attempt's start was never recorded (deferred), so the cancel took its task for one that had
        not started: record the attempt, and the task as cancelled while running, as the cancel would have."""
        message = f"{RUNNING_CANCELLED} (the task {outcome} after the cancellation)"
        now = utcnow()
        with self.db.connection() as c:
            params = {"b_run": run_id, "b_task": task_id, "b_attempt": attempt, "now": now, "error": message}
            if start is None:
                return c.execute(sql.DISCARD_ATTEMPT, params).rowcount == 1
            params.update(started=start.started_at, cancel_error=RUNNING_CANCELLED)
            task_run_id = c.execute(sql.CANCEL_DEFERRED_TASK, params).scalar_one_or_none()
            if task_run_id is None:
                return False
            c.execute(
                insert(TaskAttempt).values(
                    task_run_id=task_run_id,
                    attempt=attempt,
                    worker=start.worker,
                    status=sql.CANCELLED_ATTEMPT,
                    error_message=message,
                    error_kind="cancelled",
                    started_at=start.started_at,
                    completed_at=now,
                )
            )
            return True

    def retry_run(
        self, run_id: str, workflow: Workflow, *, deadline_s: float | None = None, owner: str | None = None
    ) -> OpenedRun:
        """A new run re-executing ``run_id`` from its failure (see the module docstring), planned: its first
        tasks are Ready. ``KeyError`` for an unknown run, ``ValueError`` unless it is Failed or Cancelled."""
        now = utcnow()
        new_id = str(uuid.uuid4())
        with self.db.connection() as c:
            row = c.execute(RUN_BY_ID, {"run_id": run_id}).one_or_none()
            if row is None:
                raise KeyError(f"unknown run {run_id!r}")
            original = run_record(row)
            if not original.status.is_retryable:
                raise ValueError(f"run {run_id} is {original.status}: only a Failed or Cancelled run can be retried")
            tasks = {r.task_id: task_record(r) for r in c.execute(sql.TASKS_OF_RUN, {"b_run": run_id})}
            rows, ready, views = retry_task_rows(workflow, original, tasks, now)
            outcome = run_outcome(views)
            waiting = None
            if workflow.max_active_runs is not None and outcome is None:  # it has tasks to run: it needs a slot
                waiting = admit(c, self.db, workflow)
                if waiting is not None:
                    now = utcnow()
                    rows, ready, views = retry_task_rows(workflow, original, tasks, now, planned=False)
            c.execute(
                insert(WorkflowRun).values(
                    id=new_id,
                    workflow_name=workflow.name,
                    workflow_version=workflow.version,
                    status=RunStatus.PENDING.value,
                    input_context=canonical_json(original.input_context),
                    package_fingerprint=original.package_fingerprint,
                    owner=owner,
                    retry_of=run_id,
                    created_at=now,
                    updated_at=now,
                    heartbeat_at=now,
                    deadline_at=now + timedelta(seconds=deadline_s) if deadline_s else None,
                    waiting_reason=waiting,
                )
            )
            c.execute(insert(TaskRun), [{"run_id": new_id, **r} for r in rows])
            ended = None
            if outcome is not None:  # nothing left to run (every task reused or skipped by its rule)
                ended = end_run_locked(c, new_id, outcome, final_context(workflow, views), None, now)
        return OpenedRun(new_id, Transition(True, ready, ended), waiting)


def reusable_tasks(workflow: Workflow, tasks: Mapping[str, TaskRecord]) -> set[str]:
    """Tasks of the original run whose results a re-execution keeps: Completed, with every dependency kept too."""
    kept: set[str] = set()
    for task_id in workflow.topological_order:  # dependencies are decided first
        record = tasks.get(task_id)
        if record is None or record.status != TaskStatus.COMPLETED:
            continue
        if all(dep in kept for dep in workflow.tasks[task_id].dependencies):
            kept.add(task_id)
    return kept


def retry_task_rows(
    workflow: Workflow, original: RunRecord, tasks: Mapping[str, TaskRecord], now: datetime, *, planned: bool = True
) -> tuple[list[dict[str, Any]], tuple[str, ...], dict[str, TaskView]]:
    """The task rows of a re-execution (without ``run_id``), the tasks they make Ready and the planner's view.
    ``planned=False`` (a re-execution that waits for a slot): the tasks to run stay NotStarted, kept ones Completed.
    """
    kept = reusable_tasks(workflow, tasks)
    views = {
        tid: TaskView(TaskStatus.COMPLETED, tasks[tid].output_context or {})
        if tid in kept
        else TaskView(TaskStatus.NOT_STARTED)
        for tid in workflow.tasks
    }
    decisions = {d.task_id: d for d in plan(workflow, original.input_context, views)} if planned else {}
    rows: list[dict[str, Any]] = []
    ready: list[str] = []
    for task in workflow.tasks.values():
        row: dict[str, Any] = {
            "task_id": task.task_id,
            "status": TaskStatus.NOT_STARTED.value,
            "attempt": 0,
            "max_attempts": task.retry.attempt_limit,
            "pool": task.pool,  # task pools: the slots it takes while Running are counted from these
            "pool_slots": task.pool_slots if task.pool else None,
            "updated_at": now,
            "input_context": None,
            "output_context": None,
            "skip_reason": None,
            "started_at": None,
            "completed_at": None,
        }
        decision = decisions.get(task.task_id)
        if task.task_id in kept:
            previous = tasks[task.task_id]
            row.update(
                status=TaskStatus.COMPLETED.value,
                input_context=_json(previous.input_context),
                output_context=_json(previous.output_context or {}),
                started_at=previous.started_at,
                completed_at=previous.completed_at or now,
            )
        elif decision is not None:
            apply_new_row_decision(row, decision, ready, views, now)
        rows.append(row)
    return rows, tuple(ready), views


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else canonical_json(dict(value))
