"""Plain records the run repository returns (never ORM objects), and the claims a new run can carry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row

from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import TaskView
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.models import TaskRun, WorkflowRun


def loads(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class TriggerClaim:
    """Links a new run to the trigger fire that started it; ``dedup`` makes it count for deduplication."""

    trigger_name: str
    context_hash: str
    dedup: bool
    lock_token: str | None = None


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
    package_fingerprint: str | None = None
    retry_of: str | None = None  # the run this one re-executes from its failure (``DefaultRunner.retry_run``)
    # The cron schedule (its public UUID) whose due time started this run, and the expression that fired it.
    cron_schedule_id: str | None = None
    cron_expression: str | None = None
    # Why this Pending run has not started: its workflow's max_active_runs is reached (None for any other run).
    waiting_reason: str | None = None

    @property
    def fired_by(self) -> str | None:
        """What started the run, for people: the poll trigger's name, ``cron:<expression>`` for a cron
        schedule's run, or ``None`` (a client started it).

        >>> when = datetime(2025, 1, 1)
        >>> run = RunRecord("r1", "wf", "v1", RunStatus.COMPLETED, {}, None, None, None, when, None, None, None,
        ...                 cron_schedule_id="5f0c", cron_expression="*/3 * * * * *")
        >>> run.fired_by
        'cron:*/3 * * * * *'
        """
        if self.trigger_name is not None:
            return self.trigger_name
        if self.cron_schedule_id is not None:
            return f"cron:{self.cron_expression or self.cron_schedule_id}"
        return None


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
    worker: str | None = None  # the process that ran it, "<host>:<pid>" (None: none was recorded)


@dataclass(frozen=True)
class TaskSnapshot:
    """One task of a run as a planner sees it."""

    status: TaskStatus
    output: dict[str, Any] | None = None
    skip_reason: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class PlanBasis:
    """A run as an attempt's start saw it: its version (see ``WorkflowRun.version``), input and tasks. A finish
    whose run still has this version may plan from it without reading the run again."""

    version: int
    run_input: dict[str, Any]
    tasks: Mapping[str, TaskSnapshot]


@dataclass(frozen=True)
class PendingStart:
    """The start of an attempt that its finish records: when it began, on which worker."""

    started_at: datetime
    worker: str | None


@dataclass(frozen=True)
class StartedAttempt:
    """What the executor needs once it owns an attempt."""

    attempt: int
    input_context: dict[str, Any]
    workflow_name: str
    workflow_version: str
    package_fingerprint: str | None
    triggered_at: str | None
    basis: PlanBasis | None = None
    started_at: datetime | None = None
    is_recorded: bool = True  # False: a peek; the attempt's finish (or a later claim) records its start
    ready_since: datetime | None = None  # a peek's: when the task became Ready (it decides whether to defer)


@dataclass(frozen=True)
class RunEnd:
    """A run that just ended, and the dedup lock (if any) its end released in SQL."""

    run_id: str
    status: RunStatus
    trigger_name: str | None = None
    context_hash: str | None = None
    lock_token: str | None = None


@dataclass(frozen=True)
class OpenedRun:
    """A run just created and planned: its id and the planning of its roots (Ready tasks, or its end when every
    task was skipped). ``waiting_reason``: the run waits for a slot of its workflow's ``max_active_runs`` (nothing
    is Ready; it starts when promoted)."""

    run_id: str
    transition: Transition
    waiting_reason: str | None = None


@dataclass(frozen=True)
class Transition:
    """Result of one guarded step on a run: whether it applied, tasks now Ready (the caller dispatches them),
    and the run's end if this step ended it."""

    applied: bool
    ready: tuple[str, ...] = ()
    ended: RunEnd | None = None
    continued: Continuation | None = None  # a Ready successor this step already started for its caller

    def __bool__(self) -> bool:
        return self.applied


@dataclass(frozen=True)
class ContinueWith:
    """Which successor a finish may start for its caller to run next, in the same process: ``prefer`` if the
    finish makes it Ready (the next task of a stretch), else, with ``first_ready``, the first task it makes Ready.

    Routing: a worker runs only tasks routed to the queue of the message it runs (``queue``); a task routed nowhere
    (:meth:`Workflow.queue_of` is ``None``) belongs to ``deployment_queue``. ``queue=None``: any task (one process
    runs everything).
    """

    prefer: str | None = None
    first_ready: bool = False
    queue: str | None = None
    deployment_queue: str | None = None

    def may_run(self, workflow: Workflow, task_id: str) -> bool:
        """Whether the caller may run ``task_id``: it is routed to the caller's queue.

        >>> from cloacina.definitions.task import TaskDefinition
        >>> from cloacina.definitions.workflow import build_workflow
        >>> wf = build_workflow("w", {"a": TaskDefinition("a", print), "b": TaskDefinition("b", print, queue="gpu")})
        >>> here = ContinueWith(queue="cloacina", deployment_queue="cloacina")
        >>> here.may_run(wf, "a"), here.may_run(wf, "b"), ContinueWith().may_run(wf, "b")
        (True, False, True)
        """
        if self.queue is None:
            return True
        return (workflow.queue_of(task_id) or self.deployment_queue) == self.queue


@dataclass(frozen=True)
class Continuation:
    """A successor started by the finish of its dependency (``Ready -> Running``, its attempt recorded), with what
    its executor needs: its attempt, input and the run as the finish left it."""

    task_id: str
    attempt: int
    input_context: dict[str, Any]
    basis: PlanBasis


def run_record(row: WorkflowRun | Row[Any]) -> RunRecord:
    """A run's record from its ORM object or a Core row of ``workflow_runs``.

    A cron schedule's run names its schedule by row id (``cron_schedule_id``); its public id and expression come
    from the input context the scheduler wrote (``schedule_id``, ``schedule_expression``: keys an instance's
    params never override), so they stay right after the schedule is changed or deleted, with no join.
    """
    input_context = json.loads(row.input_context)
    from_cron = row.cron_schedule_id is not None
    schedule_id = input_context.get("schedule_id") if from_cron else None
    expression = input_context.get("schedule_expression") if from_cron else None
    return RunRecord(
        run_id=row.id,
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        status=RunStatus(row.status),
        input_context=input_context,
        final_context=loads(row.final_context),
        error_message=row.error_message,
        trigger_name=row.trigger_name,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        deadline_at=row.deadline_at,
        package_fingerprint=row.package_fingerprint,
        # Read leniently: the column arrives with migration 0007, and a row of an older schema has none.
        retry_of=getattr(row, "retry_of", None),
        cron_schedule_id=schedule_id if isinstance(schedule_id, str) else None,
        cron_expression=expression if isinstance(expression, str) else None,
        waiting_reason=getattr(row, "waiting_reason", None),  # from migration 0008
    )


def task_record(row: TaskRun | Row[Any]) -> TaskRecord:
    return TaskRecord(
        task_id=row.task_id,
        status=TaskStatus(row.status),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        input_context=loads(row.input_context),
        output_context=loads(row.output_context),
        error_message=row.error_message,
        error_kind=row.error_kind,
        skip_reason=row.skip_reason,
        started_at=row.started_at,
        completed_at=row.completed_at,
        next_attempt_at=row.next_attempt_at,
    )
