"""Everything a Celery worker process needs to run canvas nodes, created once per process (after fork).

Prefork children must not share the parent's database connections or Redis sockets, so the context is built
lazily in the child that first runs a node, keyed by process id.

Runs started from a ``.cloacina`` package carry its fingerprint: the context's
:class:`~cloacina.packaging.loader.PackageLoader` fetches that archive from the package registry (the same
database), validates it again and imports it in isolation, so a worker runs packages it was never given with
``--app``. Archives are extracted under ``$CLOACINA_PACKAGE_CACHE`` (else a private temporary directory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery

from cloacina.definitions import registry
from cloacina.definitions.packages import package_workflow
from cloacina.definitions.workflow import Workflow
from cloacina.execution.coordinator import NodeOutcome, RunCoordinator
from cloacina.execution.heartbeat import AttemptHeartbeats
from cloacina.packaging.loader import PackageLoader, install_resolver
from cloacina.scheduling.redis_locks import TokenLocks
from cloacina.settings import CloacinaSettings
from cloacina.store.database import Database
from cloacina.store.packages import PackageStore
from cloacina.store.runs import RunEnd, RunStore, StartedAttempt

log = logging.getLogger("cloacina.worker")
_contexts: dict[int, WorkerContext] = {}
_lock = threading.Lock()


def resolve_registered_workflow(name: str, version: str, package_fingerprint: str | None = None) -> Workflow:
    """Workflows known to this process (imported with ``--app``), or from the package a run was started from."""
    if package_fingerprint is not None:
        return package_workflow(package_fingerprint, name)
    workflow = registry.get_workflow(name)
    if workflow.version != version:
        log.warning("workflow %r is version %s here but the run was created with %s", name, workflow.version, version)
    return workflow


class WorkerContext:
    """Store, coordinator, heartbeats and lock releases of one worker process."""

    def __init__(self, settings: CloacinaSettings, metrics: Any | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, pool_size=2)
        self.store = RunStore(self.db)
        self.packages = PackageLoader(PackageStore(self.db))
        install_resolver(self.packages)  # resolve_registered_workflow -> package_workflow -> this loader
        self.heartbeats = AttemptHeartbeats(self.store, settings.task_heartbeat_interval_s)
        redis_url = settings.effective_redis_url
        self.locks = TokenLocks.from_url(redis_url, settings.effective_redis_namespace) if redis_url else None
        self.metrics = metrics
        self.coordinator = RunCoordinator(
            self.store,
            resolve_registered_workflow,
            default_task_timeout_s=settings.task_timeout_s,
            track_attempt=self.heartbeats.track,
        )
        self.coordinator.add_run_finished_listener(self._on_run_finished)
        self.coordinator.add_attempt_started_listener(self._on_attempt_started)

    def run_node(self, run_id: str, task_id: str) -> NodeOutcome:
        started = time.perf_counter()
        outcome = self.coordinator.run_node(run_id, task_id)
        if self.metrics is not None and outcome.kind in ("completed", "failed", "retry"):
            run = self.store.get_run(run_id)
            workflow = run.workflow_name if run else "?"
            self.metrics.task_finished(workflow, task_id, outcome.kind, time.perf_counter() - started)
        return outcome

    def _on_attempt_started(self, run_id: str, task_id: str, started: StartedAttempt) -> None:
        if self.metrics is not None and started.triggered_at:
            from datetime import UTC, datetime

            try:
                fired = datetime.fromisoformat(started.triggered_at)
                self.metrics.fire_to_start((datetime.now(UTC) - fired).total_seconds())
            except ValueError:
                pass

    def _on_run_finished(self, ended: RunEnd) -> None:
        if self.metrics is not None:
            run = self.store.get_run(ended.run_id)
            self.metrics.run_finished(run.workflow_name if run else "?", str(ended.status))
        if self.locks is not None and ended.lock_token and ended.trigger_name and ended.context_hash:
            try:
                self.locks.release(self.locks.dedup_key(ended.trigger_name, ended.context_hash), ended.lock_token)
            except Exception as exc:  # the lock expires on its own; SQL already freed the key
                log.warning("could not release dedup lock of run %s: %s", ended.run_id, exc)


def worker_context(app: Celery) -> WorkerContext:
    """The context of the current process, created on first use."""
    pid = os.getpid()
    ctx = _contexts.get(pid)
    if ctx is None:
        with _lock:
            ctx = _contexts.get(pid)
            if ctx is None:
                settings = getattr(app, "cloacina_settings", None) or CloacinaSettings()
                ctx = WorkerContext(settings, metrics=getattr(app, "cloacina_metrics", None))
                _contexts[pid] = ctx
    return ctx
