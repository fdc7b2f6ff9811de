"""Bare Celery baseline for bench/bench_distributed.py: the same 3-task chain, no cloacina involved.

Started as ``celery -A bench.apps.bare_celery_app:app worker`` with the same Redis and the same JSON,
acks_late, prefetch-1 settings cloacina uses, so the comparison is like for like.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER = os.environ["BENCH_BROKER_URL"]
app = Celery("bare_bench", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bare",
    broker_connection_retry_on_startup=True,
)


@app.task(name="bare.step")
def step(context: dict) -> dict:
    """A no-op task that passes its context on, like a cloacina task returning its context."""
    return context
