"""Limited app: ``limited_flow`` is ``first -> second`` with ``max_active_runs(2)``; runs are started by a client.

Each task sleeps ``DIST_TASK_S`` (default 0.25) and records its execution (:mod:`tests.dist_apps.evidence`) with
``item`` = the run's ``seq`` (its input). ``first`` also records, in its ``run_key``, how many runs created before
its own (a lower ``seq``) were still waiting for a slot when it started: ``older-waiting:<n>`` (first in, first out
means 0).

``DIST_NEVER_PROMOTE=1``: this process never promotes waiting runs after it ended a run, as if it always died
right after the end was committed (each skipped promotion is recorded as an execution of task ``promotion-skipped``):
only the sweeper (a poller started without this variable) can start the waiting runs.
"""

import os
import time

import cloacina as cloaca
from cloacina.execution.coordinator import RunCoordinator
from tests.dist_apps import evidence

LIMIT = 2
TASK_S = float(os.environ.get("DIST_TASK_S", "0.25"))
SKIPPED_MARK = "promotion-skipped"
OLDER_WAITING = (
    "SELECT count(*) FROM workflow_runs WHERE workflow_name = 'limited_flow' AND waiting_reason IS NOT NULL"
    " AND CAST(CAST(input_context AS json)->>'seq' AS integer) < %s"
)


def _work(task_id, ctx):
    seq = ctx.get("seq")
    run_key = "run"
    if task_id == "first":
        run_key = f"older-waiting:{evidence._execute(OLDER_WAITING, (seq,))[0][0]}"
    execution = evidence.execution_started(seq, run_key, task_id)
    time.sleep(TASK_S)
    evidence.execution_ended(execution)
    return ctx


with cloaca.WorkflowBuilder("limited_flow") as builder:
    builder.max_active_runs(LIMIT)
    cloaca.task(id="first", retry_attempts=1)(lambda ctx: _work("first", ctx))
    cloaca.task(id="second", dependencies=["first"], retry_attempts=1)(lambda ctx: _work("second", ctx))


if os.environ.get("DIST_NEVER_PROMOTE") == "1":

    def _skip_promotion(self, workflow):
        evidence._execute(
            "INSERT INTO ev_executions (item, run_key, task, pid, pgid, started_at, ended_at)"
            " VALUES (NULL, '', %s, %s, %s, %s, %s)",
            (SKIPPED_MARK, os.getpid(), os.getpgid(0), time.time(), time.time()),
        )
        return []

    RunCoordinator.promote_waiting = _skip_promotion
