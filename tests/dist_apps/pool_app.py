"""Pool app: ``pool_flow`` is eight parallel tasks ``p1..p8`` in pool ``warehouse``, joined by ``d`` (no pool),
fired once per ``ev_inbox`` item.

Trigger ``pool_inbox`` polls every ``DIST_POLL_MS`` (default 50) and fires ``{"item": i}`` for each item of
``ev_inbox`` exactly once. Every pool task sleeps ``DIST_TASK_S`` (default 0.05; a worker started with a larger
value holds its slots that long) and records its execution (:mod:`tests.dist_apps.evidence`), which is the
evidence of how many ran at once. The pool itself is created by the test (``cloacina pools set``).
"""

import os
import time

import cloacina as cloaca
from tests.dist_apps import evidence

POLL_MS = int(os.environ.get("DIST_POLL_MS", "50"))
TASK_S = float(os.environ.get("DIST_TASK_S", "0.05"))
POOL_TASKS = [f"p{n}" for n in range(1, 9)]


def _work(task_id, ctx, seconds):
    execution = evidence.execution_started(
        ctx.get("item"), f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}", task_id
    )
    time.sleep(seconds)
    evidence.execution_ended(execution)
    return ctx


with cloaca.WorkflowBuilder("pool_flow"):
    for _t in POOL_TASKS:
        cloaca.task(id=_t, pool="warehouse", retry_attempts=1)(lambda ctx, _t=_t: _work(_t, ctx, TASK_S))
    cloaca.task(id="d", dependencies=POOL_TASKS, retry_attempts=1)(lambda ctx: _work("d", ctx, 0))


@cloaca.trigger(workflow="pool_flow", name="pool_inbox", poll_interval=f"{POLL_MS}ms")
def pool_inbox():
    rows = evidence._execute(
        "UPDATE ev_inbox SET done_at = %s WHERE item = (SELECT min(item) FROM ev_inbox WHERE done_at IS NULL)"
        " AND done_at IS NULL RETURNING item",
        (time.time(),),
    )
    if not rows:
        return cloaca.TriggerResult.skip()
    return cloaca.TriggerResult.fire({"item": int(rows[0][0])})
