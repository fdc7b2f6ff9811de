"""The Redis result backend, minus the per-task subscription publishers do not need.

Celery's Redis backend subscribes the *publishing* process to the result channel of every task it sends, so
that ``AsyncResult.get()`` can return quickly. Pollers and runner clients never wait on Celery results (SQL is
the source of truth), so for them that is one extra Redis round trip per task and a growing set of pub/sub
subscriptions. Results are still stored (chords count their header results in Redis).
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class QuietRedisBackend(RedisBackend):
    """RedisBackend that does not subscribe to the results of the tasks it publishes."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def backend_url(redis_url: str) -> str:
    """The ``result_backend`` setting selecting this backend for ``redis_url``."""
    return f"{__name__}:QuietRedisBackend+{redis_url}"
