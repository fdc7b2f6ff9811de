"""Send-to-first-task-start probe shared by the benchmark's Celery and cloacina apps.

The client puts a fresh token under :data:`TOKEN_KEY` in the run's input and notes ``time.time()`` just before
sending; the first task of the run calls :func:`record_start`, which writes its own ``time.time()`` to the Redis
key ``bench:start:<token>`` (on ``$BENCH_REDIS_URL``, the benchmark's private Redis). Runs without a token (the
throughput phase) write nothing.
"""

from __future__ import annotations

import os
import time

import redis

TOKEN_KEY = "bench_latency_token"
KEY_PREFIX = "bench:start:"
_client: redis.Redis | None = None
_client_pid = 0


def key(token: str) -> str:
    return KEY_PREFIX + token


def _redis() -> redis.Redis:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client


def record_start(token: object) -> None:
    """Record that the first task of the run carrying ``token`` starts now (no-op without a token)."""
    if not token:
        return
    started = time.time()
    _redis().set(key(str(token)), repr(started), ex=600)
