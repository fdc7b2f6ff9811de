"""Plain Celery baselines for bench/bench_distributed.py: the same workflow shapes, no cloacina involved.

Two flavours share the task code: results in Redis (``celery``) and Celery's SQLAlchemy result backend on
PostgreSQL (``celery_db``, a durable record of every task, pooled in every worker process, ``result_extended``).

Two profiles (``BENCH_PROFILE``):

- ``defaults``: the app as a Celery user writes it: JSON (Celery's default, spelled out), ``task_acks_late``,
  and nothing else that changes how work flows: Celery's default prefetch (``worker_prefetch_multiplier`` 4), no
  ``task_reject_on_worker_lost``, task events off (Celery's default), Celery's own logging set-up. Only
  ``task_default_queue`` (one queue name per system) and ``broker_connection_retry_on_startup`` (silences
  Celery's start-up deprecation warning) are set besides, and neither changes the hot path.
- ``tuned``: the settings cloacina's workers use: ``acks_late`` + ``reject_on_worker_lost``, prefetch 1, the same
  visibility timeout, task events as ``BENCH_TASK_EVENTS`` says (sent events from the client, task events from
  the workers).

Workers are started as ``celery -A bench.apps.bare_celery_app:app worker -c N -n <name>@%h`` with the environment
``BENCH_BROKER_URL``, ``BENCH_RESULT_URL`` (``redis://...`` or ``db+postgresql+psycopg://...``),
``BENCH_QUEUE``, ``BENCH_DB_POOL``, ``BENCH_PROFILE``, ``BENCH_TASK_EVENTS`` and, for the latency probe,
``BENCH_REDIS_URL``. The client builds its own app with :func:`make_app` and the same arguments.

Shapes (the client composes them from the three tasks):

- ``chain3``: ``chain(first.s(ctx), step.s(), step.s())``
- ``chain10``: ``chain(first.s(ctx), *[step.s()] * 9)``
- ``single``: ``first.s(ctx)``
- ``diamond``: ``chain(first.s(ctx), chord([step.s()] * 4, join.s()))``
- ``fanout16``: ``chain(first.s(ctx), chord([step.s()] * 16, join.s()))``
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

from bench.apps import latency_probe, sql_counter

TASK_NAMES = ("first", "step", "join")
PROFILES = ("defaults", "tuned")


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
    broker_url: str,
    result_url: str | None,
    queue: str,
    db_pool: int = 2,
    *,
    profile: str = "defaults",
    task_events: bool = False,
) -> tuple[Celery, dict[str, Task]]:
    """A Celery app with the benchmark's tasks registered, and those tasks by name. ``profile`` is ``defaults`` or
    ``tuned`` (see the module docstring); ``task_events`` only counts in ``tuned``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    app = Celery(f"bench_{queue}", broker=broker_url, backend=result_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    if profile == "tuned":
        transport = {"visibility_timeout": 3600}
        app.conf.update(
            result_accept_content=["json"],
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            broker_transport_options=transport,
            result_backend_transport_options=transport,
            result_expires=3600,
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
    profile=os.environ.get("BENCH_PROFILE", "defaults"),
    task_events=bool(os.environ.get("BENCH_TASK_EVENTS")),
)
