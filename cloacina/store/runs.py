"""Repository for workflow runs: creation and every state transition of runs, tasks and attempts.

Two rules keep concurrent executors (threads, Celery workers on many machines, sweepers) from stepping on each
other:

- Every task transition is a guarded ``UPDATE ... WHERE status = <expected> [AND attempt = <n>]``: of two
  parties racing (a duplicate delivery, a late result of a timed-out attempt, two sweepers) exactly one wins.
- Planning what comes next happens in the same transaction as the task outcome that caused it, under a lock
  on the run's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite is serialised per process and locked per
  database). Two tasks of a fan-in finishing together therefore plan one after the other, and the second
  always sees the first: the fan-in task is scheduled exactly once (:mod:`cloacina.store.run_planning`).

The records these methods take and return live in :mod:`cloacina.store.run_records` and are re-exported here;
the read-only queries are in :mod:`cloacina.store.run_queries`; cancelling, ending from outside the planner and
re-executing runs in :mod:`cloacina.store.run_control`; a workflow's ``max_active_runs`` (runs that wait, and their
promotion) in :mod:`cloacina.store.run_limits`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import Decision, final_context, run_outcome
from cloacina.engine.states import RunStatus, SkipReason, TaskStatus
from cloacina.store import pools
from cloacina.store import run_fast_path as fast
from cloacina.store import run_statements as sql
from cloacina.store.database import Database
from cloacina.store.models import CronExecution, TaskAttempt, TaskRun, TriggerExecution, WorkflowRun
from cloacina.store.pools import PoolWait
from cloacina.store.run_control import RunControl
from cloacina.store.run_limits import RunLimits, admit
from cloacina.store.run_planning import end_run_locked, initial_task_rows, plan_locked
from cloacina.store.run_queries import RunQueries
from cloacina.store.run_records import (
    AttemptRecord,
    Continuation,
    ContinueWith,
    CronClaim,
    OpenedRun,
    PendingStart,
    PlanBasis,
    RunEnd,
    RunRecord,
    StartedAttempt,
    TaskRecord,
    Transition,
    TriggerClaim,
    loads,
)
from cloacina.timestamps import utcnow

__all__ = [
    "AttemptRecord",
    "ContinueWith",
    "Continuation",
    "CronClaim",
    "OpenedRun",
    "PendingStart",
    "PoolWait",
    "RunEnd",
    "RunRecord",
    "RunStore",
    "StartedAttempt",
    "TaskRecord",
    "Transition",
    "TriggerClaim",
]


class RunStore(RunQueries, RunControl, RunLimits):
    """Writes runs; every method is one transaction. Cancelling, ending from outside and re-executing runs are
    in :class:`~cloacina.store.run_control.RunControl`; promoting waiting runs in
    :class:`~cloacina.store.run_limits.RunLimits`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # PostgreSQL starts and finishes attempts in one statement each (cloacina.store.run_fast_path).
        self.fast_path = db.url.dialect == "postgresql"

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
        """Insert the run, its task rows (all NotStarted) and its claim (trigger fire or cron time) atomically.

        Returns the new run id, or ``None`` when the claim was refused: ``trigger.dedup`` is set and a run for the
        same (trigger, context hash) is still active (partial unique index), or ``cron`` names a due time that
        was already claimed (unique (schedule, scheduled_time)). Nothing is written in that case.
        """
        opened = self._insert(workflow, input_context, trigger, cron, deadline_s, owner, package_fingerprint, False)
        return opened.run_id if opened is not None else None

    def open_run(
        self,
        workflow: Workflow,
        input_context: Mapping[str, Any],
        *,
        trigger: TriggerClaim | None = None,
        cron: CronClaim | None = None,
        deadline_s: float | None = None,
        owner: str | None = None,
        package_fingerprint: str | None = None,
    ) -> OpenedRun | None:
        """:meth:`create_run`, planned in the same transaction: the root tasks are written Ready (or Skipped, by
        their rules), so the first delivery of a run starts at once. ``None`` when the claim was refused.

        A run of a workflow with ``max_active_runs`` that may not start now is written waiting instead (every task
        NotStarted, ``OpenedRun.waiting_reason`` set; see :mod:`cloacina.store.run_limits`)."""
        return self._insert(workflow, input_context, trigger, cron, deadline_s, owner, package_fingerprint, True)

    def _insert(
        self,
        workflow: Workflow,
        input_context: Mapping[str, Any],
        trigger: TriggerClaim | None,
        cron: CronClaim | None,
        deadline_s: float | None,
        owner: str | None,
        package_fingerprint: str | None,
        planned: bool,
    ) -> OpenedRun | None:
        now = utcnow()
        run_id = str(uuid.uuid4())
        run_input = canonical_json(dict(input_context))
        rows, ready, views = initial_task_rows(workflow, input_context, now, planned)
        outcome = run_outcome(views) if planned else None
        # A run with nothing to run ends at once: it never waits for a slot.
        limited = workflow.max_active_runs is not None and outcome is None
        if self.fast_path and outcome is None and not limited:
            try:
                with self.db.single_statement() as c:
                    claims = fast.Claims(trigger, cron, deadline_s, owner, package_fingerprint)
                    fast.open_run(c, run_id, workflow, run_input, rows, claims, now)
            except IntegrityError:
                if (trigger is not None and trigger.dedup) or cron is not None:
                    return None
                raise
            return OpenedRun(run_id, Transition(True, ready))
        try:
            with self.db.connection() as s:
                waiting = admit(s, self.db, workflow) if limited else None
                if waiting is not None:  # its roots are planned when it is promoted
                    now = utcnow()  # under the workflow's lock: waiting runs are created in the order they queue
                    rows, ready, views = initial_task_rows(workflow, input_context, now, False)
                s.execute(
                    insert(WorkflowRun).values(
                        id=run_id,
                        workflow_name=workflow.name,
                        workflow_version=workflow.version,
                        status=RunStatus.PENDING.value,
                        input_context=run_input,
                        trigger_name=trigger.trigger_name if trigger else None,
                        cron_schedule_id=cron.schedule_id if cron else None,
                        package_fingerprint=package_fingerprint,
                        owner=owner,
                        created_at=now,
                        updated_at=now,
                        heartbeat_at=now,
                        deadline_at=now + timedelta(seconds=deadline_s) if deadline_s else None,
                        waiting_reason=waiting,
                    )
                )
                s.execute(insert(TaskRun), [{"run_id": run_id, **row} for row in rows])
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
                ended = None
                if outcome is not None:  # every task was skipped by its rule: the run is over already
                    ended = end_run_locked(s, run_id, outcome, final_context(workflow, views), None, now)
        except IntegrityError:
            if (trigger is not None and trigger.dedup) or cron is not None:
                return None
            raise
        return OpenedRun(run_id, Transition(True, ready, ended), waiting)

    # -- the planning step (run row locked; see run_planning) -------------------------------------------
    def _step(
        self,
        run_id: str,
        workflow: Workflow | None,
        mutate: Callable[[Connection, datetime], bool],
    ) -> Transition:
        now = utcnow()
        with self.db.connection() as c:
            locked = c.execute(sql.LOCK_RUN, {"b_run": run_id, "now": now}).one_or_none()
            if locked is None or not mutate(c, now):
                c.rollback()
                return Transition(False)
            if workflow is None or locked.waiting_reason is not None:  # a waiting run is planned when promoted
                return Transition(True)
            return plan_locked(c, run_id, locked.input_context, workflow, now)

    def advance(self, run_id: str, workflow: Workflow) -> Transition:
        """Plan the run (after creation, after a task's callbacks, by recovery): newly Ready tasks, skips, and the
        run's end."""
        return self._step(run_id, workflow, lambda c, now: True)

    # -- attempts ---------------------------------------------------------------------------------------
    def start_attempt(
        self, run_id: str, task_id: str, *, worker: str | None = None
    ) -> StartedAttempt | PoolWait | None:
        """Ready -> Running with a new attempt number; ``None`` if the task is not Ready (or its retry delay has not
        passed) or the run has ended. A pool task starts only with its pool's slots (:mod:`cloacina.store.pools`):
        a :class:`PoolWait` says why it did not (its pool is full, or undefined)."""
        now = utcnow()
        if self.fast_path:
            with self.db.single_statement() as c:
                started = fast.start_attempt(c, run_id, task_id, worker, now)
            return started if started is not None else self._start_in_pool(run_id, task_id, worker, None)
        with self.db.connection() as c:
            run = c.execute(sql.RUN_FOR_START, {"b_run": run_id}).one_or_none()
            if run is None or run.status not in sql.ACTIVE_RUN:
                return None
            params = {"b_run": run_id, "b_task": task_id, "now": now, "pool_checked": False}
            row = c.execute(sql.START_TASK, params).one_or_none()
            if row is None:  # not Ready, or a pool task: under SQLite's write lock, take its slots first
                pooled = pools.ready_pool_task(c, run_id, task_id, now)
                if pooled is None:
                    return None
                waiting = pools.take_slots(c, run_id, pooled, now)
                if waiting is not None:
                    return waiting
                row = c.execute(sql.START_TASK, {**params, "pool_checked": True}).one_or_none()
                if row is None:
                    return None
            c.execute(
                sql.INSERT_ATTEMPT,
                {
                    "task_run_id": row.id,
                    "attempt": row.attempt,
                    "worker": worker,
                    "status": TaskStatus.RUNNING.value,
                    "started_at": now,
                },
            )
            if run.status == RunStatus.PENDING.value:
                c.execute(sql.RUN_TO_RUNNING, {"b_run": run_id, "now": now})
            triggered_at = (loads(run.input_context) or {}).get("triggered_at") if row.attempt == 1 else None
            return StartedAttempt(
                attempt=row.attempt,
                input_context=loads(row.input_context) or {},
                workflow_name=run.workflow_name,
                workflow_version=run.workflow_version,
                package_fingerprint=run.package_fingerprint,
                triggered_at=triggered_at if isinstance(triggered_at, str) else None,
            )

    def _start_in_pool(
        self, run_id: str, task_id: str, worker: str | None, pooled: pools.PoolTask | None
    ) -> StartedAttempt | PoolWait | None:
        """PostgreSQL: start a pool task in one transaction that takes its slots first (see
        :mod:`cloacina.store.pools`); ``pooled`` as a peek saw it, else read here (``None``: not a Ready pool
        task)."""
        now = utcnow()
        with self.db.connection() as c:
            if pooled is None:
                pooled = pools.ready_pool_task(c, run_id, task_id, now)
                if pooled is None:
                    return None
            waiting = pools.take_slots(c, run_id, pooled, now)
            if waiting is not None:
                return waiting
            return fast.start_attempt(c, run_id, task_id, worker, now, pool_checked=True)

    def begin_attempt(
        self, run_id: str, task_id: str, *, worker: str | None = None
    ) -> StartedAttempt | PoolWait | None:
        """The attempt a delivery of a Ready task is about to run. On PostgreSQL its start is deferred (a read,
        ``is_recorded`` False: :meth:`record_start` or the finish records it), except a pool task's, which takes
        its slots and starts at once; elsewhere :meth:`start_attempt`. :class:`PoolWait`: a pool task that did not
        start (its pool is full, or undefined)."""
        if self.fast_path:
            with self.db.single_statement() as c:
                peeked = fast.peek_attempt(c, run_id, task_id, utcnow())
            if isinstance(peeked, pools.PoolTask):
                return self._start_in_pool(run_id, task_id, worker, peeked)
            return peeked
        return self.start_attempt(run_id, task_id, worker=worker)

    def record_start(self, run_id: str, task_id: str, started: StartedAttempt, *, worker: str | None = None) -> bool:
        """Record the deferred start of ``started`` (``Ready -> Running``); ``False`` if another delivery took the
        task meanwhile or the run ended."""
        with self.db.single_statement() as c:
            return fast.claim_attempt(c, run_id, started, task_id, worker)

    @staticmethod
    def _resolve_attempt(c: Connection, params: dict[str, Any], now: datetime) -> bool:
        row = c.execute(sql.RESOLVE_TASK, {**params, "now": now}).one_or_none()
        if row is None:
            return False
        c.execute(
            sql.FINISH_ATTEMPT,
            {
                "b_task_run": row.id,
                "b_attempt": params["b_attempt"],
                "now": now,
                "new_status": params["attempt_status"],
                "error": params["error"],
                "kind": params["kind"],
            },
        )
        return True

    def complete_attempt(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        output: Mapping[str, Any],
        workflow: Workflow | None = None,
        basis: PlanBasis | None = None,
        start: PendingStart | None = None,
        *,
        worker: str | None = None,
        continue_with: ContinueWith | None = None,
    ) -> Transition:
        """Running -> Completed for exactly this attempt, then (given ``workflow``) plan the run in the same
        transaction, ending it when this was its last task. ``applied`` is False if the attempt was already
        resolved (e.g. timed out). The coordinator runs the task's callback before, so a run is never seen
        finished before its callbacks ran. ``basis``: the run as the attempt's start saw it (the fast path plans
        from it when it is still current). ``start``: the attempt's start is not recorded yet; the same statement
        records it (``Ready -> Completed``). ``continue_with``: the fast path also starts that successor on
        ``worker`` (``Transition.continued``).
        """
        outcome = fast.AttemptOutcome(TaskStatus.COMPLETED, output=output)
        return self._finish(run_id, task_id, attempt, outcome, workflow, basis, start, worker, continue_with)

    def fail_attempt(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        error: str,
        kind: str,
        retry_at: datetime | None,
        workflow: Workflow | None = None,
        basis: PlanBasis | None = None,
        start: PendingStart | None = None,
        *,
        worker: str | None = None,
        continue_with: ContinueWith | None = None,
    ) -> Transition:
        """Running -> Ready (to retry at ``retry_at``) or Failed for exactly this attempt; a final failure plans
        the run (given ``workflow``) in the same transaction. ``start``, ``continue_with`` as for
        :meth:`complete_attempt`."""
        status = TaskStatus.FAILED if retry_at is None else TaskStatus.READY
        outcome = fast.AttemptOutcome(status, error=error, kind=kind, retry_at=retry_at)
        return self._finish(run_id, task_id, attempt, outcome, workflow, basis, start, worker, continue_with)

    def _finish(
        self,
        run_id: str,
        task_id: str,
        attempt: int,
        outcome: fast.AttemptOutcome,
        workflow: Workflow | None,
        basis: PlanBasis | None,
        start: PendingStart | None = None,
        worker: str | None = None,
        continue_with: ContinueWith | None = None,
    ) -> Transition:
        if start is not None and (not self.fast_path or basis is None):
            raise ValueError("only PostgreSQL's one-statement finish records a deferred start (with its basis)")
        if self.fast_path and basis is not None:
            with self.db.single_statement() as c:
                transition, complete = fast.finish_attempt(
                    c,
                    run_id,
                    task_id,
                    attempt,
                    outcome,
                    basis,
                    workflow,
                    utcnow(),
                    start,
                    worker=worker,
                    continue_with=continue_with,
                )
            if complete or workflow is None:
                return transition
            planned = self.advance(run_id, workflow)  # the run changed since the start: plan under its lock
            return Transition(True, planned.ready, planned.ended)
        output_json = canonical_json(dict(outcome.output)) if outcome.output is not None else None

        def mutate(c: Connection, now: datetime) -> bool:
            return self._resolve_attempt(
                c,
                {
                    "b_run": run_id,
                    "b_task": task_id,
                    "b_attempt": attempt,
                    "new_status": outcome.task_status.value,
                    "output": output_json,
                    "error": outcome.error,
                    "kind": outcome.kind,
                    "b_completed_at": now if outcome.final else None,
                    "retry_at": outcome.retry_at,
                    "attempt_status": outcome.attempt_status.value,
                },
                now,
            )

        return self._step(run_id, workflow if outcome.final else None, mutate)

    def fail_unstarted(
        self, run_id: str, task_id: str, error: str, workflow: Workflow, *, worker: str | None = None
    ) -> Transition:
        """Fail a Ready task without running it (its pool is undefined): ``Ready -> Failed`` with an attempt that
        records ``error``, no retry, and the run planned in the same transaction. ``applied`` is False if the
        task was no longer Ready or the run had ended."""

        def mutate(c: Connection, now: datetime) -> bool:
            row = c.execute(
                update(TaskRun)
                .where(TaskRun.run_id == run_id, TaskRun.task_id == task_id, TaskRun.status == TaskStatus.READY.value)
                .values(
                    status=TaskStatus.FAILED.value,
                    attempt=TaskRun.attempt + 1,
                    error_message=error,
                    error_kind="error",
                    next_attempt_at=None,
                    started_at=func.coalesce(TaskRun.started_at, now),
                    completed_at=now,
                    updated_at=now,
                )
                .returning(TaskRun.id, TaskRun.attempt)
            ).one_or_none()
            if row is None:
                return False
            c.execute(
                insert(TaskAttempt).values(
                    task_run_id=row.id,
                    attempt=row.attempt,
                    worker=worker,
                    status=TaskStatus.FAILED.value,
                    error_message=error,
                    error_kind="error",
                    started_at=now,
                    completed_at=now,
                )
            )
            return True

        return self._step(run_id, workflow, mutate)

    def heartbeat(self, attempts: Iterable[tuple[str, str, int]]) -> int:
        """Mark running attempts (run_id, task_id, attempt) as alive; returns how many rows were touched.

        Only task rows are touched, in a stable order, never the run row: a completion locks the run row and then
        a task row, so a heartbeat taking them the other way round could deadlock with it. (A run with a running
        task is never considered stale, so its own heartbeat need not move.)
        """
        now = utcnow()
        touched = 0
        with self.db.connection() as s:
            for run_id, task_id, attempt in sorted(attempts):
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
        return touched

    # -- compatibility with direct use (tests, tools) ----------------------------------------------------
    def apply_decisions(self, run_id: str, decisions: Iterable[Decision]) -> list[str]:
        """Mark planned tasks Ready (returned: the caller now owns their dispatch) or Skipped."""
        now = utcnow()
        won: list[str] = []
        with self.db.connection() as s:
            s.execute(sql.LOCK_RUN, {"b_run": run_id, "now": now})
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
