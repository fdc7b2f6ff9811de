"""The Celery application: configuration, the one task every canvas node runs, and canvas publishing.

Settings that make recovery work (DESIGN §4): JSON only; ``acks_late`` + ``reject_on_worker_lost`` so a message
is only acknowledged after its task finished; prefetch 1 so a worker never sits on messages another worker
could run; a visibility timeout above the longest task. We do not rely on that timeout for recovery: task
heartbeats in SQL and the sweeper re-run a killed worker's task within ``task_heartbeat_timeout_s``.

Users who start Celery themselves::

    CLOACINA_APP=myapp CLOACINA_BROKER_URL=redis://... celery -A cloacina.dispatch.celery_app:app worker
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery import Celery, Task
from sqlalchemy.exc import InterfaceError, OperationalError

from cloacina.dispatch.canvas import TASK_NAME
from cloacina.dispatch.result_backend import backend_url
from cloacina.settings import CloacinaSettings

log = logging.getLogger("cloacina.celery")
WAIT_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def celery_config(settings: CloacinaSettings) -> dict[str, Any]:
    """The Celery configuration cloacina needs, as a dict (tests and docs read it too)."""
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.broker_url,
        # Chords count their header results in Redis; nodes outside chord headers store no result at all.
        "result_backend": backend_url(settings.effective_redis_url or settings.broker_url or ""),
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
        "task_default_queue": settings.queue,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_time_limit": None,
        "enable_utc": True,
    }


_apps: dict[str, Celery] = {}


def create_app(settings: CloacinaSettings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the environment) with the node task registered; one per
    distinct configuration per process."""
    settings = settings or CloacinaSettings()
    key = settings.model_dump_json()
    if key not in _apps:
        _apps[key] = _build_app(settings)
    return _apps[key]


def run_canvas_node(self: Task, workflow: str, task: str, run_id: str) -> None:
    """Run one task of a workflow run (a canvas node). The SQL state machine decides what happens.

    One module-level function serves every app in the process; it finds its settings through ``self.app``.
    """
    from cloacina.dispatch.worker_context import worker_context

    task_id = task
    try:
        outcome = worker_context(self.app).run_node(run_id, task_id)
    except (OperationalError, InterfaceError, redis.ConnectionError) as exc:
        # The database (or Redis) is briefly unavailable: keep the message and try again with backoff.
        # If the attempt itself had started, its heartbeat stops and the sweeper gives it back.
        delay = min(30.0, 0.5 * 2 ** min(self.request.retries, 6))
        log.warning(
            "store unavailable running %s of run %s, retrying in %.1fs: %s",
            task_id,
            run_id,
            delay,
            str(exc).splitlines()[0],
            extra={"run_id": run_id, "task": task_id},
        )
        raise self.retry(countdown=delay) from None
    if outcome.kind == "retry":
        raise self.retry(countdown=outcome.delay_s)
    if outcome.kind == "waiting":  # a dependency is still running (duplicate delivery, recovery)
        step = WAIT_BACKOFF_S[min(self.request.retries, len(WAIT_BACKOFF_S) - 1)]
        raise self.retry(countdown=max(step, outcome.delay_s))
    return None


def _build_app(settings: CloacinaSettings) -> Celery:
    if not settings.broker_url:
        raise ValueError("CLOACINA_BROKER_URL is not set: distributed mode needs a Redis broker URL")
    app = Celery("cloacina", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.cloacina_settings = settings  # type: ignore[attr-defined]

    app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True, ignore_result=True)(run_canvas_node)
    return app


def _default_app() -> Celery | None:
    """The module-level ``app`` for ``celery -A cloacina.dispatch.celery_app:app``; imports $CLOACINA_APP."""
    settings = CloacinaSettings()
    if not settings.broker_url:
        return None
    user_app = os.environ.get("CLOACINA_APP")
    if user_app:
        from cloacina.app_loader import load_app

        load_app(user_app)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    if name == "app":
        value = _default_app()
        globals()["app"] = value
        return value
    raise AttributeError(name)
