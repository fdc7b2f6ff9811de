"""The Celery application: configuration, and the one task every canvas node runs.

Settings that make recovery work (DESIGN §4): JSON only; ``acks_late`` + ``reject_on_worker_lost`` so a message
is only acknowledged after its task finished; prefetch 1 so a worker never sits on messages another worker
could run; a visibility timeout above the longest task. We do not rely on that timeout for recovery: task
heartbeats in SQL and the sweeper re-run a killed worker's task within ``task_heartbeat_timeout_s``.

A publishing process (poller, runner client) builds an app without a node runner; a worker process builds one
with a factory for its :class:`NodeRunner`, which runs in each prefork child, created there on first use
(children must not share the parent's database connections or Redis sockets).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import redis
from celery import Celery, Task
from sqlalchemy.exc import InterfaceError, OperationalError

from cloacina.backoff import Backoff
from cloacina.dispatch.canvas import TASK_NAME
from cloacina.dispatch.result_backend import backend_url
from cloacina.execution.coordinator import NodeOutcome

log = logging.getLogger("cloacina.celery")
WAITING_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)  # a duplicate delivery waits for its dependency
STORE_DOWN_BACKOFF = Backoff(initial_s=0.5, max_s=30.0)  # the database or Redis is briefly unreachable


@dataclass(frozen=True)
class CeleryOptions:
    """What the Celery app needs to know of a deployment (mapped from its settings by the wiring)."""

    broker_url: str
    result_url: str  # Redis where chords count their header results
    queue: str = "cloacina"
    visibility_timeout_s: int = 3600
    task_events: bool = True


class NodeRunner(Protocol):
    """Runs one delivery of a canvas node in a worker process."""

    def run_node(self, run_id: str, task_id: str) -> NodeOutcome: ...


def celery_config(options: CeleryOptions) -> dict[str, Any]:
    """The Celery configuration cloacina needs, as a dict (tests and docs read it too)."""
    transport = {"visibility_timeout": options.visibility_timeout_s}
    return {
        "broker_url": options.broker_url,
        # Chords count their header results in Redis; nodes outside chord headers store no result at all.
        "result_backend": backend_url(options.result_url),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "result_expires": 3600,
        "task_default_queue": options.queue,
        "task_send_sent_event": options.task_events,
        "worker_send_task_events": options.task_events,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_time_limit": None,
        "enable_utc": True,
    }


class PerProcess:
    """A value built by ``factory`` once in each process (after a prefork fork, in the child)."""

    def __init__(self, factory: Callable[[], NodeRunner]) -> None:
        self._factory = factory
        self._values: dict[int, NodeRunner] = {}
        self._lock = threading.Lock()

    def get(self) -> NodeRunner:
        pid = os.getpid()
        value = self._values.get(pid)
        if value is None:
            with self._lock:
                value = self._values.get(pid)
                if value is None:
                    value = self._values[pid] = self._factory()
        return value


class NodeTask(Task[Any, None]):
    """Base class of the canvas-node task. Each app registers a subclass of its own that carries its runner."""

    node_runner: ClassVar[PerProcess | None] = None


def run_canvas_node(
    self: NodeTask, workflow: str, run_id: str, tasks: list[str] | None = None, task: str | None = None
) -> None:
    """Run a stretch of a workflow run (a canvas node): its tasks back to back, each through the SQL state
    machine, which decides what happens to it.

    A task that must wait (a retry delay, a dependency still running elsewhere, the store briefly unreachable)
    hands itself and the rest of the stretch back to Celery with a countdown: a worker slot never sleeps.
    ``task`` is the single-task form of messages published before stretches existed.
    """
    if self.node_runner is None:
        raise RuntimeError("this Celery app publishes runs only; start a worker with `cloacina worker`")
    runner = self.node_runner.get()
    task_ids = list(tasks) if tasks else [task] if task else []
    for index, task_id in enumerate(task_ids):
        rest = {"workflow": workflow, "run_id": run_id, "tasks": task_ids[index:]}
        try:
            outcome = runner.run_node(run_id, task_id)
        except (OperationalError, InterfaceError, redis.ConnectionError) as exc:
            # The database (or Redis) is briefly unavailable: keep the message and try again with backoff.
            # If the attempt itself had started, its heartbeat stops and the sweeper gives it back.
            delay = STORE_DOWN_BACKOFF.delay(self.request.retries)
            log.warning(
                "store unavailable running %s of run %s, retrying in %.1fs: %s",
                task_id,
                run_id,
                delay,
                str(exc).splitlines()[0],
                extra={"run_id": run_id, "task": task_id},
            )
            raise self.retry(kwargs=rest, countdown=delay) from None
        if outcome.kind == "retry":
            raise self.retry(kwargs=rest, countdown=outcome.delay_s)
        if outcome.kind == "waiting":  # a dependency is still running (duplicate delivery, recovery)
            delay = max(WAITING_BACKOFF.delay(self.request.retries), outcome.delay_s)
            raise self.retry(kwargs=rest, countdown=delay)
    return None


_publisher_apps: dict[CeleryOptions, Celery] = {}
_publisher_apps_lock = threading.Lock()


def publisher_app(options: CeleryOptions) -> Celery:
    """The app a process publishes with: one per distinct configuration per process (it holds broker pools)."""
    with _publisher_apps_lock:
        app = _publisher_apps.get(options)
        if app is None:
            app = _publisher_apps[options] = create_app(options)
        return app


def create_app(options: CeleryOptions, node_runner: Callable[[], NodeRunner] | None = None) -> Celery:
    """A Celery app for ``options`` with the node task registered; ``node_runner`` builds the runner of each
    worker process (``None`` for an app that only publishes)."""
    if not options.broker_url:
        raise ValueError("CLOACINA_BROKER_URL is not set: distributed mode needs a Redis broker URL")
    app = Celery("cloacina", set_as_current=False)
    app.conf.update(celery_config(options))
    runner = PerProcess(node_runner) if node_runner is not None else None
    base = type("CloacinaNodeTask", (NodeTask,), {"node_runner": runner})
    app.task(name=TASK_NAME, base=base, bind=True, max_retries=None, acks_late=True, ignore_result=True)(
        run_canvas_node
    )
    return app


def ping_workers(options: CeleryOptions, timeout_s: float) -> list[str]:
    """Names of the workers that answer a ``ping`` broadcast within ``timeout_s`` (raises if the broker is down)."""
    app = create_app(options)
    app.conf.broker_connection_timeout = timeout_s
    app.conf.broker_connection_max_retries = 0
    try:
        replies = app.control.ping(timeout=timeout_s) or []
        return sorted(name for reply in replies for name in reply)
    finally:
        app.close()
