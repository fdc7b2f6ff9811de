"""Routing app: tasks on two queues, the deployment's (``cloacina``) and ``heavy``.

- ``route_chain``: ``light -> heavy -> light2`` (``heavy`` routed by ``@task(queue="heavy")``).
- ``route_fan``: ``a -> (b1, b2 -> c2, b3) -> d`` where the branch ``b2 -> c2`` is routed to ``heavy``.
- ``route_default``: ``h1 -> l1`` with ``builder.default_queue("heavy")``; ``l1`` names the deployment's queue.

Trigger ``<workflow>_inbox`` fires ``{"item": i}`` for each ``ev_inbox`` item of its shard (0, 1, 2 in the order
above) exactly once; polls every ``DIST_POLL_MS`` (default 50). Every task sleeps ``DIST_TASK_S`` (default 0.01) and
records its execution as ``<workflow>.<task>`` (:mod:`tests.dist_apps.evidence`). :data:`EXPECTED_QUEUE` says which
queue each recorded name is routed to.

``route_fan.c2`` (the second task of the heavy stretch ``b2 -> c2``) fails its first attempt for every item divisible
by :data:`RETRY_EVERY` (after recording its execution as ended), then succeeds after a 100 ms retry delay: the rest of
the stretch goes back to Celery with a countdown, to the queue its message came from.
"""

import os
import time

import cloacina as cloaca
from tests.dist_apps import evidence

POLL_MS = int(os.environ.get("DIST_POLL_MS", "50"))
TASK_S = float(os.environ.get("DIST_TASK_S", "0.01"))
DEFAULT, HEAVY = "cloacina", "heavy"
EXPECTED_QUEUE = {
    "route_chain.light": DEFAULT,
    "route_chain.heavy": HEAVY,
    "route_chain.light2": DEFAULT,
    "route_fan.a": DEFAULT,
    "route_fan.b1": DEFAULT,
    "route_fan.b2": HEAVY,
    "route_fan.c2": HEAVY,
    "route_fan.b3": DEFAULT,
    "route_fan.d": DEFAULT,
    "route_default.h1": HEAVY,
    "route_default.l1": DEFAULT,
}
WORKFLOWS = ("route_chain", "route_fan", "route_default")
RETRY_EVERY = 4
RETRIED = "route_fan.c2"


def _task(workflow, task_id, dependencies=(), queue=None):
    name = f"{workflow}.{task_id}"

    def work(ctx):
        run_key = f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}"
        execution = evidence.execution_started(ctx.get("item"), run_key, name)
        time.sleep(TASK_S)
        evidence.execution_ended(execution)
        if name == RETRIED and ctx.get("item") % RETRY_EVERY == 0:
            sql = "SELECT count(*) FROM ev_executions WHERE run_key = %s AND task = %s"
            if evidence._execute(sql, (run_key, name))[0][0] == 1:  # its first execution
                raise ConnectionError("first attempt fails on purpose")
        return ctx

    retry = {"retry_attempts": 2, "retry_delay_ms": 100, "retry_jitter": False} if name == RETRIED else {}
    cloaca.task(id=task_id, dependencies=list(dependencies), queue=queue, **{"retry_attempts": 1, **retry})(work)


with cloaca.WorkflowBuilder("route_chain"):
    _task("route_chain", "light")
    _task("route_chain", "heavy", ["light"], queue=HEAVY)
    _task("route_chain", "light2", ["heavy"])

with cloaca.WorkflowBuilder("route_fan"):
    _task("route_fan", "a")
    _task("route_fan", "b1", ["a"])
    _task("route_fan", "b2", ["a"], queue=HEAVY)
    _task("route_fan", "c2", ["b2"], queue=HEAVY)
    _task("route_fan", "b3", ["a"])
    _task("route_fan", "d", ["b1", "c2", "b3"])

with cloaca.WorkflowBuilder("route_default") as _builder:
    _builder.default_queue(HEAVY)
    _task("route_default", "h1")
    _task("route_default", "l1", ["h1"], queue=DEFAULT)


def _inbox(workflow, shard):
    def poll():
        rows = evidence._execute(
            "UPDATE ev_inbox SET done_at = %s WHERE item = (SELECT min(item) FROM ev_inbox WHERE done_at IS NULL"
            " AND shard = %s) AND done_at IS NULL RETURNING item",
            (time.time(), shard),
        )
        if not rows:
            return cloaca.TriggerResult.skip()
        return cloaca.TriggerResult.fire({"item": int(rows[0][0])})

    poll.__name__ = f"{workflow}_inbox"
    cloaca.trigger(workflow=workflow, name=f"{workflow}_inbox", poll_interval=f"{POLL_MS}ms")(poll)


for _shard, _workflow in enumerate(WORKFLOWS):
    _inbox(_workflow, _shard)
