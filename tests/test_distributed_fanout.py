"""Fan-out and fan-in on Celery without chords: ``a -> (b1, b2, b3, b4) -> d`` (:mod:`tests.dist_apps.fanout_app`).

A finish returns the tasks it made Ready; the finishing worker runs one of them next and publishes the others; the
last branch to finish readies the join, counted in SQL. Nothing goes through Celery's result backend: no
``celery-task-meta-*`` or chord counter key ever appears in Redis. A worker process killed after a finish was
committed and before it published the Ready tasks loses nothing: the sweeper republishes them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from tests.dist_apps.evidence import KILL_MARK  # not fanout_app: importing it would register its workflows
from tests.distributed_harness import Cluster, Execution, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FANOUT_APP = "tests.dist_apps.fanout_app"
BRANCHES = ["b1", "b2", "b3", "b4"]


def _start(cluster: Cluster, items: int, **env: str) -> None:
    workers = [cluster.services.worker(f"w{n}", FANOUT_APP, concurrency=2, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", FANOUT_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    cluster.add_items(items)


def _wait_all_completed(cluster: Cluster, runs: int, timeout_s: float = 60) -> None:
    def ended() -> bool:
        statuses = cluster.run_statuses()
        return sum(statuses.values()) == runs and cluster.active_runs() == 0

    wait_until(ended, timeout_s, interval_s=0.2, message=lambda: f"{runs} runs to end ({cluster.run_statuses()})")
    assert cluster.run_statuses() == {"Completed": runs}


def _task_executions(cluster: Cluster) -> list[Execution]:
    return [e for e in cluster.executions() if e.task != KILL_MARK]


def _result_keys(cluster: Cluster) -> list[bytes]:
    client = redis.Redis.from_url(cluster.redis_url)
    try:
        return [k for pattern in ("celery-task-meta-*", "*chord*") for k in client.scan_iter(match=pattern)]
    finally:
        client.close()


@pytest.mark.timeout(150)
def test_fan_out_and_fan_in_run_each_task_once_with_no_chord(cluster: Cluster) -> None:
    _start(cluster, items=8)
    _wait_all_completed(cluster, 8)

    executions = _task_executions(cluster)
    per_run: dict[str, list[Execution]] = {}
    for e in executions:
        per_run.setdefault(e.run_key, []).append(e)
    assert len(per_run) == 8
    for run_key, tasks in per_run.items():
        assert Counter(e.task for e in tasks) == Counter({"a": 1, "b1": 1, "b2": 1, "b3": 1, "b4": 1, "d": 1}), run_key
        by_name = {e.task: e for e in tasks}
        for b in BRANCHES:  # every branch after the root, the join after every branch
            assert by_name[b].started_at >= by_name["a"].ended_at
            assert by_name["d"].started_at >= by_name[b].ended_at
    assert {a.status for a in cluster.attempts()} == {"Completed"}
    assert len(cluster.attempts()) == 8 * 6
    assert _result_keys(cluster) == []  # no result backend on the path: no task results, no chord counters


@pytest.mark.timeout(150)
def test_worker_killed_between_its_finish_and_its_publish_loses_nothing(cluster: Cluster) -> None:
    _start(cluster, items=1, DIST_KILL_BEFORE_PUBLISH="1")
    _wait_all_completed(cluster, 1)

    assert [e.task for e in cluster.executions() if e.task == KILL_MARK] == [KILL_MARK], "the kill happened"
    executions = _task_executions(cluster)
    assert Counter(e.task for e in executions) == Counter({"a": 1, "b1": 1, "b2": 1, "b3": 1, "b4": 1, "d": 1})
    # a's finish was committed before the kill: a never ran again. The same statement started b1 for the dying
    # worker to run next: that attempt is lost (b1 had not run) and b1 runs once, elsewhere. b2..b4, made Ready but
    # never published, were republished with the stalled run.
    attempts: dict[str, list[str]] = {}
    for attempt in cluster.attempts():
        attempts.setdefault(attempt.task_id, []).append(attempt.status)
    assert attempts == {"a": ["Completed"], "b1": ["Lost", "Completed"], "b2": ["Completed"], "b3": ["Completed"],
                        "b4": ["Completed"], "d": ["Completed"]}  # fmt: skip
    poller_log = cluster.services.log_of("p1")
    assert "attempt lost with its worker" in poller_log
