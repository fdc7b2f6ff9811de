"""The distributed :class:`~cloacina.execution.dispatcher.Dispatcher`: runs go to Celery as canvases.

A new run is published whole, each sequential stretch of its DAG one message (unless fusion is off); Ready tasks
need no message of their own (the canvas already holds their nodes); a recovered run is republished for its
unfinished part only, so it resumes at the first unfinished task of a stretch. Deadlines are enforced by the
pollers' sweeper.

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
from typing import Any

from celery import Celery

from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.canvas import compile_canvas
from cloacina.execution.dispatcher import RunDriver

log = logging.getLogger("cloacina.publish")
RUN_STAMP = "cloacina_run"  # the Celery stamp naming the run a message belongs to


def _publish(canvas: Any, run_id: str) -> None:
    """Send ``canvas`` with every message stamped with ``run_id`` (what :meth:`CeleryDispatcher.cancel_run` revokes)."""
    canvas.stamp(**{RUN_STAMP: run_id})
    canvas.apply_async()


class CeleryDispatcher:
    """Sends run canvases to the broker. A failed publish is logged; the sweeper republishes the run later."""

    def __init__(self, app: Celery, queue: str, *, fuse: bool = True) -> None:
        self.app = app
        self.queue = queue
        self.fuse = fuse
        self._coordinator: RunDriver | None = None

    def attach(self, coordinator: RunDriver) -> None:
        self._coordinator = coordinator

    def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
        """Publish the canvas of a new run."""
        try:
            canvas = compile_canvas(self.app, workflow, run_id, queue=self.queue, fuse=self.fuse)
            if canvas is not None:
                _publish(canvas, run_id)
        except Exception as exc:  # broker down: the run stays Pending in SQL and the sweeper republishes it
            log.error("publishing run %s failed (the sweeper will retry): %s", run_id, exc, extra={"run_id": run_id})

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...]) -> None:
        return None  # their canvas nodes are already on their way

    def resume_run(self, run_id: str) -> None:
        """Publish the unfinished part of ``run_id`` (recovery). Plans first, so finished work is never redone."""
        coordinator = self._coordinator
        if coordinator is None:
            raise RuntimeError("CeleryDispatcher is not attached to a coordinator")
        coordinator.advance(run_id)
        loaded = coordinator.store.load(run_id)
        if loaded is None or loaded[0].status.is_terminal:
            return
        run, tasks = loaded
        workflow = coordinator.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        finished = {tid for tid, rec in tasks.items() if rec.status.is_terminal}
        canvas = compile_canvas(self.app, workflow, run_id, queue=self.queue, finished=finished, fuse=self.fuse)
        if canvas is not None:
            _publish(canvas, run_id)

    def cancel_run(self, run_id: str) -> None:
        """Revoke the run's messages (queued, or held for a countdown); never terminate a running one."""
        try:
            self.app.control.revoke_by_stamped_headers({RUN_STAMP: run_id}, terminate=False)
        except Exception as exc:  # the broker is down: the run's messages still run as no-ops
            log.warning("revoking the messages of cancelled run %s failed: %s", run_id, exc, extra={"run_id": run_id})

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        return None  # the sweeper of the pollers fails runs past their deadline

    def shutdown(self, wait_s: float = 5.0) -> None:
        return None  # the app and its broker pool are shared by the process
