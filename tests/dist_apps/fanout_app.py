"""Fan-out app: ``fan_flow`` is ``a -> (b1, b2, b3, b4) -> d``, fired once per ``ev_inbox`` item.

Trigger ``fan_inbox`` polls every ``DIST_POLL_MS`` (default 100) and fires ``{"item": i}`` for each item of
``ev_inbox`` exactly once (it claims the item in the statement that reads it). Every task sleeps ``DIST_TASK_S``
(default 0.05) and records its execution (:mod:`tests.dist_apps.evidence`).

``DIST_KILL_BEFORE_PUBLISH=1``: the first time a worker process is about to publish the tasks a finish made Ready,
it SIGKILLs itself instead (recorded as an execution of task ``killed-before-publish``, once per cluster): the
finish is committed, the messages of its successors were never sent. Only the worker's process is killed; its
message goes back to the queue (``reject_on_worker_lost``) and finds its task finished.
"""

import os
import signal
import time

import cloacina as cloaca
from cloacina.dispatch import celery_app
from tests.dist_apps import evidence

POLL_MS = int(os.environ.get("DIST_POLL_MS", "100"))
TASK_S = float(os.environ.get("DIST_TASK_S", "0.05"))
KILL_MARK = evidence.KILL_MARK


def _work(task_id, ctx):
    execution = evidence.execution_started(
        ctx.get("item"), f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}", task_id
    )
    time.sleep(TASK_S)
    evidence.execution_ended(execution)
    return ctx


with cloaca.WorkflowBuilder("fan_flow"):
    cloaca.task(id="a", retry_attempts=1)(lambda ctx: _work("a", ctx))
    for _n in range(1, 5):
        cloaca.task(id=f"b{_n}", dependencies=["a"], retry_attempts=1)(lambda ctx, _t=f"b{_n}": _work(_t, ctx))
    cloaca.task(id="d", dependencies=["b1", "b2", "b3", "b4"], retry_attempts=1)(lambda ctx: _work("d", ctx))


@cloaca.trigger(workflow="fan_flow", name="fan_inbox", poll_interval=f"{POLL_MS}ms")
def fan_inbox():
    # Claim one pending item and fire it: each item is fired once (done_at marks it as fired).
    item = evidence.claim_next_item()
    return cloaca.TriggerResult.skip() if item is None else cloaca.TriggerResult.fire({"item": item})


if os.environ.get("DIST_KILL_BEFORE_PUBLISH") == "1":
    _publish = celery_app.publish_stretches

    def _die_before_the_first_publish(*args, **kwargs):
        claimed = evidence._execute(
            "INSERT INTO ev_executions (item, run_key, task, pid, pgid, started_at) SELECT NULL, '', %s, %s, %s, %s"
            " WHERE NOT EXISTS (SELECT 1 FROM ev_executions WHERE task = %s) RETURNING id",
            (KILL_MARK, os.getpid(), os.getpgid(0), time.time(), KILL_MARK),
        )
        if claimed:
            os.kill(os.getpid(), signal.SIGKILL)
        return _publish(*args, **kwargs)

    celery_app.publish_stretches = _die_before_the_first_publish
