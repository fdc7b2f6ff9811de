"""Plain Celery baselines for bench/bench_distributed.py: the same workflow shapes, no cloacina involved.

Two flavours share the task code: results in Redis (``celery``) and Celery's SQLAlchemy result backend on
PostgreSQL (``celery_db``, a durable record of every task). Both use the settings cloacina's workers use: JSON
only, ``acks_late`` + ``reject_on_worker_lost``, prefetch 1, the same visibility timeout.

Workers are started as ``celery -A bench.apps.bare_celery_app:app worker -Q <queue>`` with the environment
``BENCH_BROKER_URL``, ``BENCH_RESULT_URL`` (``redis://...`` or ``db+postgresql+psycopg://...``),
``BENCH_QUEUE``, ``BENCH_DB_POOL``, ``BENCH_TASK_EVENTS`` and, for the latency probe, ``BENCH_REDIS_URL``. The
client builds its own app with :func:`make_app` and the same arguments.

Shapes (the client composes them from the three tasks):

- ``chain3``: ``chain(first.s(ctx), step.s(), step.s())``
- ``single``: ``first.s(ctx)``
- ``diamond``: ``chain(first.s(ctx), chord([step.s()] * 4, join.s()))``
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

from bench.apps import latency_probe, sql_counter

TASK_NAMES = ("first", "step", "join")


def first(ctx: dict[str, Any]) -> dict[str, Any]:
    """The first task of every shape: records its start time when the context carries a latency token."""
    latency_probe.record_start(ctx.get(latency_probe.TOKEN_KEY))
    return ctx


def step(ctx: dict[str, Any]) -> dict[str, Any]:
    """A no-op task that passes its input on, like a cloacina task returning its context."""
    return ctx


def join(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fan-in of the diamond: merges its inputs, like cloacina merging the contexts of dependencies."""
    merged: dict[str, Any] = {}
    for result in results:
        merged.update(result)
    return merged


def make_app(
    broker_url: str, result_url: str | None, queue: str, db_pool: int = 2, task_events: bool = False
) -> tuple[Celery, dict[str, Task]]:
    """A Celery app with the benchmark's tasks registered, and those tasks by name. ``task_events`` as cloacina's
    ``task_events`` setting: sent events from the client, task events from the workers."""
    app = Celery(f"bench_{queue}", broker=broker_url, backend=result_url, set_as_current=False)
    transport = {"visibility_timeout": 3600}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=3600,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        task_send_sent_event=task_events,
        worker_send_task_events=task_events,
    )
    if result_url and result_url.startswith("db+"):
        app.conf.update(
            # Every worker process (Celery pools only in forked children) keeps a small pool, as cloacina's do.
            database_engine_options={"pool_size": db_pool, "max_overflow": db_pool, "pool_recycle": 1800},
            database_table_names={"task": "bench_celery_taskmeta", "group": "bench_celery_groupmeta"},
            # Name, args, worker and queue of each task stored with its result: closer to cloacina's task rows.
            result_extended=True,
        )
    tasks = {name: app.task(name=f"bench.{name}")(globals()[name]) for name in TASK_NAMES}
    return app, tasks


sql_counter.install_from_env()
app, _tasks = make_app(
    os.environ.get("BENCH_BROKER_URL", "memory://"),
    os.environ.get("BENCH_RESULT_URL"),
    os.environ.get("BENCH_QUEUE", "bench_celery"),
    int(os.environ.get("BENCH_DB_POOL", "2")),
    bool(os.environ.get("BENCH_TASK_EVENTS")),
)
