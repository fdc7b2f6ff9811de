"""The worker service: a Celery prefork worker whose children run canvas nodes through the shared engine.

Each prefork child builds its own :class:`WorkerNodeRunner` (from the deployment's settings) on the first node
it runs: children must not share the parent's database connections or Redis sockets. Runs started from a
``.cloacina`` package carry its fingerprint; the child's package loader fetches that archive from the registry
(the same database), validates it again and imports it in isolation, so a worker runs packages it was never
given with ``--app``. Archives are extracted under ``$CLOACINA_PACKAGE_CACHE`` (else a private temporary
directory).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from cloacina.deployment.settings import CloacinaSettings
from cloacina.deployment.wiring import Deployment, celery_options
from cloacina.dispatch.celery_services import run_worker as run_celery_worker
from cloacina.execution.coordinator import NodeOutcome
from cloacina.observability.metrics import Metrics
from cloacina.store.runs import ContinueWith, RunEnd, StartedAttempt
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.worker")


class WorkerNodeRunner:
    """Runs canvas nodes in one worker process: the coordinator, plus metrics and dedup-lock release."""

    def __init__(self, settings: CloacinaSettings, metrics: Metrics | None = None) -> None:
        self.deployment = Deployment(settings, role="worker")
        self.metrics = metrics
        self.coordinator = self.deployment.coordinator
        self.coordinator.add_run_finished_listener(self._on_run_finished)
        self.coordinator.add_attempt_started_listener(self._on_attempt_started)
        self._attempt = threading.local()  # the workflow of the attempt this thread runs (metrics labels)

    def run_node(
        self,
        run_id: str,
        task_id: str,
        *,
        record_start: bool = False,
        continue_with: ContinueWith | None = None,
        started: StartedAttempt | None = None,
    ) -> NodeOutcome:
        began = time.perf_counter()
        self._attempt.workflow = None
        outcome = self.coordinator.run_node(
            run_id, task_id, record_start=record_start, continue_with=continue_with, started=started
        )
        if self.metrics is not None and outcome.kind in ("completed", "failed", "retry"):
            workflow = self._workflow_of(run_id)
            self.metrics.task_finished(workflow, task_id, outcome.kind, time.perf_counter() - began)
        return outcome

    def _workflow_of(self, run_id: str) -> str:
        """The workflow of this thread's attempt (known from its start, no query), else read from the run."""
        known: str | None = getattr(self._attempt, "workflow", None)
        if known is not None:
            return known
        run = self.deployment.runs.get_run(run_id)
        return run.workflow_name if run else "?"

    def _on_attempt_started(self, run_id: str, task_id: str, started: StartedAttempt) -> None:
        self._attempt.workflow = started.workflow_name
        if self.metrics is not None and started.triggered_at:
            try:
                fired = datetime.fromisoformat(started.triggered_at)
            except ValueError:
                return
            self.metrics.fire_to_start((utcnow() - fired).total_seconds())

    def _on_run_finished(self, ended: RunEnd) -> None:
        if self.metrics is not None:
            self.metrics.run_finished(self._workflow_of(ended.run_id), str(ended.status))
        if not self.deployment.settings.effective_redis_url:
            return
        if ended.lock_token and ended.trigger_name and ended.context_hash:
            locks = self.deployment.locks
            try:
                locks.release(locks.dedup_key(ended.trigger_name, ended.context_hash), ended.lock_token)
            except Exception as exc:  # the lock expires on its own; SQL already freed the key
                log.warning("could not release dedup lock of run %s: %s", ended.run_id, exc)
        self.deployment.run_notices.publish(ended.run_id)  # wakes a client waiting for this run


def node_runner_factory(settings: CloacinaSettings, metrics: Metrics | None = None) -> Callable[[], WorkerNodeRunner]:
    """What each worker process calls once to build its node runner."""
    return lambda: WorkerNodeRunner(settings, metrics)


def worker_argv(
    settings: CloacinaSettings,
    *,
    pool: str = "prefork",
    queues: str | None = None,
    hostname: str | None = None,
    concurrency: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``celery worker`` arguments of a cloacina worker (``extra`` passed on as given)."""
    argv = [
        f"--pool={pool}",
        f"--queues={queues or settings.queue}",
        f"--hostname={hostname or f'cloacina@{socket.gethostname()}-{os.getpid()}'}",
        f"--loglevel={settings.service_log_level('worker')}",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    return [*argv, *extra]


def record_workflows(settings: CloacinaSettings) -> None:
    """Record the workflows this worker's code declared in the workflow catalog (once, before any child forks:
    the connection is closed again, children open their own)."""
    deployment = Deployment(settings, role="worker")
    try:
        deployment.workflows.record_registered()
    finally:
        deployment.close()


def run_worker(settings: CloacinaSettings, argv: Sequence[str]) -> None:
    """Record the app's workflows in the catalog, then run the worker until Celery stops it. With ``metrics_port``
    set, serve the summed metrics of every child on ``/metrics`` (prometheus multiprocess mode, switched on before
    any child is forked)."""
    record_workflows(settings)
    metrics = None
    on_child_exit = None
    probes = None
    if settings.metrics_port is not None:
        from cloacina.observability.http import start_http_server
        from cloacina.observability.metrics import enable_multiprocess, mark_process_dead, multiprocess_registry
        from cloacina.services.health import worker_probes

        enable_multiprocess()  # before any metric exists and before Celery forks its children
        metrics = Metrics()
        probes = worker_probes(settings)  # this worker's own /livez and /readyz (no broadcast)
        probes.start()
        start_http_server(settings.metrics_port, multiprocess_registry(), probes.ready, live=probes.live)
        on_child_exit = mark_process_dead
    try:
        run_celery_worker(
            celery_options(settings), node_runner_factory(settings, metrics), argv, on_child_exit=on_child_exit
        )
    finally:
        if probes is not None:
            probes.stop()
