"""cloacina side of bench/bench_distributed.py: a 3-task no-op chain, and a trigger for fire-to-start latency.

The trigger fires only while the Redis key ``bench:fire`` exists (the benchmark sets it), each time with a new
context, and its first task records (triggered_at, started_at) in the Redis list ``bench:latency``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from datetime import UTC, datetime

import redis

import cloacina as cloaca

_redis = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
_counter = itertools.count()

with cloaca.WorkflowBuilder("bench_chain3"):
    for _name, _deps in (("a", []), ("b", ["a"]), ("c", ["b"])):
        cloaca.task(id=_name, dependencies=_deps, retry_attempts=0)(lambda ctx: ctx)

with cloaca.WorkflowBuilder("bench_latency"):

    @cloaca.task(id="first", retry_attempts=0)
    def first(ctx: cloaca.Context) -> cloaca.Context:
        started = datetime.now(UTC).timestamp()
        fired = datetime.fromisoformat(ctx.get("triggered_at")).timestamp()
        _redis.rpush("bench:latency", json.dumps([fired, started]))
        return ctx


@cloaca.trigger(workflow="bench_latency", poll_interval="100ms", allow_concurrent=True)
def bench_fire() -> cloaca.TriggerResult:
    if not _redis.exists("bench:fire"):
        return cloaca.TriggerResult.skip()
    return cloaca.TriggerResult.fire({"n": next(_counter), "pid": os.getpid(), "t": time.time()})
