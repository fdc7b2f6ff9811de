"""End to end on Celery: pollers and workers as separate processes on the local Redis and PostgreSQL, with kills.

- Two pollers and two workers; inbox triggers fire pending items at random (most fires repeat an item whose run
  is active); one poller and one worker are SIGKILLed mid-stream. Every item completes exactly once, no item's
  runs overlap, and no task ran twice except the ones cut off by the kill (DESIGN §3, §4).
- A worker SIGKILLed mid-task: that task runs again on the other worker and the run completes (within 60 s with
  the default recovery settings).
- A worker whose whole process group gets SIGTERM (``systemd`` stop, Ctrl-C in a terminal) does not turn the task
  it was running into a failed run: the attempt is recovered like a killed worker's.

The evidence is what the task functions and triggers wrote themselves (:mod:`tests.dist_apps.evidence`),
checked against the SQL run, task and attempt rows. Services use short recovery settings
(:data:`tests.distributed_harness.FAST_RECOVERY`) and a local ``redis-server`` of each test's own.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.distributed_harness import (
    FAST_RECOVERY,
    INBOX_APP,
    Cluster,
    all_done,
    overlapping_runs,
    reexecution_problems,
    rendezvous_owners,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.timeout(300)
def test_two_pollers_two_workers_sigkill_one_of_each_mid_stream(cluster: Cluster) -> None:
    items, shards, poll_s = 24, 2, 0.2
    cluster.add_items(items, shards)
    env = {"DIST_SHARDS": str(shards), "DIST_POLL_MS": str(int(poll_s * 1000)), "DIST_TASK_S": "0.3"}
    workers = [cluster.services.worker(f"w{n}", INBOX_APP, concurrency=2, **env) for n in (1, 2)]
    pollers = [cluster.services.poller(f"p{n}", INBOX_APP, **env) for n in (1, 2)]
    for w in workers:
        wait_for_worker_ready(w)
    poller_ids = [wait_for_poller_ready(p) for p in pollers]

    # Poller kill: the owner of inbox_0, once a quarter of the items fired (most have not fired even once).
    owners = rendezvous_owners([f"inbox_{n}" for n in range(shards)], poller_ids)
    doomed_poller = pollers[poller_ids.index(owners["inbox_0"])]
    survivor_poller = pollers[1 - pollers.index(doomed_poller)]
    wait_until(lambda: len(cluster.runs()) >= items // 4, 60, message="the first fires", interval_s=0.05)
    fired_before_kill = {r["item"] for r in cluster.runs()}
    doomed_poller.kill()
    assert doomed_poller.killed_at is not None

    # Worker kill: w1, while it is in the middle of a task.
    doomed_worker, survivor_worker = workers
    wait_until(lambda: cluster.in_flight(doomed_worker.pid, min_age_s=0.05), 30, message="a task in flight on w1")
    doomed_worker.kill()
    killed_at = time.time()

    wait_until(lambda: all_done(cluster), 150, message="every item to complete", interval_s=0.5)
    assert survivor_worker.alive and survivor_poller.alive
    # Read only now, long after the kill: statements the worker sent just before it died have landed by then, and a
    # dead worker writes nothing more (so no settling sleep is needed).
    cut_off = [e for e in cluster.executions() if e.pgid == doomed_worker.pid and e.ended_at is None]

    # Every item completed, in exactly one run; every run completed.
    runs = cluster.runs()
    assert Counter(r["status"] for r in runs) == Counter({"Completed": items})
    assert sorted(r["item"] for r in runs) == list(range(1, items + 1)), "an item ran twice (or never)"
    assert len(fired_before_kill) < items, "the poller was killed only after every item had fired"

    # The evidence: one run per item, no overlaps, no task ran twice except the ones the kill cut off.
    executions = cluster.executions()
    assert {e.run_key for e in executions} == {r["key"] for r in runs}
    assert {e.item for e in executions if e.task == "finish" and e.ended_at} == set(range(1, items + 1))
    assert overlapping_runs(executions) == []
    assert reexecution_problems(executions, killed_pgids={doomed_worker.pid}) == []
    assert cut_off, "the worker was killed while it ran a task"
    for lost in cut_off:
        again = [e for e in executions if (e.run_key, e.task) == (lost.run_key, lost.task) and e.id != lost.id]
        assert [e.pgid for e in again] == [survivor_worker.pid], f"{lost} should have run again on w2 only"
        assert again[0].started_at >= killed_at
    # The SQL attempts agree. A cut-off attempt whose start was recorded was given back as Lost (only w1's attempts
    # were lost; the kill may also have caught an attempt between its start in SQL and its first line of evidence);
    # one cut off before that (a short task's start is recorded by its finish: cloacina.execution.deferred_start)
    # left no attempt row, its task stayed Ready and its stalled run was republished. Either way no cut-off task has
    # a Completed attempt from w1, and every task has exactly one completed attempt.
    run_of = {r["id"]: r["key"] for r in runs}
    attempts = cluster.attempts()
    lost = [a for a in attempts if a.status == "Lost"]
    doomed_pids = {e.pid for e in executions if e.pgid == doomed_worker.pid}
    for lost_execution in cut_off:
        rows = [a for a in attempts if (run_of[a.run_id], a.task_id) == (lost_execution.run_key, lost_execution.task)]
        by_doomed = [a for a in rows if int(a.worker.rsplit(":", 1)[1]) in doomed_pids]
        assert [a.status for a in by_doomed] in ([], ["Lost"]), (lost_execution, rows)
    survivor_pids = {e.pid for e in executions if e.pgid == survivor_worker.pid}
    assert not [a for a in lost if int(a.worker.rsplit(":", 1)[1]) in survivor_pids], "a live worker's attempt lost"
    completed = Counter((a.run_id, a.task_id) for a in attempts if a.status == "Completed")
    assert set(completed.values()) == {1} and len(completed) == 4 * items

    # Duplicate fires were refused; the surviving poller took over the killed one's trigger and carried on.
    polls = cluster.sql("SELECT trigger, pgid, at FROM ev_polls")
    assert len(polls) > 3 * items, "the triggers should mostly have fired items that were already running"
    dedup_skips = cluster.sql("SELECT sum(dedup_skip_count) FROM trigger_schedules")[0][0]
    assert dedup_skips > items
    after_kill = {(t, pgid) for t, pgid, at in polls if at > doomed_poller.killed_at}
    assert {t for t, _ in after_kill} == {f"inbox_{n}" for n in range(shards)}
    assert {pgid for _, pgid in after_kill} == {survivor_poller.pid}


def _kill_a_worker_mid_task(cluster: Cluster, deadline_s: float, **settings: str | None) -> float:
    """Two workers, one run whose ``left`` task takes 4 s: SIGKILL the worker running it, half a second in.

    Checks that the task ran again on the other worker, exactly once more, and nothing else ran twice; returns
    how long after the kill the run completed (which must be within ``deadline_s``).
    """
    cluster.add_items(1)
    env = {"DIST_SLOW_TASK": "left", "DIST_SLOW_S": "4", "DIST_TASK_S": "0.2", **settings}
    workers = [cluster.services.worker(f"w{n}", INBOX_APP, concurrency=1, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", INBOX_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)

    def left_in_flight() -> object:
        return [e for e in cluster.executions() if e.task == "left" and e.ended_at is None]

    (victim,) = wait_until(left_in_flight, 60, message="the slow task to start")
    doomed = cluster.services.by_pid(victim.pgid)
    assert doomed is not None
    survivor = workers[1 - workers.index(doomed)]
    time.sleep(0.5)  # the kill lands half a second into the 4 s task (mid-task is the behaviour under test)
    doomed.kill()
    killed_at = time.time()
    wait_until(
        lambda: cluster.run_statuses() == {"Completed": 1}, deadline_s, interval_s=0.2, message="the run to complete"
    )
    completed_after_s = time.time() - killed_at

    executions = cluster.executions()
    lefts = [e for e in executions if e.task == "left"]
    assert [(e.pgid, e.ended_at is not None) for e in lefts] == [(doomed.pid, False), (survivor.pid, True)]
    assert reexecution_problems(executions, killed_pgids={doomed.pid}) == []
    assert Counter(e.task for e in executions) == Counter({"fetch": 1, "left": 2, "right": 1, "finish": 1})
    statuses = [(a.task_id, a.attempt, a.status) for a in cluster.attempts() if a.task_id == "left"]
    assert statuses == [("left", 1, "Lost"), ("left", 2, "Completed")]
    assert "attempt lost with its worker" in cluster.services.log_of("p1")
    return completed_after_s


@pytest.mark.timeout(180)
def test_worker_sigkilled_mid_task_the_task_runs_again_elsewhere(cluster: Cluster) -> None:
    # Short settings: heartbeat every 0.5 s, lost after 3 s, sweep every 1 s.
    after_s = _kill_a_worker_mid_task(cluster, deadline_s=30)
    print(f"run completed {after_s:.1f}s after the worker was killed")


@pytest.mark.timeout(240)
def test_worker_sigkilled_mid_task_run_completes_within_60s_with_default_settings(cluster: Cluster) -> None:
    # DESIGN §4 defaults: heartbeat every 5 s, lost after 30 s, sweep every 5 s, stale runs after 30 s.
    defaults = dict.fromkeys(FAST_RECOVERY)
    after_s = _kill_a_worker_mid_task(cluster, deadline_s=60, **defaults)
    print(f"run completed {after_s:.1f}s after the worker was killed (default settings)")


@pytest.mark.timeout(180)
def test_worker_process_group_sigterm_does_not_fail_the_running_task(cluster: Cluster) -> None:
    cluster.add_items(1)
    env = {"DIST_SLOW_TASK": "left", "DIST_SLOW_S": "4", "DIST_TASK_S": "0.2"}
    workers = [cluster.services.worker(f"w{n}", INBOX_APP, concurrency=1, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", INBOX_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    (victim,) = wait_until(
        lambda: [e for e in cluster.executions() if e.task == "left" and e.ended_at is None],
        60,
        message="left to start",
    )
    doomed = cluster.services.by_pid(victim.pgid)
    assert doomed is not None
    doomed.kill(signal.SIGTERM)  # what systemd (KillMode=control-group) or Ctrl-C in a terminal does
    wait_until(lambda: cluster.pending_items() == 0, 60, message="the item to be done", interval_s=0.2)
    wait_until(lambda: cluster.active_runs() == 0, 30, message="the run to end", interval_s=0.2)
    failed = cluster.sql("SELECT task_id, error_message FROM task_runs WHERE status = 'Failed'")
    assert failed == [], "a worker shutdown is not the task's failure"
    assert cluster.run_statuses() == {"Completed": 1}
    left_attempts = [a.status for a in cluster.attempts() if a.task_id == "left"]
    assert left_attempts[-1] == "Completed" and set(left_attempts[:-1]) <= {"Lost"}, left_attempts
    print(f"left's attempts: {left_attempts}")
