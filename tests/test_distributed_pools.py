"""Task pools across a cluster (:mod:`tests.dist_apps.pool_app`): 50 runs of eight parallel tasks in a 2-slot pool,
on two workers of concurrency 4. The tasks' own start/end timestamps are the evidence that never more than two ran
at once; every run completes. Again with a worker SIGKILLed while it holds a slot: the slot stays taken until the
attempt's heartbeat lapses and the sweeper gives it back, then the task runs elsewhere and every run completes.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.distributed_harness import Cluster, Execution, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

POOL_TASKS = [f"p{n}" for n in range(1, 9)]  # pool_app's tasks (importing the app would register them here)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POOL_APP = "tests.dist_apps.pool_app"
SLOTS = 2


def _define_pool(cluster: Cluster, slots: int) -> None:
    setter = cluster.services.cloacina("pools-set", "pools", "set", "warehouse", "--slots", str(slots))
    assert setter.wait_exit(60) == 0, setter.log_text()


def _wait_all_completed(cluster: Cluster, runs: int, timeout_s: float) -> None:
    def ended() -> bool:
        return sum(cluster.run_statuses().values()) == runs and cluster.active_runs() == 0

    wait_until(ended, timeout_s, interval_s=0.5, message=lambda: f"{runs} runs to end ({cluster.run_statuses()})")
    assert cluster.run_statuses() == {"Completed": runs}


def _peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an interval ending exactly when another starts does not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def _pool_executions(cluster: Cluster) -> list[Execution]:
    return [e for e in cluster.executions() if e.task in POOL_TASKS]


@pytest.mark.timeout(300)
def test_a_two_slot_pool_runs_two_at_a_time_across_workers(cluster: Cluster) -> None:
    _define_pool(cluster, SLOTS)
    workers = [cluster.services.worker(f"w{n}", POOL_APP, concurrency=4) for n in (1, 2)]
    poller = cluster.services.poller("p1", POOL_APP)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    cluster.add_items(50)
    _wait_all_completed(cluster, 50, timeout_s=240)

    executions = _pool_executions(cluster)
    assert Counter(e.task for e in executions) == Counter({t: 50 for t in POOL_TASKS})  # each ran once
    assert all(e.ended_at is not None for e in executions)
    assert _peak([(e.started_at, e.ended_at or e.started_at) for e in executions]) <= SLOTS
    # Both workers ran pool tasks: the limit is the cluster's, not one worker's.
    assert len({e.pgid for e in executions}) == 2
    assert cluster.sql("SELECT slots FROM task_pools WHERE name = 'warehouse'")[0][0] == SLOTS
    used = cluster.sql("SELECT count(*) FROM task_runs WHERE pool = 'warehouse' AND status = 'Running'")[0][0]
    assert used == 0


@pytest.mark.timeout(300)
def test_a_slot_held_by_a_killed_worker_frees_when_its_heartbeat_lapses(cluster: Cluster) -> None:
    _define_pool(cluster, SLOTS)
    # w1's pool tasks hold their slot for 60 s: it is killed while holding one. w2's are quick.
    slow = cluster.services.worker("w1", POOL_APP, concurrency=4, DIST_TASK_S="60")
    wait_for_worker_ready(slow)
    poller = cluster.services.poller("p1", POOL_APP)
    wait_for_poller_ready(poller)
    cluster.add_items(10)
    slow_pgid = slow.pid  # leader of its process group
    wait_until(lambda: cluster.in_flight(slow_pgid, min_age_s=0.5), 60, message="w1 to hold a slot")
    fast = cluster.services.worker("w2", POOL_APP, concurrency=4)
    wait_for_worker_ready(fast)
    held = cluster.in_flight(slow_pgid)
    slow.kill()
    killed_at = slow.killed_at
    assert killed_at is not None and 1 <= len(held) <= SLOTS
    _wait_all_completed(cluster, 10, timeout_s=240)

    # A killed execution held its slot until the sweeper gave its attempt back (the attempt's Lost time).
    freed_at: dict[tuple[str, str], float] = {}
    lost = cluster.sql(
        "SELECT r.input_context, t.task_id, extract(epoch from a.completed_at) FROM task_attempts a "
        "JOIN task_runs t ON t.id = a.task_run_id JOIN workflow_runs r ON r.id = t.run_id WHERE a.status = 'Lost'"
    )
    for input_context, task_id, completed in lost:
        ctx = json.loads(input_context)
        freed_at[(f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}", task_id)] = float(completed)
    executions = _pool_executions(cluster)
    killed = [e for e in executions if e.pgid == slow_pgid]
    assert killed and all(e.ended_at is None for e in killed)  # w1 never finished a 60 s task
    assert {(e.run_key, e.task) for e in killed} <= set(freed_at), "every killed attempt was given back as Lost"
    for e in killed:  # freed after the heartbeat timeout (3 s), not at once
        assert freed_at[(e.run_key, e.task)] >= killed_at + 2.5
    intervals = [
        (e.started_at, e.ended_at if e.ended_at is not None else freed_at[(e.run_key, e.task)]) for e in executions
    ]
    assert _peak(intervals) <= SLOTS
    # Every pool task completed once on w2, the killed ones included.
    done = Counter(e.task for e in executions if e.ended_at is not None)
    assert done == Counter({t: 10 for t in POOL_TASKS})
