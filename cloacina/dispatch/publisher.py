"""Publishing runs to Celery: the whole canvas for a new run, the unfinished rest for a recovered one."""

from __future__ import annotations

import logging

from celery import Celery

from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.canvas import compile_canvas
from cloacina.execution.coordinator import RunCoordinator, WorkflowResolver
from cloacina.store.runs import RunStore

log = logging.getLogger("cloacina.publish")


class CanvasPublisher:
    """Sends run canvases to the broker. A failed publish is logged; the sweeper republishes the run later."""

    def __init__(self, app: Celery, store: RunStore, resolve_workflow: WorkflowResolver, queue: str) -> None:
        self.app = app
        self.store = store
        self.resolve_workflow = resolve_workflow
        self.queue = queue

    def publish_run(self, run_id: str, workflow: Workflow) -> None:
        """Publish the canvas of a new run (``RunCoordinator.publish_run``)."""
        try:
            canvas = compile_canvas(self.app, workflow, run_id, queue=self.queue)
            if canvas is not None:
                canvas.apply_async()
        except Exception as exc:  # broker down: the run stays Pending in SQL and the sweeper republishes it
            log.error("publishing run %s failed (the sweeper will retry): %s", run_id, exc, extra={"run_id": run_id})

    def republish(self, run_id: str, coordinator: RunCoordinator) -> None:
        """Publish the unfinished part of ``run_id`` (recovery). Plans first, so finished work is never redone."""
        coordinator.advance(run_id)
        loaded = self.store.load(run_id)
        if loaded is None or loaded[0].status.is_terminal:
            return
        run, tasks = loaded
        workflow = self.resolve_workflow(run.workflow_name, run.workflow_version, run.package_fingerprint)
        finished = {tid for tid, rec in tasks.items() if rec.status.is_terminal}
        canvas = compile_canvas(self.app, workflow, run_id, queue=self.queue, finished=finished)
        if canvas is not None:
            canvas.apply_async()
