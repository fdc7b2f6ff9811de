"""Prebuilt SQL statements for the run repository's hot path (every task attempt runs several of them).

Building a SQLAlchemy statement costs more than executing a cached one; these are built once, with bound
parameters (named ``b_*`` where SQLAlchemy reserves the column's own name), and executed on a plain
Connection. Semantics are documented where they are used, in
:mod:`cloacina.store.runs` and :mod:`cloacina.store.run_planning`.
"""

from __future__ import annotations

from sqlalchemy import BindParameter, Boolean, bindparam, func, insert, or_, select, update

from cloacina.engine.states import RunStatus, SkipReason, TaskStatus
from cloacina.store.models import TaskAttempt, TaskRun, TriggerExecution, UTCDateTime, WorkflowRun

ACTIVE_RUN = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
_NOW = bindparam("now", type_=UTCDateTime())
_RUN: BindParameter[str] = bindparam("b_run")
_TASK: BindParameter[str] = bindparam("b_task")

RUN_FOR_START = select(
    WorkflowRun.status,
    WorkflowRun.workflow_name,
    WorkflowRun.workflow_version,
    WorkflowRun.package_fingerprint,
    WorkflowRun.input_context,
).where(WorkflowRun.id == _RUN)

START_TASK = (
    update(TaskRun)
    .where(
        TaskRun.run_id == _RUN,
        TaskRun.task_id == _TASK,
        TaskRun.status == TaskStatus.READY.value,
        or_(TaskRun.next_attempt_at.is_(None), TaskRun.next_attempt_at <= _NOW),
        # A pool task starts only once its slots are taken (cloacina.store.pools.take_slots).
        or_(TaskRun.pool.is_(None), bindparam("pool_checked", type_=Boolean())),
    )
    .values(
        status=TaskStatus.RUNNING.value,
        attempt=TaskRun.attempt + 1,
        heartbeat_at=_NOW,
        next_attempt_at=None,
        updated_at=_NOW,
        started_at=func.coalesce(TaskRun.started_at, _NOW),
    )
    .returning(TaskRun.id, TaskRun.attempt, TaskRun.input_context)
)

INSERT_ATTEMPT = insert(TaskAttempt)

RUN_TO_RUNNING = (
    update(WorkflowRun)
    .where(WorkflowRun.id == _RUN, WorkflowRun.status == RunStatus.PENDING.value)
    .values(status=RunStatus.RUNNING.value, started_at=_NOW, heartbeat_at=_NOW, updated_at=_NOW)
)

# Touching the heartbeat with an UPDATE takes the run's row lock on PostgreSQL until commit.
LOCK_RUN = (
    update(WorkflowRun)
    .where(WorkflowRun.id == _RUN, WorkflowRun.status.in_(ACTIVE_RUN))
    .values(heartbeat_at=_NOW, version=WorkflowRun.version + 1)
    .returning(WorkflowRun.status, WorkflowRun.input_context, WorkflowRun.waiting_reason)
)

RESOLVE_TASK = (
    update(TaskRun)
    .where(
        TaskRun.run_id == _RUN,
        TaskRun.task_id == _TASK,
        TaskRun.status == TaskStatus.RUNNING.value,
        TaskRun.attempt == bindparam("b_attempt"),
    )
    .values(
        status=bindparam("new_status"),
        output_context=bindparam("output"),
        error_message=bindparam("error"),
        error_kind=bindparam("kind"),
        completed_at=bindparam("b_completed_at", type_=UTCDateTime()),
        next_attempt_at=bindparam("retry_at", type_=UTCDateTime()),
        updated_at=_NOW,
    )
    .returning(TaskRun.id)
)

FINISH_ATTEMPT = (
    update(TaskAttempt)
    .where(TaskAttempt.task_run_id == bindparam("b_task_run"), TaskAttempt.attempt == bindparam("b_attempt"))
    .values(
        status=bindparam("new_status"),
        error_message=bindparam("error"),
        error_kind=bindparam("kind"),
        completed_at=_NOW,
    )
)

TASKS_OF_RUN = select(TaskRun.__table__).where(TaskRun.run_id == _RUN).order_by(TaskRun.id)

TASKS_FOR_PLAN = select(
    TaskRun.task_id, TaskRun.status, TaskRun.output_context, TaskRun.skip_reason, TaskRun.error_message
).where(TaskRun.run_id == _RUN)

DECIDE_READY = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.task_id == _TASK, TaskRun.status == TaskStatus.NOT_STARTED.value)
    .values(status=TaskStatus.READY.value, input_context=bindparam("input"), updated_at=_NOW)
)

DECIDE_SKIP = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.task_id == _TASK, TaskRun.status == TaskStatus.NOT_STARTED.value)
    .values(
        status=TaskStatus.SKIPPED.value,
        input_context=bindparam("input"),
        output_context=bindparam("input"),
        skip_reason=bindparam("reason"),
        completed_at=_NOW,
        updated_at=_NOW,
    )
)

END_RUN = (
    update(WorkflowRun)
    .where(WorkflowRun.id == _RUN)
    .values(
        status=bindparam("new_status"),
        completed_at=_NOW,
        updated_at=_NOW,
        error_message=bindparam("error"),
        final_context=bindparam("final"),
        waiting_reason=None,  # a waiting run that ends (cancelled, timed out) waits no more
    )
)

# The dedup key is freed in the transaction that ends the run: the key is free the moment the run is.
FREE_DEDUP_KEY = (
    update(TriggerExecution)
    .where(TriggerExecution.run_id == _RUN)
    .values(dedup_active=False, completed_at=_NOW)
    .returning(TriggerExecution.trigger_name, TriggerExecution.context_hash, TriggerExecution.lock_token)
)

SKIP_UNSTARTED = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.status.in_([TaskStatus.NOT_STARTED.value, TaskStatus.READY.value]))
    .values(status=TaskStatus.SKIPPED.value, skip_reason="run_ended", completed_at=_NOW, updated_at=_NOW)
)

FAIL_RUNNING = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.status == TaskStatus.RUNNING.value)
    .values(
        status=TaskStatus.FAILED.value,
        completed_at=_NOW,
        updated_at=_NOW,
        error_kind="error",
        error_message=bindparam("error"),
    )
)

# -- cancellation (cloacina.store.run_control); the run's row is locked first, as by every run transition -----
CANCELLED_ATTEMPT = "Cancelled"  # the status of an attempt that was running when its run was cancelled

# Attempts still running when the run is cancelled: their task's result will be discarded when it returns.
CANCEL_ATTEMPTS = (
    update(TaskAttempt)
    .where(
        TaskAttempt.task_run_id.in_(
            select(TaskRun.id).where(TaskRun.run_id == _RUN, TaskRun.status == TaskStatus.RUNNING.value)
        ),
        TaskAttempt.status == TaskStatus.RUNNING.value,  # only a task's latest attempt can be running
    )
    .values(status=CANCELLED_ATTEMPT, error_message=bindparam("error"), error_kind="cancelled")
)

CANCEL_RUNNING = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.status == TaskStatus.RUNNING.value)
    .values(
        status=TaskStatus.FAILED.value,
        completed_at=_NOW,
        updated_at=_NOW,
        error_kind="cancelled",
        error_message=bindparam("error"),
    )
)

CANCEL_UNSTARTED = (
    update(TaskRun)
    .where(TaskRun.run_id == _RUN, TaskRun.status.in_([TaskStatus.NOT_STARTED.value, TaskStatus.READY.value]))
    .values(
        status=TaskStatus.SKIPPED.value,
        skip_reason=SkipReason.RUN_CANCELLED.value,
        next_attempt_at=None,
        completed_at=_NOW,
        updated_at=_NOW,
    )
)

# A cancelled attempt's task returned: record when, and that its result was thrown away.
DISCARD_ATTEMPT = (
    update(TaskAttempt)
    .where(
        TaskAttempt.task_run_id
        == select(TaskRun.id).where(TaskRun.run_id == _RUN, TaskRun.task_id == _TASK).scalar_subquery(),
        TaskAttempt.attempt == bindparam("b_attempt"),
        TaskAttempt.status == CANCELLED_ATTEMPT,
        TaskAttempt.completed_at.is_(None),
    )
    .values(completed_at=_NOW, error_message=bindparam("error"))
)

# A task whose start was deferred (cloacina.execution.deferred_start) was running when its run was cancelled: the
# cancel saw it Ready and skipped it. Its attempt returns: record it as the cancel would have, had it seen it.
CANCEL_DEFERRED_TASK = (
    update(TaskRun)
    .where(
        TaskRun.run_id == _RUN,
        TaskRun.task_id == _TASK,
        TaskRun.status == TaskStatus.SKIPPED.value,
        TaskRun.skip_reason == SkipReason.RUN_CANCELLED.value,
        TaskRun.attempt == bindparam("b_attempt") - 1,
        select(WorkflowRun.id).where(WorkflowRun.id == _RUN, WorkflowRun.status == RunStatus.CANCELLED.value).exists(),
    )
    .values(
        status=TaskStatus.FAILED.value,
        skip_reason=None,
        attempt=bindparam("b_attempt"),
        started_at=func.coalesce(TaskRun.started_at, bindparam("started", type_=UTCDateTime())),
        error_kind="cancelled",
        error_message=bindparam("cancel_error"),
        updated_at=_NOW,
    )
    .returning(TaskRun.id)
)
