"""``max_active_runs`` on Celery: real worker and poller processes (:mod:`tests.dist_apps.limited_app`), runs started
by a client that never imports the workflow's code (``DefaultRunner`` in broker mode: it finds ``limited_flow``,
and its limit, in the catalog the workers recorded).

- Twenty runs of a ``max_active_runs(2)`` workflow started together, on workers with four task slots between them:
  the tasks' own timestamps show never more than two runs at once, every run completes, and no run started while
  a run created before it was still waiting; the workers that ended runs promoted the waiting ones (their logs say
  so). A run cancelled while it waits never starts; the others all run.
- Workers that never promote (as if each died right after it ended a run): the poller's sweeper promotes every
  waiting run, still first in first out and at most two at once.
"""

from __future__ import annotations

import pytest

import cloacina as cloaca
from tests.distributed_harness import Cluster, Execution, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
LIMITED_APP = "tests.dist_apps.limited_app"  # never imported here: the client finds the workflow in the catalog
LIMIT = 2  # limited_app.LIMIT
SKIPPED_MARK = "promotion-skipped"  # limited_app.SKIPPED_MARK
RUNS = 20
WAIT_S = 120.0


def _start_services(cluster: Cluster, **worker_env: str) -> None:
    workers = [cluster.services.worker(f"w{n}", LIMITED_APP, concurrency=2, **worker_env) for n in (1, 2)]
    poller = cluster.services.poller("p1", LIMITED_APP)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)


def _client(cluster: Cluster) -> cloaca.DefaultRunner:
    return cloaca.DefaultRunner(cluster.direct_db_url, cloaca.DefaultRunnerConfig(broker_url=cluster.redis_url))


def _spans(executions: list[Execution]) -> dict[int, tuple[float, float]]:
    """seq -> (its first task's start, its last task's end)."""
    spans: dict[int, tuple[float, float]] = {}
    for e in executions:
        if e.item is None:
            continue
        assert e.ended_at is not None, f"an execution never ended: {e}"
        start, end = spans.get(e.item, (e.started_at, e.ended_at))
        spans[e.item] = (min(start, e.started_at), max(end, e.ended_at))
    return spans


def _most_at_once(spans: dict[int, tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    at_once = most = 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    return most


def _check_evidence(cluster: Cluster, seqs: set[int]) -> None:
    executions = [e for e in cluster.executions() if e.task != SKIPPED_MARK]
    assert sorted((e.item, e.task) for e in executions) == sorted((s, t) for s in seqs for t in ("first", "second"))
    assert _most_at_once(_spans(executions)) == LIMIT
    overtaking = [e for e in executions if e.task == "first" and e.run_key != "older-waiting:0"]
    assert overtaking == [], "a run started while a run created before it still waited"


@pytest.mark.timeout(240)
def test_twenty_runs_at_most_two_at_once_first_in_first_out(cluster: Cluster) -> None:
    _start_services(cluster)
    with _client(cluster) as client:
        handles = [client.execute_async("limited_flow", {"seq": seq}) for seq in range(RUNS)]
        cancelled = handles[9]
        waiting = client.runs.get_run(cancelled.run_id)
        assert waiting is not None and waiting.waiting_reason is not None, "run 9 waits for a slot"
        assert "max_active_runs=2 of workflow 'limited_flow' reached" in waiting.waiting_reason
        assert client.cancel_run(cancelled.run_id) is True
        results = {seq: h.wait(WAIT_S) for seq, h in enumerate(handles)}

    assert {seq: r.status for seq, r in results.items()} == {
        seq: "Cancelled" if seq == 9 else "Completed" for seq in range(RUNS)
    }
    _check_evidence(cluster, set(range(RUNS)) - {9})
    tasks = cluster.sql("SELECT status, skip_reason FROM task_runs WHERE run_id = :run", run=cancelled.run_id)
    assert tasks == [("Skipped", "run_cancelled")] * 2
    assert cluster.sql("SELECT count(*) FROM workflow_runs WHERE waiting_reason IS NOT NULL") == [(0,)]
    worker_logs = cluster.services.log_of("w1") + cluster.services.log_of("w2")
    assert "run promoted: a slot is free" in worker_logs, "the workers that ended runs promoted the waiting ones"


@pytest.mark.timeout(240)
def test_the_sweeper_promotes_when_the_workers_never_do(cluster: Cluster) -> None:
    _start_services(cluster, DIST_NEVER_PROMOTE="1")
    with _client(cluster) as client:
        handles = [client.execute_async("limited_flow", {"seq": seq}) for seq in range(6)]
        results = [h.wait(WAIT_S) for h in handles]

    assert [r.status for r in results] == ["Completed"] * 6
    skipped = [e for e in cluster.executions() if e.task == SKIPPED_MARK]
    assert len(skipped) == 6, "every run's end skipped its promotion"
    _check_evidence(cluster, set(range(6)))
    wait_until(
        lambda: "promoted by the sweeper" in cluster.services.log_of("p1"),
        10,
        message="the poller's log to say its sweeper promoted",
    )
