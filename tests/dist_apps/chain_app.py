"""Chain app: one sequential stretch ``s1 -> s2 -> s3 -> s4`` (one canvas node when fusion is on), fired once.

Trigger ``chain_inbox`` polls every ``DIST_POLL_MS`` (default 100) and fires ``{"item": i}`` for each item of
``ev_inbox`` exactly once: it claims the item (sets ``done_at``, here meaning "fired") in the statement that reads
it, so a test that adds one item gets exactly one run, whatever happens to that run afterwards.

Every task sleeps ``DIST_TASK_S`` (default 0.1) and records its execution (:mod:`tests.dist_apps.evidence`).
``DIST_SLOW_TASK`` names a task whose first execution in a run sleeps ``DIST_SLOW_S`` (default 4) instead, and
``DIST_SLOW_CALLBACK`` a task whose ``on_success`` callback does so the first time it is called in a run: a test
kills the worker running it, and the re-execution on the other worker is quick. A callback records itself as an
execution of task ``on_success:<task>``. ``DIST_FAIL_ONCE`` names a task whose first execution in a run raises;
every task then gets two attempts, the second ``DIST_RETRY_DELAY_MS`` (default 1000) after the first, instead of one.
"""

import os
import time

import cloacina as cloaca
from tests.dist_apps import evidence

POLL_MS = int(os.environ.get("DIST_POLL_MS", "100"))
TASK_S = float(os.environ.get("DIST_TASK_S", "0.1"))
SLOW_TASK = os.environ.get("DIST_SLOW_TASK", "")
SLOW_CALLBACK = os.environ.get("DIST_SLOW_CALLBACK", "")
SLOW_S = float(os.environ.get("DIST_SLOW_S", "4"))
FAIL_ONCE = os.environ.get("DIST_FAIL_ONCE", "")
RETRY_DELAY_MS = int(os.environ.get("DIST_RETRY_DELAY_MS", "1000"))
# retry_attempts counts every attempt (cloaca): 2 means a second attempt after the delay.
RETRY = {"retry_attempts": 2, "retry_delay_ms": RETRY_DELAY_MS, "retry_jitter": False} if FAIL_ONCE else {}
RETRY = RETRY or {"retry_attempts": 1}
CALLBACK_PREFIX = "on_success:"


def _run_key(ctx):
    return f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}"


def _first_execution(run_key, name):
    rows = evidence._execute("SELECT count(*) FROM ev_executions WHERE run_key = %s AND task = %s", (run_key, name))
    return int(rows[0][0]) == 1  # our own row is already there


def _work(task_id, ctx):
    run_key = _run_key(ctx)
    execution = evidence.execution_started(ctx.get("item"), run_key, task_id)
    slow = task_id == SLOW_TASK and _first_execution(run_key, task_id)
    time.sleep(SLOW_S if slow else TASK_S)  # a task that takes time: the tests kill workers mid-task
    evidence.execution_ended(execution)
    if task_id == FAIL_ONCE and _first_execution(run_key, task_id):
        raise RuntimeError(f"{task_id} fails its first attempt")
    return ctx


def _on_success(task_id, ctx):
    run_key, name = _run_key(ctx), CALLBACK_PREFIX + task_id
    execution = evidence.execution_started(ctx.get("item"), run_key, name)
    if task_id == SLOW_CALLBACK and _first_execution(run_key, name):
        time.sleep(SLOW_S)  # a slow callback: the tests kill the worker while it runs
    evidence.execution_ended(execution)


with cloaca.WorkflowBuilder("chain_flow"):

    @cloaca.task(id="s1", on_success=_on_success, **RETRY)
    def s1(ctx):
        return _work("s1", ctx)

    @cloaca.task(id="s2", dependencies=["s1"], on_success=_on_success, **RETRY)
    def s2(ctx):
        return _work("s2", ctx)

    @cloaca.task(id="s3", dependencies=["s2"], on_success=_on_success, **RETRY)
    def s3(ctx):
        return _work("s3", ctx)

    @cloaca.task(id="s4", dependencies=["s3"], on_success=_on_success, **RETRY)
    def s4(ctx):
        return _work("s4", ctx)


@cloaca.trigger(workflow="chain_flow", name="chain_inbox", poll_interval=f"{POLL_MS}ms")
def chain_inbox():
    # Claim one pending item and fire it: each item is fired once (done_at marks it as fired).
    item = evidence.claim_next_item()
    return cloaca.TriggerResult.skip() if item is None else cloaca.TriggerResult.fire({"item": item})
