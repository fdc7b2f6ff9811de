"""PostgreSQL's hot path: one statement to start a task attempt, one to finish it.

Each is a single data-modifying ``WITH`` statement run in autocommit, so it is its own transaction and one round
trip, sent through psycopg directly (:mod:`cloacina.store.driver_sql`). SQLite keeps the multi-statement path of
:mod:`cloacina.store.runs` (it is embedded: no round trips).

**Open** inserts a run, its task rows (the roots already Ready) and its claim (trigger fire or cron time).

**Start** claims the task (``Ready -> Running``), records the attempt, moves the run to ``Running`` and returns
the task's input together with a :class:`~cloacina.store.run_records.PlanBasis`: the run's version and every
task's state, as one snapshot.

**Deferred start** (the common case): a short task costs one statement. **Peek** reads what a start returns and
writes nothing; the task runs; its **finish** records the start together with the end (``Ready -> Completed``,
the attempt row inserted whole), guarded by the attempt number the peek saw, so of two deliveries of one task
only one finish applies. A task still running after a short delay (or one that defers) records its start then
with **Claim**, the same guarded ``Ready -> Running``, and its finish is the ordinary one.

**Finish** locks the run's row and bumps its version, records the outcome and the attempt's end, and, when the
run's version is still the one the start saw (nothing a planner would notice changed meanwhile: the common case
of a sequential stretch), applies the plan computed from that basis: successors made Ready or Skipped, and the
run's end with its final context when this was its last task, freeing its dedup key. Otherwise (a sibling
finished meanwhile) the outcome is recorded all the same, and the caller plans under the run's lock in a second
transaction (:meth:`cloacina.store.runs.RunStore.advance`), which sees every committed change.

Each statement reaches every row through equality on a unique or leading index column (never ``IN (SELECT ...)``:
a generic plan made while a table was small, and cached for the connection's life, turned such a semi-join into a
sequential scan of ``task_attempts`` on every finish).

Every writer that changes what a planner sees bumps ``workflow_runs.version`` under the run's row lock, so
"same version" really means "same state".

Both statements act on active runs only (``Pending``/``Running``): a start of a run that ended (``Completed``,
``Failed`` or ``Cancelled``) starts nothing, and a finish records nothing (the caller discards its result; see
:mod:`cloacina.store.run_control`). A cancel and a finish lock the run's row in the same order, so one of them
wins: the finish that would end the run, or the cancel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import TaskView, final_context, plan, run_outcome
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.driver_sql import DriverStatement, in_utc
from cloacina.store.models import UTCDateTime
from cloacina.store.pools import PoolTask
from cloacina.store.run_planning import failed_tasks_message
from cloacina.store.run_records import (
    Continuation,
    ContinueWith,
    CronClaim,
    PendingStart,
    PlanBasis,
    RunEnd,
    StartedAttempt,
    TaskSnapshot,
    Transition,
    TriggerClaim,
    loads,
)
from cloacina.timestamps import utcnow

_ACTIVE = f"('{RunStatus.PENDING.value}', '{RunStatus.RUNNING.value}')"
_TIMES = ("now", "completed_at", "retry_at", "started")
_TASK_FIELDS = (
    "task_id",
    "status",
    "max_attempts",
    "input_context",
    "skip_reason",
    "output_context",
    "pool",
    "pool_slots",
)

START = DriverStatement(
    text(
        f"""
WITH run AS (
    SELECT status, version, workflow_name, workflow_version, package_fingerprint, input_context
    FROM workflow_runs WHERE id = :b_run AND status IN {_ACTIVE}
), task AS (
    UPDATE task_runs
    SET status = '{TaskStatus.RUNNING.value}', attempt = attempt + 1, heartbeat_at = :now, next_attempt_at = NULL,
        updated_at = :now, started_at = COALESCE(started_at, :now)
    WHERE run_id = :b_run AND task_id = :b_task AND status = '{TaskStatus.READY.value}'
      AND (next_attempt_at IS NULL OR next_attempt_at <= :now) AND EXISTS (SELECT 1 FROM run)
      AND (pool IS NULL OR CAST(:pool_checked AS boolean))  -- a pool task: only with its slots taken (pools.py)
    RETURNING id, attempt, input_context
), attempt_row AS (
    INSERT INTO task_attempts (task_run_id, attempt, worker, status, started_at)
    SELECT id, attempt, CAST(:worker AS varchar), '{TaskStatus.RUNNING.value}', :now FROM task
), running AS (
    UPDATE workflow_runs SET status = '{RunStatus.RUNNING.value}', started_at = :now, heartbeat_at = :now,
        updated_at = :now
    WHERE id = :b_run AND status = '{RunStatus.PENDING.value}' AND EXISTS (SELECT 1 FROM task)
)
SELECT task.attempt, task.input_context, run.workflow_name, run.workflow_version, run.package_fingerprint,
       run.input_context AS run_input, run.version,
       (SELECT json_agg(json_build_array(t.task_id, t.status, t.output_context, t.skip_reason, t.error_message))
        FROM task_runs t WHERE t.run_id = :b_run) AS tasks
FROM task CROSS JOIN run
"""
    ).bindparams(bindparam("now", type_=UTCDateTime()))
)

PEEK = DriverStatement(
    text(
        f"""
SELECT task.attempt + 1 AS attempt, task.input_context, run.workflow_name, run.workflow_version,
       run.package_fingerprint, run.input_context AS run_input, run.version,
       (SELECT json_agg(json_build_array(t.task_id, t.status, t.output_context, t.skip_reason, t.error_message))
        FROM task_runs t WHERE t.run_id = :b_run) AS tasks,
       task.pool, task.pool_slots, task.updated_at AS ready_since
FROM workflow_runs AS run JOIN task_runs AS task ON task.run_id = run.id
WHERE run.id = :b_run AND run.status IN {_ACTIVE} AND task.task_id = :b_task
  AND task.status = '{TaskStatus.READY.value}' AND (task.next_attempt_at IS NULL OR task.next_attempt_at <= :now)
"""
    ).bindparams(bindparam("now", type_=UTCDateTime()))
)

CLAIM = DriverStatement(
    text(
        f"""
WITH run AS (
    SELECT id FROM workflow_runs WHERE id = :b_run AND status IN {_ACTIVE}
), task AS (
    UPDATE task_runs
    SET status = '{TaskStatus.RUNNING.value}', attempt = :b_attempt, heartbeat_at = :now, next_attempt_at = NULL,
        updated_at = :now, started_at = COALESCE(started_at, :started)
    WHERE run_id = :b_run AND task_id = :b_task AND status = '{TaskStatus.READY.value}'
      AND attempt = :b_attempt - 1 AND EXISTS (SELECT 1 FROM run) AND pool IS NULL  -- pool tasks never defer
    RETURNING id
), attempt_row AS (
    INSERT INTO task_attempts (task_run_id, attempt, worker, status, started_at)
    SELECT id, :b_attempt, CAST(:worker AS varchar), '{TaskStatus.RUNNING.value}', :started FROM task
), running AS (
    UPDATE workflow_runs SET status = '{RunStatus.RUNNING.value}', started_at = :started, heartbeat_at = :now,
        updated_at = :now
    WHERE id = :b_run AND status = '{RunStatus.PENDING.value}' AND EXISTS (SELECT 1 FROM task)
)
SELECT EXISTS (SELECT 1 FROM task) AS claimed
"""
    ).bindparams(*(bindparam(name, type_=UTCDateTime()) for name in ("now", "started")))
)

_ENDS = "version = :b_version AND CAST(:end_status AS varchar) IS NOT NULL"
FINISH = DriverStatement(
    text(
        f"""
WITH locked AS (
    UPDATE workflow_runs
    SET heartbeat_at = :now, version = version + 1,
        status = CASE WHEN {_ENDS} THEN CAST(:end_status AS varchar)
                      WHEN CAST(:unclaimed AS boolean) THEN '{RunStatus.RUNNING.value}' ELSE status END,
        started_at = CASE WHEN CAST(:unclaimed AS boolean) THEN COALESCE(started_at, :started) ELSE started_at END,
        completed_at = CASE WHEN {_ENDS} THEN :now ELSE completed_at END,
        updated_at = CASE WHEN {_ENDS} THEN :now ELSE updated_at END,
        error_message = CASE WHEN {_ENDS} THEN CAST(:end_error AS text) ELSE error_message END,
        final_context = CASE WHEN {_ENDS} THEN CAST(:end_final AS text) ELSE final_context END
    WHERE id = :b_run AND status IN {_ACTIVE}
    RETURNING (version = :b_version + 1) AS fresh
), resolved AS (
    UPDATE task_runs
    SET status = :new_status, output_context = CAST(:output AS text), error_message = CAST(:error AS text),
        error_kind = CAST(:kind AS varchar), completed_at = :completed_at, next_attempt_at = :retry_at,
        updated_at = :now, attempt = :b_attempt, started_at = COALESCE(started_at, :started)
    WHERE run_id = :b_run AND task_id = :b_task AND EXISTS (SELECT 1 FROM locked) AND CASE
        WHEN CAST(:unclaimed AS boolean) THEN status = '{TaskStatus.READY.value}' AND attempt = :b_attempt - 1
        ELSE status = '{TaskStatus.RUNNING.value}' AND attempt = :b_attempt END
    RETURNING id
), finished AS (
    UPDATE task_attempts
    SET status = :attempt_status, error_message = CAST(:error AS text), error_kind = CAST(:kind AS varchar),
        completed_at = :now
    WHERE task_run_id = (SELECT id FROM resolved) AND attempt = :b_attempt AND NOT CAST(:unclaimed AS boolean)
), recorded AS (
    INSERT INTO task_attempts (task_run_id, attempt, worker, status, started_at, completed_at, error_message,
        error_kind)
    SELECT id, :b_attempt, CAST(:worker AS varchar), :attempt_status, :started, :now, CAST(:error AS text),
        CAST(:kind AS varchar)
    FROM resolved WHERE CAST(:unclaimed AS boolean)
), decided AS (
    UPDATE task_runs AS t
    SET status = CASE WHEN d.claim THEN '{TaskStatus.RUNNING.value}' ELSE d.status END, input_context = d.input,
        skip_reason = d.reason, updated_at = :now,
        attempt = CASE WHEN d.claim THEN t.attempt + 1 ELSE t.attempt END,
        heartbeat_at = CASE WHEN d.claim THEN :now ELSE t.heartbeat_at END,
        started_at = CASE WHEN d.claim THEN COALESCE(t.started_at, :now) ELSE t.started_at END,
        output_context = CASE WHEN d.status = '{TaskStatus.SKIPPED.value}' THEN d.input ELSE t.output_context END,
        completed_at = CASE WHEN d.status = '{TaskStatus.SKIPPED.value}' THEN :now ELSE t.completed_at END
    FROM json_to_recordset(CAST(:decisions AS json))
        AS d(task_id text, status text, input text, reason text, claim boolean)
    WHERE t.run_id = :b_run AND t.task_id = d.task_id AND t.status = '{TaskStatus.NOT_STARTED.value}'
      AND EXISTS (SELECT 1 FROM locked WHERE fresh) AND EXISTS (SELECT 1 FROM resolved)
    RETURNING t.id, t.task_id, t.status, t.attempt
), continued AS (
    INSERT INTO task_attempts (task_run_id, attempt, worker, status, started_at)
    SELECT id, attempt, CAST(:worker AS varchar), '{TaskStatus.RUNNING.value}', :now FROM decided
    WHERE status = '{TaskStatus.RUNNING.value}'
), freed AS (
    UPDATE trigger_executions SET dedup_active = false, completed_at = :now
    WHERE run_id = :b_run AND CAST(:end_status AS varchar) IS NOT NULL
      AND EXISTS (SELECT 1 FROM locked WHERE fresh)
    RETURNING trigger_name, context_hash, lock_token
)
SELECT EXISTS (SELECT 1 FROM resolved) AS applied, COALESCE((SELECT fresh FROM locked), false) AS fresh,
       ARRAY(SELECT task_id FROM decided WHERE status = '{TaskStatus.READY.value}') AS ready,
       (SELECT attempt FROM decided WHERE status = '{TaskStatus.RUNNING.value}') AS continued_attempt,
       f.trigger_name, f.context_hash, f.lock_token
FROM (SELECT 1) AS one LEFT JOIN freed AS f ON true
"""
    ).bindparams(*(bindparam(name, type_=UTCDateTime()) for name in _TIMES))
)


OPEN = DriverStatement(
    text(
        f"""
WITH run AS (
    INSERT INTO workflow_runs (id, workflow_name, workflow_version, status, input_context, trigger_name,
        cron_schedule_id, package_fingerprint, owner, created_at, updated_at, heartbeat_at, deadline_at, version)
    VALUES (:b_run, :workflow_name, :workflow_version, '{RunStatus.PENDING.value}', :input,
        CAST(:trigger_name AS varchar), CAST(:schedule_id AS integer), CAST(:fingerprint AS varchar),
        CAST(:owner AS varchar), :now, :now, :now, :deadline_at, 0)
    RETURNING id
), tasks AS (
    INSERT INTO task_runs (run_id, task_id, status, attempt, max_attempts, updated_at, input_context,
        skip_reason, output_context, completed_at, pool, pool_slots)
    SELECT run.id, t.task_id, t.status, 0, t.max_attempts, :now, t.input_context, t.skip_reason,
        t.output_context, CASE WHEN t.status = '{TaskStatus.SKIPPED.value}' THEN :now END, t.pool, t.pool_slots
    FROM run, json_to_recordset(CAST(:tasks AS json))
        AS t(task_id text, status text, max_attempts int, input_context text, skip_reason text, output_context text,
             pool text, pool_slots int)
), fired AS (
    INSERT INTO trigger_executions (trigger_name, context_hash, run_id, dedup_active, lock_token, started_at)
    SELECT CAST(:trigger_name AS varchar), :context_hash, run.id, :dedup, CAST(:lock_token AS varchar), :now FROM run
    WHERE CAST(:claim_trigger AS boolean)
), claimed AS (
    INSERT INTO cron_executions (schedule_id, scheduled_time, run_id, claimed_at)
    SELECT CAST(:schedule_id AS integer), :scheduled_time, run.id, :now FROM run
    WHERE CAST(:schedule_id AS integer) IS NOT NULL
)
SELECT id FROM run
"""
    ).bindparams(*(bindparam(name, type_=UTCDateTime()) for name in ("now", "deadline_at", "scheduled_time")))
)


@dataclass(frozen=True)
class Claims:
    """What a new run carries besides its workflow and input."""

    trigger: TriggerClaim | None
    cron: CronClaim | None
    deadline_s: float | None
    owner: str | None
    package_fingerprint: str | None


def open_run(
    c: Connection,
    run_id: str,
    workflow: Workflow,
    run_input: str,
    rows: list[dict[str, Any]],
    claims: Claims,
    now: datetime,
) -> None:
    """Insert a run, its ``rows`` (see :func:`cloacina.store.run_planning.initial_task_rows`) and its claim in
    one statement; a refused claim raises ``IntegrityError`` and writes nothing."""
    trigger, cron = claims.trigger, claims.cron
    tasks = [{key: row[key] for key in _TASK_FIELDS} for row in rows]
    params = {
        "b_run": run_id,
        "workflow_name": workflow.name,
        "workflow_version": workflow.version,
        "input": run_input,
        "tasks": json.dumps(tasks),
        "trigger_name": trigger.trigger_name if trigger else None,
        "context_hash": trigger.context_hash if trigger else None,
        "dedup": trigger.dedup if trigger else False,
        "lock_token": trigger.lock_token if trigger else None,
        "claim_trigger": trigger is not None,
        "schedule_id": cron.schedule_id if cron else None,
        "scheduled_time": cron.scheduled_time if cron else None,
        "fingerprint": claims.package_fingerprint,
        "owner": claims.owner,
        "now": now,
        "deadline_at": now + timedelta(seconds=claims.deadline_s) if claims.deadline_s else None,
    }
    OPEN.execute(c, params)


@dataclass(frozen=True)
class AttemptOutcome:
    """How an attempt ended, as the task and attempt rows record it."""

    task_status: TaskStatus  # Completed, Failed, or Ready (to retry at ``retry_at``)
    output: Mapping[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    retry_at: datetime | None = None

    @property
    def attempt_status(self) -> TaskStatus:
        return TaskStatus.COMPLETED if self.task_status == TaskStatus.COMPLETED else TaskStatus.FAILED

    @property
    def final(self) -> bool:
        return self.task_status != TaskStatus.READY


def start_attempt(
    c: Connection, run_id: str, task_id: str, worker: str | None, now: datetime, *, pool_checked: bool = False
) -> StartedAttempt | None:
    """Ready -> Running in one statement; ``None`` if the task is not Ready (or not due) or the run has ended.
    A pool task starts only with ``pool_checked`` (its slots taken: :func:`cloacina.store.pools.start_in_pool`)."""
    params = {"b_run": run_id, "b_task": task_id, "worker": worker, "now": now, "pool_checked": pool_checked}
    row = START.execute(c, params).fetchone()
    return None if row is None else _started(row, now, is_recorded=True)


def _started(row: Any, now: datetime, *, is_recorded: bool) -> StartedAttempt:
    tasks = {
        tid: TaskSnapshot(TaskStatus(status), loads(output), skip_reason, error)
        for tid, status, output, skip_reason, error in row.tasks
    }
    run_input = loads(row.run_input) or {}
    triggered_at = run_input.get("triggered_at") if row.attempt == 1 else None
    return StartedAttempt(
        attempt=row.attempt,
        input_context=loads(row.input_context) or {},
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        package_fingerprint=row.package_fingerprint,
        triggered_at=triggered_at if isinstance(triggered_at, str) else None,
        basis=PlanBasis(row.version, run_input, tasks),
        started_at=now,
        is_recorded=is_recorded,
        ready_since=in_utc(row, ("ready_since",)).ready_since if not is_recorded else None,
    )


def peek_attempt(c: Connection, run_id: str, task_id: str, now: datetime) -> StartedAttempt | PoolTask | None:
    """What :func:`start_attempt` would return, written nowhere (its start is recorded later: ``is_recorded`` is
    ``False``); ``None`` if the task is not Ready (or not due) or the run has ended. A pool task is never
    deferred: its :class:`PoolTask` says which pool to take its slots in first."""
    row = PEEK.execute(c, {"b_run": run_id, "b_task": task_id, "now": now}).fetchone()
    if row is not None and row.pool is not None:
        return PoolTask(row.pool, row.pool_slots or 1, in_utc(row, ("ready_since",)).ready_since)
    return None if row is None else _started(row, now, is_recorded=False)


def claim_attempt(c: Connection, run_id: str, started: StartedAttempt, task_id: str, worker: str | None) -> bool:
    """Record the start of a peeked attempt (``Ready -> Running``, its attempt row, the run ``Running``) as of
    ``started.started_at``; ``False`` if the task is no longer Ready at that attempt or the run has ended."""
    params = {
        "b_run": run_id,
        "b_task": task_id,
        "b_attempt": started.attempt,
        "worker": worker,
        "started": started.started_at,
        "now": utcnow(),
    }
    row = CLAIM.execute(c, params).fetchone()
    return bool(row is not None and row.claimed)


def finish_attempt(
    c: Connection,
    run_id: str,
    task_id: str,
    attempt: int,
    outcome: AttemptOutcome,
    basis: PlanBasis,
    workflow: Workflow | None,
    now: datetime,
    start: PendingStart | None = None,
    *,
    worker: str | None = None,
    continue_with: ContinueWith | None = None,
) -> tuple[Transition, bool]:
    """Record ``outcome`` in one statement, with the plan made from ``basis`` when it is still current; ``start``
    (an attempt whose start is not recorded yet) is recorded by the same statement. ``continue_with``: the same
    statement starts that successor on ``worker`` (``Transition.continued``), so running it costs no start of its
    own.

    Returns the transition and whether it is complete: ``False`` when the outcome was recorded but the plan could
    not be applied (the run changed since the start), so the caller must plan under the run's lock.
    """
    decisions: list[dict[str, Any]] = []
    ended: tuple[RunStatus, dict[str, Any], str | None] | None = None
    continued: tuple[str, dict[str, Any]] | None = None
    if outcome.final and workflow is not None:
        decisions, ended = _plan(workflow, basis, task_id, outcome)
        continued = _choose_continuation(workflow, decisions, continue_with) if ended is None else None
    output = canonical_json(dict(outcome.output)) if outcome.output is not None else None
    params = {
        "b_run": run_id,
        "b_task": task_id,
        "b_attempt": attempt,
        "b_version": basis.version,
        "now": now,
        "new_status": outcome.task_status.value,
        "attempt_status": outcome.attempt_status.value,
        "output": output,
        "error": outcome.error,
        "kind": outcome.kind,
        "completed_at": now if outcome.final else None,
        "retry_at": outcome.retry_at,
        "decisions": json.dumps(decisions),
        "end_status": ended[0].value if ended else None,
        "end_error": ended[2] if ended else None,
        "end_final": canonical_json(ended[1]) if ended else None,
        "unclaimed": start is not None,
        "started": start.started_at if start is not None else now,
        "worker": start.worker if start is not None else worker,
    }
    row = FINISH.execute(c, params).fetchone()
    assert row is not None  # the statement always returns one row
    if not row.applied:
        return Transition(False), True
    if not outcome.final or workflow is None:
        return Transition(True), True
    if not row.fresh:
        return Transition(True), False
    run_end = None
    if ended is not None:
        run_end = RunEnd(run_id, ended[0], row.trigger_name, row.context_hash, row.lock_token)
    order = {tid: n for n, tid in enumerate(d["task_id"] for d in decisions)}
    ready = tuple(sorted(row.ready, key=order.__getitem__))
    continuation = None
    if continued is not None and row.continued_attempt is not None:
        continuation = _continuation(basis, task_id, outcome, decisions, continued, row.continued_attempt)
    return Transition(True, ready, run_end, continuation), True


def _choose_continuation(
    workflow: Workflow, decisions: list[dict[str, Any]], continue_with: ContinueWith | None
) -> tuple[str, dict[str, Any]] | None:
    """Mark the decision of the successor to start for the caller (see :class:`ContinueWith`); its id and input.
    Only a task routed to the caller's queue is a candidate (the others are published to their own queues), and
    never a pool task (its start must take its pool's slots: :mod:`cloacina.store.pools`)."""
    if continue_with is None:
        return None
    ready = [
        d
        for d in decisions
        if d["status"] == TaskStatus.READY.value
        and workflow.tasks[d["task_id"]].pool is None
        and continue_with.may_run(workflow, d["task_id"])
    ]
    chosen = next((d for d in ready if d["task_id"] == continue_with.prefer), None)
    if chosen is None and continue_with.first_ready and ready:
        chosen = ready[0]
    if chosen is None:
        return None
    chosen["claim"] = True
    return chosen["task_id"], loads(chosen["input"]) or {}


def _continuation(
    basis: PlanBasis,
    task_id: str,
    outcome: AttemptOutcome,
    decisions: list[dict[str, Any]],
    continued: tuple[str, dict[str, Any]],
    attempt: int,
) -> Continuation:
    """The started successor, with the run as this finish left it (the version it bumped, every task's state)."""
    tasks = dict(basis.tasks)
    tasks[task_id] = TaskSnapshot(
        outcome.task_status, dict(outcome.output) if outcome.output is not None else None, None, outcome.error
    )
    for d in decisions:
        status = TaskStatus.RUNNING if d.get("claim") else TaskStatus(d["status"])
        skipped_output = loads(d["input"]) if status == TaskStatus.SKIPPED else None
        tasks[d["task_id"]] = TaskSnapshot(status, skipped_output, d["reason"])
    next_id, next_input = continued
    return Continuation(next_id, attempt, next_input, PlanBasis(basis.version + 1, basis.run_input, tasks))


def _plan(
    workflow: Workflow, basis: PlanBasis, task_id: str, outcome: AttemptOutcome
) -> tuple[list[dict[str, Any]], tuple[RunStatus, dict[str, Any], str | None] | None]:
    """The decisions and the run's end (status, final context, error) that ``outcome`` leads to from ``basis``."""
    views = {tid: TaskView(s.status, s.output, s.skip_reason) for tid, s in basis.tasks.items()}
    errors = {tid: (s.status, s.error_message) for tid, s in basis.tasks.items()}
    own_output = dict(outcome.output) if outcome.output is not None else None
    views[task_id] = TaskView(outcome.task_status, own_output)
    errors[task_id] = (outcome.task_status, outcome.error)
    decisions: list[dict[str, Any]] = []
    for d in plan(workflow, basis.run_input, views):
        if d.task_id not in views:
            continue
        ready = d.action == "run"
        decisions.append(
            {
                "task_id": d.task_id,
                "status": (TaskStatus.READY if ready else TaskStatus.SKIPPED).value,
                "input": canonical_json(d.input_context),
                "reason": None if ready else d.skip_reason,
                "claim": False,
            }
        )
        views[d.task_id] = (
            TaskView(TaskStatus.READY) if ready else TaskView(TaskStatus.SKIPPED, d.input_context, d.skip_reason)
        )
    status = run_outcome(views)
    if status is None:
        return decisions, None
    message = failed_tasks_message(errors) if status == RunStatus.FAILED else None
    return decisions, (status, final_context(workflow, views), message)
