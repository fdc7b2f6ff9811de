"""The distributed :class:`~cloacina.execution.dispatcher.Dispatcher`: runs go to Celery as canvases.

A new run is published whole, each sequential stretch of its DAG one message (unless fusion is off); Ready tasks
need no message of their own (the canvas already holds their nodes); a recovered run is republished for its
unfinished part only, so it resumes at the first unfinished task of a stretch. Deadlines are enforced by the
pollers' sweeper.
"""

from __future__ import annotations

import logging

from celery import Celery

from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.canvas import compile_canvas
from cloacina.execution.dispatcher import RunDriver

log = logging.getLogger("cloacina.publish")


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
                canvas.apply_async()
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
            canvas.apply_async()

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        return None  # the sweeper of the pollers fails runs past their deadline

    def shutdown(self, wait_s: float = 5.0) -> None:
        return None  # the app and its broker pool are shared by the process
