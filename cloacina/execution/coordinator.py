"""RunCoordinator: creates runs, executes task attempts and advances runs, whatever the dispatcher.

Flow of one run::

    create_run ──> advance ──plan──> Ready tasks ──dispatcher──> run_task ──> complete / fail / retry
                      ^                                                         │
                      └──────────────────────────── advance <────────────────────┘

Each step is its own transaction and each transition is guarded in SQL (see :mod:`cloacina.store.runs`), so
concurrent completions of a fan-in, duplicate deliveries and late results of timed-out attempts are harmless:
``advance`` runs after the caller's own transaction committed, so the last finisher always sees every result.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from cloacina.context import Context
from cloacina.definitions.retry import classify_error
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.base import Dispatcher
from cloacina.engine.planner import final_context, plan, run_outcome
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.execution.task_call import TaskCallError, call_task, describe_error
from cloacina.store.models import utcnow
from cloacina.store.runs import CronClaim, RunStore, TaskRecord, TriggerClaim

log = logging.getLogger("cloacina.run")
WorkflowResolver = Callable[[str, str], Workflow]
RunFinishedListener = Callable[[str, RunStatus], None]


def _failed_tasks_message(tasks: Mapping[str, TaskRecord]) -> str | None:
    failed = [f"{tid}: {rec.error_message}" for tid, rec in tasks.items() if rec.status == TaskStatus.FAILED]
    return ("task failed: " + "; ".join(failed)) if failed else None


class RunCoordinator:
    """Drives runs through the store and a dispatcher. One per runner or worker process."""

    def __init__(
        self,
        store: RunStore,
        dispatcher: Dispatcher,
        resolve_workflow: WorkflowResolver,
        *,
        default_task_timeout_s: float | None = 300.0,
        worker_name: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.resolve_workflow = resolve_workflow
        self.default_task_timeout_s = default_task_timeout_s
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self._rng = rng or random.Random()
        self._listeners: list[RunFinishedListener] = []
        dispatcher.bind(self.run_task)

    def add_run_finished_listener(self, listener: RunFinishedListener) -> None:
        self._listeners.append(listener)

    # -- runs -------------------------------------------------------------------------------------------
    def create_run(
        self,
        workflow: Workflow,
        input_context: Mapping[str, Any],
        *,
        trigger: TriggerClaim | None = None,
        cron: CronClaim | None = None,
        deadline_s: float | None = None,
    ) -> str | None:
        """Record a new run and start its root tasks; ``None`` if deduplication refused it."""
        run_id = self.store.create_run(
            workflow,
            input_context,
            trigger=trigger,
            cron=cron,
            deadline_s=deadline_s,
            owner=self.worker_name,
        )
        if run_id is None:
            return None
        log.info(
            "run created",
            extra={
                "run_id": run_id,
                "workflow": workflow.name,
                "trigger": trigger.trigger_name if trigger else None,
            },
        )
        if deadline_s:
            self.dispatcher.call_later(deadline_s, lambda: self.expire_run(run_id, deadline_s))
        self.advance(run_id)
        return run_id

    def advance(self, run_id: str) -> None:
        """Plan what can happen next in the run and make it happen (dispatch, skip, or finish the run)."""
        loaded = self.store.load(run_id)
        if loaded is None:
            log.error("advance: run %s does not exist", run_id)
            return
        run, tasks = loaded
        if run.status.is_terminal:
            return
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version)
        views = {tid: rec.view() for tid, rec in tasks.items()}
        decisions = plan(workflow, run.input_context, views)
        if decisions:
            for task_id in self.store.apply_decisions(run_id, decisions):
                self.dispatcher.submit(run_id, task_id)
            if all(d.action == "skip" for d in decisions):
                loaded = self.store.load(run_id)
                if loaded is None:
                    return
                run, tasks = loaded
                views = {tid: rec.view() for tid, rec in tasks.items()}
            else:
                return
        outcome = run_outcome(views)
        if outcome is not None:
            self._finish(run_id, workflow, outcome, tasks)

    def _finish(self, run_id: str, workflow: Workflow, outcome: RunStatus, tasks: Mapping[str, TaskRecord]) -> None:
        views = {tid: rec.view() for tid, rec in tasks.items()}
        error = _failed_tasks_message(tasks) if outcome == RunStatus.FAILED else None
        if self.store.finish_run(run_id, outcome, final_context(workflow, views), error):
            log.info("run finished", extra={"run_id": run_id, "workflow": workflow.name, "status": str(outcome)})
            self._notify(run_id, outcome)

    def expire_run(self, run_id: str, deadline_s: float) -> None:
        """End a run that outlived ``workflow_timeout_seconds``."""
        loaded = self.store.load(run_id)
        if loaded is None or loaded[0].status.is_terminal:
            return
        run, tasks = loaded
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version)
        views = {tid: rec.view() for tid, rec in tasks.items()}
        message = f"workflow timed out after {deadline_s:g}s"
        if self.store.finish_run(run_id, RunStatus.FAILED, final_context(workflow, views), message):
            log.warning("run timed out", extra={"run_id": run_id, "workflow": run.workflow_name})
            self._notify(run_id, RunStatus.FAILED)

    def _notify(self, run_id: str, status: RunStatus) -> None:
        for listener in list(self._listeners):
            try:
                listener(run_id, status)
            except Exception:
                log.exception("run-finished listener failed for run %s", run_id)

    # -- tasks ------------------------------------------------------------------------------------------
    def run_task(self, run_id: str, task_id: str) -> None:
        """Execute one attempt of a Ready task and record its outcome (the dispatcher's handler)."""
        started = self.store.start_attempt(run_id, task_id, worker=self.worker_name)
        if started is None:
            return  # already taken, finished, or the run ended: a duplicate delivery is a no-op
        attempt, inputs = started
        run = self.store.get_run(run_id)
        assert run is not None
        definition = self.resolve_workflow(run.workflow_name, run.workflow_version).get_task(task_id)
        fields = {"run_id": run_id, "workflow": run.workflow_name, "task": task_id, "attempt": attempt}
        timeout_s = definition.timeout_s or self.default_task_timeout_s
        try:
            output = call_task(definition, inputs, timeout_s)
        except TaskCallError as failure:
            self._record_failure(run_id, definition, attempt, inputs, failure.cause, fields)
            return
        if self.store.complete_attempt(run_id, task_id, attempt, output):
            log.info("task completed", extra=fields)
            self._callback(definition, "on_success", definition.task_id, Context(output))
            self.advance(run_id)

    def _record_failure(
        self,
        run_id: str,
        definition: TaskDefinition,
        attempt: int,
        inputs: dict[str, Any],
        cause: BaseException,
        fields: dict[str, Any],
    ) -> None:
        message = describe_error(cause)
        retry = definition.retry.should_retry(cause, attempt)
        delay_s = definition.retry.delay_ms(attempt, self._rng) / 1000 if retry else 0.0
        retry_at = utcnow() + timedelta(seconds=delay_s) if retry else None
        if not self.store.fail_attempt(run_id, definition.task_id, attempt, message, classify_error(cause), retry_at):
            return
        if retry:
            log.warning("task attempt failed, retrying in %.3fs: %s", delay_s, message, extra=fields)
            self.dispatcher.submit(run_id, definition.task_id, delay_s)
            return
        log.error("task failed: %s", message, extra=fields)
        self._callback(definition, "on_failure", definition.task_id, message, Context(inputs))
        self.advance(run_id)

    @staticmethod
    def _callback(definition: TaskDefinition, name: str, *args: Any) -> None:
        callback = getattr(definition, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # callbacks never change a task's outcome
            log.warning(
                "%s callback of task %r raised %s",
                name,
                definition.task_id,
                describe_error(exc),
                exc_info=True,
            )
