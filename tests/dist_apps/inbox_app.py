"""Inbox app: ``DIST_SHARDS`` triggers fire pending inbox items at random into a diamond workflow.

Trigger ``inbox_<n>`` polls every ``DIST_POLL_MS`` (default 100) and fires ``{"item": i}`` for a random item of
shard ``n`` that is not done yet, so most fires repeat an item whose run is still active (``allow_concurrent``
is False: those must be deduplicated). The workflow ``item_flow`` is ``fetch -> (left, right) -> finish``; every
task sleeps ``DIST_TASK_S`` (default 0.3; ``DIST_SLOW_TASK``/``DIST_SLOW_S`` make one task slower) and records
its execution (:mod:`tests.dist_apps.evidence`). ``finish`` marks the item done, then waits
``DIST_DONE_MARGIN_S`` (default 0.5) before the run may end: a poll that read the item as pending just before it
was marked done has fired long before the run's dedup key frees, so an item is never legitimately fired again.
"""

import os
import random
import time

import cloacina as cloaca
from tests.dist_apps import evidence

SHARDS = int(os.environ.get("DIST_SHARDS", "1"))
POLL_MS = int(os.environ.get("DIST_POLL_MS", "100"))
TASK_S = float(os.environ.get("DIST_TASK_S", "0.3"))
SLOW_TASK = os.environ.get("DIST_SLOW_TASK", "")
SLOW_S = float(os.environ.get("DIST_SLOW_S", "2"))
DONE_MARGIN_S = float(os.environ.get("DIST_DONE_MARGIN_S", "0.5"))


def _run_key(ctx):
    return f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}"


def _work(task_id, ctx):
    execution = evidence.execution_started(ctx.get("item"), _run_key(ctx), task_id)
    time.sleep(SLOW_S if task_id == SLOW_TASK else TASK_S)  # a task that takes time: the tests kill workers mid-task
    if task_id == "finish":
        evidence.mark_done(ctx.get("item"))
    evidence.execution_ended(execution)
    if task_id == "finish":
        time.sleep(DONE_MARGIN_S)  # the run stays active a while after its item is done (fires meanwhile are skips)
    return ctx


with cloaca.WorkflowBuilder("item_flow"):

    @cloaca.task(id="fetch", retry_attempts=0)
    def fetch(ctx):
        return _work("fetch", ctx)

    @cloaca.task(id="left", dependencies=["fetch"], retry_attempts=0)
    def left(ctx):
        return _work("left", ctx)

    @cloaca.task(id="right", dependencies=["fetch"], retry_attempts=0)
    def right(ctx):
        return _work("right", ctx)

    @cloaca.task(id="finish", dependencies=["left", "right"], retry_attempts=0)
    def finish(ctx):
        return _work("finish", ctx)


def _inbox_trigger(shard):
    def poll():
        evidence.poll_recorded(f"inbox_{shard}")
        pending = evidence.pending_items(shard)
        if not pending:
            return cloaca.TriggerResult.skip()
        return cloaca.TriggerResult.fire({"item": random.choice(pending)})

    cloaca.trigger(workflow="item_flow", name=f"inbox_{shard}", poll_interval=f"{POLL_MS}ms")(poll)


for _shard in range(SHARDS):
    _inbox_trigger(_shard)
