"""Control app: runs that the run-control tests cancel and re-execute on real worker processes.

Every task body counts its executions in Redis (the deployment's, ``CLOACINA_BROKER_URL``), under ``ctl:``:

- ``control_long``: ``slow -> after``. ``slow`` counts ``ctl:started:slow``, then waits (polling every 50 ms, at
  most 120 s) until the key ``ctl:release`` exists, and counts ``ctl:ended:slow``; ``after`` counts ``ctl:count:after``.
- ``control_diamond``: ``a -> (b, c) -> d``; each task counts ``ctl:count:<task>`` and ``b`` raises while
  ``ctl:fail:b`` exists.
- Trigger ``control_item`` (every 100 ms, ``allow_concurrent=False``): while ``ctl:armed`` exists it fires
  ``{"item": 1}`` into ``control_long``, so every fire has the same context hash.
"""

import os
import time

import redis

import cloacina as cloaca

_client = None


def _redis():
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["CLOACINA_BROKER_URL"])
    return _client


with cloaca.WorkflowBuilder("control_long"):

    @cloaca.task(id="slow", retry_attempts=1)
    def slow(ctx):
        _redis().incr("ctl:started:slow")
        deadline = time.monotonic() + 120
        while not _redis().exists("ctl:release") and time.monotonic() < deadline:
            time.sleep(0.05)  # the task "works" until the test releases it
        _redis().incr("ctl:ended:slow")
        ctx.set("slow", True)
        return ctx

    @cloaca.task(id="after", dependencies=["slow"], retry_attempts=1)
    def after(ctx):
        _redis().incr("ctl:count:after")
        return ctx


def _counted(task_id):
    def body(ctx):
        _redis().incr(f"ctl:count:{task_id}")
        if task_id == "b" and _redis().exists("ctl:fail:b"):
            raise RuntimeError("b fails on purpose")
        ctx.set(task_id, True)
        return ctx

    return body


with cloaca.WorkflowBuilder("control_diamond"):
    cloaca.task(id="a", retry_attempts=1)(_counted("a"))
    cloaca.task(id="b", dependencies=["a"], retry_attempts=1)(_counted("b"))
    cloaca.task(id="c", dependencies=["a"], retry_attempts=1)(_counted("c"))
    cloaca.task(id="d", dependencies=["b", "c"], retry_attempts=1)(_counted("d"))


@cloaca.trigger(workflow="control_long", name="control_item", poll_interval="100ms", allow_concurrent=False)
def control_item():
    if not _redis().exists("ctl:armed"):
        return cloaca.TriggerResult.skip()
    return cloaca.TriggerResult.fire({"item": 1})
