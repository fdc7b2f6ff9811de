"""RunCoordinator: creates runs, executes task attempts and plans what comes next, whatever runs the tasks.

Flow of one run::

    create_run (+ plan the roots, same txn) ──> Ready tasks ──executor──> run_task ──> complete / fail
                                                   ^                                  (+ plan, same txn)
                                                   └──────────── newly Ready tasks <──────────┘

The coordinator does no dispatching of its own: it talks to a :class:`~cloacina.execution.dispatcher.Dispatcher`.
Embedded, a thread pool runs Ready tasks and re-submits retries after their delay. Distributed, new runs are
published as Celery canvases whose nodes call :meth:`run_node`, which turns a retry into a Celery retry. Rules,
skips, retries, callbacks and ``final_context`` are the same code in both modes.

Run control: :meth:`RunCoordinator.cancel_run` ends a run ``Cancelled`` (tasks still running finish, their results
are discarded); :meth:`RunCoordinator.retry_run` re-executes a Failed or Cancelled run from its failure, reusing
what completed (:mod:`cloacina.store.run_control`).

``max_active_runs``: a run of a limited workflow beyond its limit is created waiting and not dispatched; whenever
this process ends a run of such a workflow (its last task, a cancel, a timeout) it promotes the oldest waiting
runs into the free slots and dispatches them (:meth:`RunCoordinator.promote_waiting`,
:mod:`cloacina.store.run_limits`).

Callbacks (cloaca's order): ``on_failure(task_id, message, context)`` after every attempt whose function raised,
retries included, with the Context object the function received; ``on_success(task_id, context)`` once, with
the output, before the completion is recorded. A callback that raises is printed to stderr and ignored.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy.exc import InterfaceError, OperationalError

from cloacina.backoff import Backoff
from cloacina.context import Context
from cloacina.definitions.retry import failure_kind
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import final_context
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.execution.deferred_start import DeferredStart, RecordingSlot
from cloacina.execution.dispatcher import Dispatcher, NodeOutcome, PlanOnly
from cloacina.execution.task_call import TaskCallError, call_task, describe_error
from cloacina.execution.task_handle import current_slot, holding_slot
from cloacina.secrets import task_secrets
from cloacina.store.models import utcnow
from cloacina.store.runs import (
    ContinueWith,
    CronClaim,
    OpenedRun,
    PendingStart,
    PoolWait,
    RunEnd,
    RunStore,
    StartedAttempt,
    Transition,
    TriggerClaim,
)

log = logging.getLogger("cloacina.run")
# How long to keep trying to record an outcome the task already has: 0.5 + 1 + 2 + 4 s.
RECORD_RETRY = Backoff(initial_s=0.5, max_s=4.0)
RECORD_RETRIES = 4
UNRESOLVABLE_ATTEMPTS = 3  # attempts a task gets when the executing process cannot load its code
UNRESOLVABLE_RETRY_S = 5.0
PROMOTION_ROUNDS = 4  # versions of one workflow a promotion resolves before it leaves the rest to the sweeper
WorkflowResolver = Callable[[str, str, str | None], Workflow]  # (name, version, package fingerprint)
RunFinishedListener = Callable[[RunEnd], None]
__all__ = ["NodeOutcome", "RunCoordinator", "WorkflowResolver"]
AttemptTracker = Callable[[str, str, int, DeferredStart | None], AbstractContextManager[Any]]


class RunCoordinator:
    """Drives runs through the store. One per runner, poller or worker process."""

    def __init__(
        self,
        store: RunStore,
        resolve_workflow: WorkflowResolver,
        *,
        default_task_timeout_s: float | None = 300.0,
        worker_name: str | None = None,
        rng: random.Random | None = None,
        dispatcher: Dispatcher | None = None,
        track_attempt: AttemptTracker | None = None,
        defer_start_within_s: float = 15.0,
    ) -> None:
        self.store = store
        self.resolve_workflow = resolve_workflow
        self.default_task_timeout_s = default_task_timeout_s
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.dispatcher: Dispatcher = dispatcher if dispatcher is not None else PlanOnly()
        self.dispatcher.attach(self)
        self.track_attempt = track_attempt
        self.defer_start_within_s = defer_start_within_s  # see _must_record_first
        self._rng = rng or random.Random()
        self._listeners: list[RunFinishedListener] = []
        self._started_listeners: list[Callable[[str, str, StartedAttempt], None]] = []

    def add_run_finished_listener(self, listener: RunFinishedListener) -> None:
        self._listeners.append(listener)

    def add_attempt_started_listener(self, listener: Callable[[str, str, StartedAttempt], None]) -> None:
        self._started_listeners.append(listener)

    # -- runs -------------------------------------------------------------------------------------------
    def create_run(
        self,
        workflow: Workflow,
        input_context: Mapping[str, Any],
        *,
        trigger: TriggerClaim | None = None,
        cron: CronClaim | None = None,
        deadline_s: float | None = None,
        package_fingerprint: str | None = None,
    ) -> str | None:
        """Record a new run and start it; ``None`` if its trigger or cron claim was refused."""
        opened = self.store.open_run(
            workflow,
            input_context,
            trigger=trigger,
            cron=cron,
            deadline_s=deadline_s,
            owner=self.worker_name,
            package_fingerprint=package_fingerprint,
        )
        if opened is None:
            return None
        log.info(
            "run created",
            extra={
                "run_id": opened.run_id,
                "workflow": workflow.name,
                "trigger": trigger.trigger_name if trigger else None,
            },
        )
        return self._launch(opened, workflow)

    def _launch(self, opened: OpenedRun, workflow: Workflow) -> str:
        """Hand a run just created (and planned) to the dispatcher, or announce its end if nothing was left; a
        run that waits for a slot is left in the store (it is dispatched when promoted)."""
        if opened.waiting_reason is not None:
            log.info(
                "run waiting: %s",
                opened.waiting_reason,
                extra={"run_id": opened.run_id, "workflow": workflow.name},
            )
        elif opened.transition.ended is not None:  # every task was skipped by its rule (or reused, for a retry)
            self._notify(opened.transition.ended)
        else:
            self.dispatcher.start_run(opened.run_id, workflow, opened.transition.ready)
        return opened.run_id

    # -- run control ------------------------------------------------------------------------------------
    def cancel_run(self, run_id: str) -> bool:
        """Cancel an active run: it ends ``Cancelled`` at once (its dedup key freed, its waiting clients woken),
        no task of it starts afterwards, and the results of tasks still running are discarded when they return.

        ``True`` if this call cancelled it, ``False`` if it had already ended; ``KeyError`` for an unknown run.
        """
        ended = self.store.cancel_run(run_id)
        if ended is None:
            if self.store.get_run(run_id) is None:
                raise KeyError(f"unknown run {run_id!r}")
            return False
        log.info("run cancelled", extra={"run_id": run_id})
        self._notify(ended)
        self.dispatcher.cancel_run(run_id)
        self._promote_after_end_of(run_id)
        return True

    def retry_run(self, run_id: str, *, deadline_s: float | None = None) -> str:
        """Re-execute a Failed or Cancelled run from its failure: a new run (``retry_of`` = ``run_id``) that keeps
        the results of the tasks that completed and runs the others; returns its id. The original is unchanged.

        ``KeyError`` for an unknown run; ``ValueError`` for a run that is not Failed or Cancelled.
        """
        run = self.store.get_run(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id!r}")
        if not run.status.is_retryable:
            raise ValueError(f"run {run_id} is {run.status}: only a Failed or Cancelled run can be retried")
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        opened = self.store.retry_run(run_id, workflow, deadline_s=deadline_s, owner=self.worker_name)
        log.info("run retried", extra={"run_id": opened.run_id, "retry_of": run_id, "workflow": workflow.name})
        return self._launch(opened, workflow)

    def advance(self, run_id: str, workflow: Workflow | None = None) -> Transition:
        """Plan the run and hand newly Ready tasks to the dispatcher."""
        if workflow is None:
            run = self.store.get_run(run_id)
            if run is None or run.status.is_terminal:
                return Transition(False)
            workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        return self._after(run_id, self.store.advance(run_id, workflow), workflow)

    def _after(
        self, run_id: str, transition: Transition, workflow: Workflow | None = None, *, dispatch_ready: bool = True
    ) -> Transition:
        """Hand newly Ready tasks to the dispatcher (unless the caller runs them: ``dispatch_ready=False``) and
        announce the run's end."""
        if transition.ready and dispatch_ready:
            self.dispatcher.tasks_ready(run_id, transition.ready, workflow)
        if transition.ended is not None:
            log.info("run finished", extra={"run_id": run_id, "status": str(transition.ended.status)})
            self._notify(transition.ended)
            if workflow is not None and workflow.max_active_runs is not None:
                self._promote_quietly(workflow)
        return transition

    def expire_run(self, run_id: str, deadline_s: float) -> None:
        """End a run that outlived its ``workflow_timeout_seconds``."""
        loaded = self.store.load(run_id)
        if loaded is None or loaded[0].status.is_terminal:
            return
        run, tasks = loaded
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        views = {tid: rec.view() for tid, rec in tasks.items()}
        ended = self.store.finish_run(
            run_id, RunStatus.FAILED, final_context(workflow, views), f"workflow timed out after {deadline_s:g}s"
        )
        if ended is not None:
            log.warning("run timed out", extra={"run_id": run_id, "workflow": run.workflow_name})
            self._notify(ended)
            if workflow.max_active_runs is not None:
                self._promote_quietly(workflow)

    # -- max_active_runs ----------------------------------------------------------------------------------
    def promote_waiting(self, workflow: Workflow) -> list[str]:
        """Start the oldest waiting runs of ``workflow`` into its free slots (all of them if it has no limit any
        more) and hand them to the dispatcher; returns their ids, in the order they waited.

        Safe anywhere, any time, in any number of processes: the store counts and promotes under the workflow's
        lock. A waiting run of another version is planned with that version, resolved here first.
        """
        workflows = {workflow.version: workflow}
        started: list[str] = []
        for _ in range(PROMOTION_ROUNDS):
            promotion = self.store.promote_waiting(workflow.name, workflow.max_active_runs, workflows)
            for run in promotion.promoted:
                log.info("run promoted: a slot is free", extra={"run_id": run.run_id, "workflow": workflow.name})
                started.append(self._launch(OpenedRun(run.run_id, run.transition), run.workflow))
            if promotion.unresolved is None:
                break
            version, fingerprint = promotion.unresolved
            try:
                workflows[version] = self.resolve_workflow(workflow.name, version, fingerprint)
            except Exception as exc:  # its code is not here; a process that has it (or its catalog entry) will
                log.warning("cannot promote waiting runs of %r version %s: %s", workflow.name, version, exc)
                break
        return started

    def _promote_quietly(self, workflow: Workflow) -> None:
        """:meth:`promote_waiting` after a run ended; a failure is logged (the sweeper promotes later)."""
        try:
            self.promote_waiting(workflow)
        except Exception as exc:
            log.warning("promoting waiting runs of %r failed (the sweeper will): %s", workflow.name, exc)

    def _promote_after_end_of(self, run_id: str) -> None:
        """A run ended here from outside its tasks (cancelled): promote waiting runs of its workflow, if limited."""
        try:
            run = self.store.get_run(run_id)
            if run is None:
                return
            workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        except Exception as exc:
            log.warning("cannot promote waiting runs after run %s ended (the sweeper will): %s", run_id, exc)
            return
        if workflow.max_active_runs is not None:
            self._promote_quietly(workflow)

    def _notify(self, ended: RunEnd) -> None:
        for listener in list(self._listeners):
            try:
                listener(ended)
            except Exception:
                log.exception("run-finished listener failed for run %s", ended.run_id)

    # -- tasks ------------------------------------------------------------------------------------------
    def run_node(
        self,
        run_id: str,
        task_id: str,
        *,
        record_start: bool = False,
        continue_with: ContinueWith | None = None,
        started: StartedAttempt | None = None,
    ) -> NodeOutcome:
        """One delivery of a task's message: make the task Ready if its turn has come, then run it. The tasks its
        finish makes Ready come back in the outcome (the caller runs or publishes them), not to the dispatcher.
        ``record_start``, ``continue_with`` and ``started``: see :meth:`run_task`."""
        if started is not None:  # started by its dependency's finish for this caller
            return self.run_task(run_id, task_id, dispatch_ready=False, continue_with=continue_with, started=started)
        # Fast path: the task was made Ready by the step that finished its last dependency.
        outcome = self.run_task(
            run_id, task_id, dispatch_ready=False, record_start=record_start, continue_with=continue_with
        )
        if outcome.kind != "done":
            return outcome
        found = self.store.get_task(run_id, task_id)
        if found is None:
            log.error("delivery for unknown task %s of run %s ignored", task_id, run_id)
            return NodeOutcome("done")
        run, task = found
        if run.status.is_terminal or task.status.is_terminal:
            return NodeOutcome("done")
        if task.status == TaskStatus.NOT_STARTED:
            self.advance(run_id)
            found = self.store.get_task(run_id, task_id)
            if found is None or found[0].status.is_terminal or found[1].status.is_terminal:
                return NodeOutcome("done")
            task = found[1]
        if task.status == TaskStatus.RUNNING or task.status == TaskStatus.NOT_STARTED:
            return NodeOutcome("waiting")
        if task.next_attempt_at is not None:
            remaining = (task.next_attempt_at - utcnow()).total_seconds()
            if remaining > 0.01:
                return NodeOutcome("retry", remaining)
        return self.run_task(
            run_id, task_id, dispatch_ready=False, record_start=record_start, continue_with=continue_with
        )

    def run_task(
        self,
        run_id: str,
        task_id: str,
        *,
        dispatch_ready: bool = True,
        record_start: bool = False,
        continue_with: ContinueWith | None = None,
        started: StartedAttempt | None = None,
    ) -> NodeOutcome:
        """Execute one attempt of a Ready task and record its outcome (plus the planning it causes). The tasks
        its finish makes Ready go to the dispatcher, or (``dispatch_ready=False``) back in the outcome.

        On PostgreSQL the attempt's start is deferred (:mod:`cloacina.execution.deferred_start`): a short task's
        finish records it; ``record_start=True`` (a message delivered again after its worker was lost) records it
        before the task runs, so repeated losses are counted (see :meth:`_must_record_first`). ``continue_with``:
        the finish also starts the successor it names, returned in ``NodeOutcome.continued``; ``started``: such an
        attempt, already started.
        """
        if started is None:
            begun = self.store.begin_attempt(run_id, task_id, worker=self.worker_name)
            if isinstance(begun, PoolWait):  # a pool task that could not take its slots
                return self._pool_wait(run_id, task_id, begun, dispatch_ready)
            started = begun
        if started is None:  # not Ready: taken, finished, not yet due, or the run ended (run_node looks closer)
            return NodeOutcome("done")
        deferred = None
        if not started.is_recorded:
            deferred = DeferredStart(
                started,
                self.worker_name,
                lambda: self.store.record_start(run_id, task_id, started, worker=self.worker_name),
            )
            if self._must_record_first(started, record_start) and not deferred.record_now():
                return NodeOutcome("done")  # another delivery took it meanwhile
        try:
            workflow = self.resolve_workflow(
                started.workflow_name, started.workflow_version, started.package_fingerprint
            )
            definition = workflow.get_task(task_id)
        except Exception as exc:  # this process cannot load the code (missing module, package not loadable)
            if deferred is not None and not deferred.record_now():
                return NodeOutcome("done")
            return self._unresolvable(run_id, task_id, started, exc)
        fields = {"run_id": run_id, "workflow": workflow.name, "task": task_id, "attempt": started.attempt}
        for listener in self._started_listeners:
            listener(run_id, task_id, started)
        timeout_s = definition.timeout_s or self.default_task_timeout_s
        tracking = (
            self.track_attempt(run_id, task_id, started.attempt, deferred) if self.track_attempt else nullcontext()
        )
        slot = current_slot() if deferred is None else RecordingSlot(current_slot(), deferred)
        # The attempt's heartbeat covers its callbacks too: a slow callback on a live worker is not a lost attempt.
        with tracking, task_secrets(workflow), holding_slot(slot):  # the task's Context reads secrets
            try:
                output = call_task(definition, started.input_context, timeout_s)
            except TaskCallError as failure:
                if failure.raised:  # after every attempt that raised, retries included, before it is recorded
                    self._callback(definition, "on_failure", task_id, failure.message, failure.context)
                return self._record_failure(
                    run_id,
                    workflow,
                    definition,
                    started,
                    failure,
                    fields,
                    deferred,
                    dispatch_ready=dispatch_ready,
                    continue_with=continue_with,
                )
            # on_success runs before the task is marked completed (cloaca's order), so recording the completion
            # can plan the successors and end the run, when this was its last task, in one transaction.
            if definition.on_success is not None:
                self._callback(definition, "on_success", task_id, Context(output))
        start = deferred.settle() if deferred is not None else None
        transition = _record(
            lambda: self.store.complete_attempt(
                run_id,
                task_id,
                started.attempt,
                output,
                workflow,
                started.basis,
                start,
                worker=self.worker_name,
                continue_with=continue_with,
            )
        )
        if not transition.applied:  # resolved meanwhile: timed out, lost, or its run was cancelled
            self._discarded(run_id, task_id, started.attempt, "completed", start)
            return NodeOutcome("done")
        log.info("task completed", extra=fields)
        self._after(run_id, transition, workflow, dispatch_ready=dispatch_ready)
        return self._outcome("completed", transition, workflow, started, dispatch_ready)

    def _record_failure(
        self,
        run_id: str,
        workflow: Workflow,
        definition: TaskDefinition,
        started: StartedAttempt,
        failure: TaskCallError,
        fields: dict[str, Any],
        deferred: DeferredStart | None = None,
        *,
        dispatch_ready: bool = True,
        continue_with: ContinueWith | None = None,
    ) -> NodeOutcome:
        message, attempt, policy = failure.message, started.attempt, definition.retry
        retry = policy.permits_retry(attempt, message, failure.cause)
        delay_s = policy.retry_delay_s(attempt, self._rng) if retry else 0.0
        retry_at = utcnow() + timedelta(seconds=delay_s) if retry else None
        kind = failure_kind(message, failure.cause)
        start = deferred.settle() if deferred is not None else None
        transition = _record(
            lambda: self.store.fail_attempt(
                run_id,
                definition.task_id,
                attempt,
                message,
                kind,
                retry_at,
                workflow,
                started.basis,
                start,
                worker=self.worker_name,
                continue_with=None if retry else continue_with,
            )
        )
        if not transition.applied:
            self._discarded(run_id, definition.task_id, attempt, "failed", start)
            return NodeOutcome("done")
        if retry:
            log.warning("task attempt failed, retrying in %.3fs: %s", delay_s, message, extra=fields)
            return NodeOutcome("retry", delay_s)
        log.error("task failed: %s", message, extra=fields)
        self._after(run_id, transition, workflow, dispatch_ready=dispatch_ready)
        return self._outcome("failed", transition, workflow, started, dispatch_ready)

    @staticmethod
    def _outcome(
        kind: Literal["completed", "failed"],
        transition: Transition,
        workflow: Workflow,
        started: StartedAttempt,
        dispatch_ready: bool,
    ) -> NodeOutcome:
        """A final attempt's outcome, with what its finish made Ready (and started) for the caller to run."""
        if dispatch_ready:
            return NodeOutcome(kind, workflow=workflow)
        continued = None
        if transition.continued is not None:
            c = transition.continued
            attempt = StartedAttempt(
                attempt=c.attempt,
                input_context=c.input_context,
                workflow_name=started.workflow_name,
                workflow_version=started.workflow_version,
                package_fingerprint=started.package_fingerprint,
                triggered_at=None,
                basis=c.basis,
                started_at=utcnow(),
            )
            continued = (c.task_id, attempt)
        return NodeOutcome(kind, ready=transition.ready, workflow=workflow, continued=continued)

    def _pool_wait(self, run_id: str, task_id: str, waiting: PoolWait, dispatch_ready: bool) -> NodeOutcome:
        """A pool task did not start. Its pool is full: it stays Ready and this delivery comes back after a short
        backoff, holding no worker meanwhile. Its pool does not exist: it fails (final) with a message naming the
        command that defines the pool."""
        fields = {"run_id": run_id, "task": task_id, "pool": waiting.pool}
        if not waiting.missing:
            log.debug("pool %r full; task waits %.2fs", waiting.pool, waiting.retry_after_s, extra=fields)
            return NodeOutcome("retry", waiting.retry_after_s)
        run = self.store.get_run(run_id)
        if run is None or run.status.is_terminal:
            return NodeOutcome("done")
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        transition = self.store.fail_unstarted(run_id, task_id, waiting.message, workflow, worker=self.worker_name)
        if not transition.applied:
            return NodeOutcome("done")
        log.error("task failed: %s", waiting.message, extra=fields)
        self._after(run_id, transition, workflow, dispatch_ready=dispatch_ready)
        return NodeOutcome("failed", ready=() if dispatch_ready else transition.ready, workflow=workflow)

    def _unresolvable(self, run_id: str, task_id: str, started: StartedAttempt, exc: Exception) -> NodeOutcome:
        """The attempt started but its code cannot be found here: give the task back (another worker may have the
        code) a few times, then fail it with the reason, so the run never hangs on a misconfigured worker."""
        message = f"cannot load the task's code in {self.worker_name}: {describe_error(exc)}"
        retry = started.attempt < UNRESOLVABLE_ATTEMPTS
        retry_at = utcnow() + timedelta(seconds=UNRESOLVABLE_RETRY_S) if retry else None
        log.error(message, extra={"run_id": run_id, "task": task_id, "attempt": started.attempt})
        if retry:
            transition = self.store.fail_attempt(run_id, task_id, started.attempt, message, "transient", retry_at)
            return NodeOutcome("retry", UNRESOLVABLE_RETRY_S) if transition.applied else NodeOutcome("done")
        transition = self.store.fail_attempt(run_id, task_id, started.attempt, message, "error", None)
        if transition.applied:
            # Without the workflow nothing can be planned here; a process that has it (or the sweeper) finishes
            # the run. The task itself is recorded as Failed with the reason.
            self._after(run_id, transition)
        return NodeOutcome("failed")

    def _must_record_first(self, started: StartedAttempt, redelivered: bool) -> bool:
        """Whether a peeked attempt records its start before it runs instead of deferring it.

        Deferring is safe only for a message that is the task's only one: two deliveries that both peeked the task
        Ready would both run it. Duplicates come from recovery, so the start is recorded first for a message
        delivered again (``redelivered``), for any attempt after the first (a retry, a lost attempt given back),
        and for a task Ready for longer than ``defer_start_within_s`` (its run may have been taken for stalled and
        republished meanwhile: keep that at most half the sweeper's ``stale_run_s``).
        """
        if redelivered or started.attempt > 1 or started.ready_since is None:
            return True
        return (utcnow() - started.ready_since).total_seconds() > self.defer_start_within_s

    def _discarded(
        self, run_id: str, task_id: str, attempt: int, outcome: str, start: PendingStart | None = None
    ) -> None:
        """An attempt's outcome did not apply: if its run was cancelled while it ran, record that its result was
        discarded (only then does this write anything; a timed-out or lost attempt is left as it was). ``start``:
        the attempt's start was deferred and is not recorded."""
        try:
            if self.store.discard_attempt(run_id, task_id, attempt, outcome, start):
                log.info(
                    "result of a cancelled run's task discarded",
                    extra={"run_id": run_id, "task": task_id, "attempt": attempt},
                )
        except Exception as exc:  # bookkeeping only: the outcome is already refused
            log.warning("could not record the discarded result of %s in run %s: %s", task_id, run_id, exc)

    @staticmethod
    def _callback(definition: TaskDefinition, name: str, *args: Any) -> None:
        """Run a task callback; one that raises is reported on stderr (as cloaca does) and changes nothing."""
        callback = getattr(definition, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # callbacks never change a task's outcome
            # cloaca prints the failure on stderr. A process that configured logging also gets a warning (an
            # unconfigured one would print it twice: once more through logging's last-resort handler).
            print(
                f"[cloaca] {name} callback failed for task {definition.task_id!r}: {describe_error(exc)}",
                file=sys.stderr,
            )
            if log.hasHandlers():
                log.warning("task %r: its %s callback raised %s", definition.task_id, name, describe_error(exc))


def _record(write: Callable[[], Transition]) -> Transition:
    """Record a task's outcome, retrying through a brief database outage.

    The task has already run: losing its result would make it run again. A write whose commit did reach the
    database before the connection dropped is harmless to repeat: the guarded update then does not apply.
    """
    for delay in RECORD_RETRY.delays(RECORD_RETRIES):
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            log.warning("recording a task outcome failed (%s); retrying in %.1fs", str(exc).splitlines()[0], delay)
            time.sleep(delay)
    return write()
