"""Routing on Celery (DESIGN §4b): each task runs on a worker of its queue (:mod:`tests.dist_apps.queues_app`).

Two real workers: ``default`` consumes the deployment's queue (``cloacina``, no ``--queues``), ``heavy`` consumes
``--queues heavy``. 100 runs of three workflows (a chain ``light -> heavy -> light2``, a fan-out whose branch
``b2 -> c2`` is routed to ``heavy``, a workflow whose ``default_queue`` is ``heavy`` with one task back on the
deployment's queue).

The default worker starts alone: every run advances to its first ``heavy`` task and stops there, its message
waiting in Redis list ``heavy``, for longer than the sweeper's stale-run delay (the sweeper republishes the stuck
runs: recovery routes too). Nothing routed to ``heavy`` ran meanwhile, although the default worker was idle and
could have continued in-process. Then the heavy worker starts and every run completes; a task of the heavy stretch
that fails once is retried after a delay on ``heavy`` too. The tasks' own evidence
(process group of each execution) shows that every task ran on the worker its queue routes to, and
``task_attempts.worker`` names the very process that ran each attempt. (A republished run's task may run twice,
at-least-once as documented: both executions are on the right worker, and one attempt is recorded.)
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from tests.distributed_harness import Cluster, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

QUEUES_APP = "tests.dist_apps.queues_app"  # imported by the test only: its workflows stay out of other tests
HEAVY = "heavy"
RUNS = 100
TASKS_PER_RUN = {"route_chain": 3, "route_fan": 6, "route_default": 2}
# The tasks a run of each workflow waits at while no worker consumes "heavy", and those that ran before them.
HEAVY_HEADS = {"route_chain": ["heavy"], "route_fan": ["b2"], "route_default": ["h1"]}
BEFORE_HEAVY = {"route_chain": ["light"], "route_fan": ["a", "b1", "b3"], "route_default": []}


def _stuck_at_heavy(cluster: Cluster) -> bool:
    """Every run exists, ran what its deployment-queue worker could and waits at its heavy task (Ready)."""
    rows = cluster.sql(
        "SELECT r.workflow_name, t.task_id, t.status FROM task_runs t JOIN workflow_runs r ON r.id = t.run_id"
    )
    runs = int(cluster.sql("SELECT count(*) FROM workflow_runs")[0][0])
    if runs < RUNS:
        return False
    for workflow, task, status in rows:
        if task in HEAVY_HEADS[workflow] and status != "Ready":
            return False
        if task in BEFORE_HEAVY[workflow] and status != "Completed":
            return False
    return True


def _heavy_messages(cluster: Cluster) -> int:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return int(client.llen(HEAVY))  # type: ignore[arg-type]
    finally:
        client.close()


@pytest.mark.timeout(280)
def test_each_task_runs_on_a_worker_of_its_queue(cluster: Cluster) -> None:
    from tests.dist_apps.queues_app import DEFAULT, EXPECTED_QUEUE, RETRY_EVERY, WORKFLOWS

    default = cluster.services.worker("default", QUEUES_APP, concurrency=2)
    poller = cluster.services.poller("p1", QUEUES_APP)
    wait_for_worker_ready(default)
    wait_for_poller_ready(poller)
    cluster.add_items(RUNS, shards=len(WORKFLOWS))

    # Phase 1: no worker consumes "heavy". Every run stops at its heavy task, and stays there past a republish.
    wait_until(lambda: _stuck_at_heavy(cluster), 90, interval_s=0.2, message="every run to wait at its heavy task")
    wait_until(
        lambda: "run made no progress" in cluster.services.log_of("p1"),
        30,
        interval_s=0.2,
        message="the sweeper to republish a stuck run",
    )
    assert _stuck_at_heavy(cluster)
    assert not [e for e in cluster.executions() if EXPECTED_QUEUE[e.task] == HEAVY], "a heavy task ran on default"
    assert _heavy_messages(cluster) >= RUNS  # one per run at least (a republished run adds a duplicate)

    # Phase 2: a worker of "heavy" joins; every run completes.
    heavy = cluster.services.worker("heavy", QUEUES_APP, concurrency=2, queues=HEAVY)
    wait_for_worker_ready(heavy)

    def ended() -> bool:
        return cluster.active_runs() == 0 and sum(cluster.run_statuses().values()) == RUNS

    wait_until(ended, 150, interval_s=0.3, message=lambda: f"{RUNS} runs to end ({cluster.run_statuses()})")
    assert cluster.run_statuses() == {"Completed": RUNS}

    executions = cluster.executions()
    worker_of = {DEFAULT: default.pid, HEAVY: heavy.pid}  # each service leads its own process group
    misrouted = [e for e in executions if e.pgid != worker_of[EXPECTED_QUEUE[e.task]]]
    assert misrouted == [], misrouted[:5]
    assert all(e.ended_at is not None for e in executions)
    # Every task of every run ran. A republished run's message may be delivered twice and its task run twice
    # (at-least-once, DESIGN §4): only one of its finishes applies, so each task has exactly one attempt.
    pids: dict[tuple[str, str], set[int]] = {}
    for e in executions:
        pids.setdefault((e.run_key, e.task), set()).add(e.pid)
    runs_of = Counter(r["key"].split("_inbox|")[0] for r in cluster.runs())
    assert sum(runs_of.values()) == RUNS
    per_workflow = Counter(task.split(".")[0] for _, task in pids)
    assert per_workflow == Counter({wf: runs_of[wf] * TASKS_PER_RUN[wf] for wf in WORKFLOWS})

    retried = sum(1 for r in cluster.runs() if r["key"].startswith("route_fan") and r["item"] % RETRY_EVERY == 0)
    assert retried > 0
    # b2 -> c2 is one stretch of queue heavy: one message, so the process that ran b2 ran c2 right after it.
    fans = {key for key, task in pids if task == "route_fan.b2"}
    assert fans and all(pids[(k, "route_fan.b2")] & pids[(k, "route_fan.c2")] for k in fans)

    # task_attempts.worker is "<host>:<pid>" of the process that ran the attempt. One Completed attempt per task;
    # c2 of every RETRY_EVERY-th item failed once first, and its delayed retry stayed on "heavy" (checked above).
    # (A duplicate delivery's execution may win that first attempt instead: then no Failed attempt is recorded.)
    key_of = {r["id"]: r["key"] for r in cluster.runs()}
    attempts = cluster.attempts()
    statuses = Counter(a.status for a in attempts)
    assert statuses["Completed"] == len(pids) and 0 < statuses["Failed"] <= retried, statuses
    assert set(statuses) == {"Completed", "Failed"}
    assert {(a.task_id, a.attempt) for a in attempts if a.status == "Failed"} == {("c2", 1)}
    for run_id, task_id, _attempt, _status, worker in attempts:
        workflow = key_of[run_id].split("_inbox|")[0]
        ran_in = pids[(key_of[run_id], f"{workflow}.{task_id}")]
        assert worker is not None and int(worker.rsplit(":", 1)[1]) in ran_in, (run_id, task_id, worker, ran_in)
