"""The distributed :class:`~cloacina.execution.dispatcher.Dispatcher`: runs go to Celery, a message per stretch.

A new run publishes the stretches of its root tasks (:mod:`cloacina.dispatch.canvas`); after that, the worker that
finishes a task publishes the stretches its finish made Ready (or runs one of them next). Each stretch goes to its
tasks' Celery queue (``@task(queue=...)``, the workflow's ``default_queue``, else ``queue``: the deployment's
``CLOACINA_QUEUE``). Tasks made Ready
anywhere else (planning by recovery, a retried run) are published here. A recovered run is republished from SQL:
every Ready task's stretch, each after what remains of its retry delay, so it resumes at the first unfinished
task of a stretch and never redoes finished work. Deadlines are enforced by the pollers' sweeper.

Cancellation. Every message of a run's canvas carries the run's id as a Celery stamp (``cloacina_run``; Celery
keeps stamps on retries). When a run is cancelled, :meth:`CeleryDispatcher.cancel_run` broadcasts a revoke of
that stamp *without* terminating anything: every worker then discards the run's messages it receives afterwards,
and those it holds for a countdown, without running them. A message already running is left alone: terminating
it would signal a prefork child in the middle of whatever it is doing (a SQL write, a Redis call, user code
holding a resource), so "safe" here means never terminating a child. The running task finishes, its result is
discarded (the store refuses every outcome and every start of a cancelled run), and the rest of its stretch does
nothing. Revoking is an optimisation, not what makes cancellation correct: a worker that was not listening (or
started later) runs the run's messages as no-ops. Costs: stamping a canvas takes tens of microseconds per run;
each worker remembers the ids of revoked runs until it restarts (Celery keeps revoked stamps in memory).
"""

from __future__ import annotations

import logging

from celery import Celery

from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.background_publish import BackgroundPublisher
from cloacina.dispatch.canvas import RUN_STAMP, publish_stretches
from cloacina.execution.dispatcher import RunDriver
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.publish")


class CeleryDispatcher:
    """Sends run canvases to the broker. A failed publish is logged; the sweeper republishes the run later."""

    def __init__(self, app: Celery, queue: str, *, fuse: bool = True) -> None:
        self.app = app
        self.queue = queue  # the deployment's queue: where the tasks routed nowhere else go
        self.fuse = fuse
        self._coordinator: RunDriver | None = None
        self._new_runs = BackgroundPublisher(self.tasks_ready)

    def attach(self, coordinator: RunDriver) -> None:
        self._coordinator = coordinator

    def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
        """Publish the stretches of a new run's root tasks, from the background publisher: the caller goes on
        (e.g. creates its next run) while they are sent."""
        self._new_runs.submit(run_id, ready, workflow)

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...], workflow: Workflow | None = None) -> None:
        """Publish the stretch of each task planning made Ready. A failed publish is logged: the run makes no
        progress, and the sweeper republishes its Ready tasks."""
        if not task_ids:
            return
        try:
            if workflow is None:
                workflow = self._workflow_of(run_id)
                if workflow is None:
                    return
            publish_stretches(self.app, run_id, workflow, task_ids, self.queue, fuse=self.fuse)
        except Exception as exc:  # broker down: the tasks stay Ready in SQL and the sweeper republishes them
            log.error("publishing run %s failed (the sweeper will retry): %s", run_id, exc, extra={"run_id": run_id})

    def resume_run(self, run_id: str) -> None:
        """Publish every Ready task of ``run_id`` (recovery), each after what remains of its retry delay. Plans
        first, so a task whose dependencies all finished is Ready too; finished work is never redone."""
        coordinator = self._attached()
        coordinator.advance(run_id)
        loaded = coordinator.store.load(run_id)
        if loaded is None or loaded[0].status.is_terminal:
            return
        run, tasks = loaded
        workflow = coordinator.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        now = utcnow()
        ready = [tid for tid in workflow.topological_order if tid in tasks and str(tasks[tid].status) == "Ready"]
        countdowns = {
            tid: max(0.0, (due - now).total_seconds())
            for tid in ready
            if (due := tasks[tid].next_attempt_at) is not None
        }
        publish_stretches(self.app, run_id, workflow, ready, self.queue, fuse=self.fuse, countdowns=countdowns)

    def _attached(self) -> RunDriver:
        if self._coordinator is None:
            raise RuntimeError("CeleryDispatcher is not attached to a coordinator")
        return self._coordinator

    def _workflow_of(self, run_id: str) -> Workflow | None:
        run = self._attached().store.get_run(run_id)
        if run is None or run.status.is_terminal:
            return None
        return self._attached().resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)

    def cancel_run(self, run_id: str) -> None:
        """Revoke the run's messages (queued, or held for a countdown); never terminate a running one."""
        try:
            self.app.control.revoke_by_stamped_headers({RUN_STAMP: run_id}, terminate=False)
        except Exception as exc:  # the broker is down: the run's messages still run as no-ops
            log.warning("revoking the messages of cancelled run %s failed: %s", run_id, exc, extra={"run_id": run_id})

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        return None  # the sweeper of the pollers fails runs past their deadline

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Send the new runs still queued (the app and its broker pool are shared by the process)."""
        self._new_runs.close(wait_s)
