"""Fused sequential stretches on Celery, with a worker SIGKILLed in the middle of one.

The workflow is one stretch, ``s1 -> s2 -> s3 -> s4`` (:mod:`tests.dist_apps.chain_app`): with fusion on it is one
canvas node, one broker message whose worker runs the four tasks back to back, each with its own durable start
and completion in SQL. Two workers (concurrency 1) and one poller; one run per test. Recovery (heartbeat timeout,
then the sweeper gives the lost attempt back and republishes the unfinished part of the run) must resume at the
first unfinished task, and no completed task may run again:

- killed during s2: s2 runs again on the other worker, then s3 and s4; s1 ran once; s2's attempts are Lost,
  Completed;
- killed after the statement that completed s2 and started s3 (a database gate holds it until the worker is dead,
  then lets it commit): s2 ran once and its attempt is Completed; s3's attempt is lost and s3 runs on the other
  worker;
- killed in s2's ``on_success`` callback: the coordinator runs the callback before it records the completion, so
  the attempt is lost and s2 runs again;
- killed during s1, the first task of the stretch: s1 runs again, the rest once;
- an ``on_success`` callback slower than the heartbeat timeout on a live worker is not a lost attempt;
- without kills: with fusion on the whole stretch is one message run by one worker process; with
  ``CLOACINA_FUSE_STRETCHES=false`` every task is a message of its own, and each task still runs once.

The evidence is what the task functions and callbacks wrote themselves (:mod:`tests.dist_apps.evidence`; a
callback is recorded as task ``on_success:<task>``), checked against the SQL attempt rows. Services use the
harness's short recovery settings (:data:`tests.distributed_harness.FAST_RECOVERY`).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import psycopg
import pytest

from tests.distributed_harness import (
    Cluster,
    Execution,
    ServiceProcess,
    execute_sql,
    reexecution_problems,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHAIN_APP = "tests.dist_apps.chain_app"
TASKS = ["s1", "s2", "s3", "s4"]
CALLBACK = "on_success:"
# Celery logs one line per message a worker takes: "Task cloacina.task[<id>] received".
RECEIVED = re.compile(r"Task cloacina\.task\[[0-9a-f-]+\] received")


def _start(cluster: Cluster, **env: str) -> tuple[list[ServiceProcess], ServiceProcess]:
    """Two workers (concurrency 1) and a poller on the chain app, ready; then the one item the trigger fires."""
    workers = [cluster.services.worker(f"w{n}", CHAIN_APP, concurrency=1, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", CHAIN_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    cluster.add_items(1)
    return workers, poller


def _wait_completed(cluster: Cluster, timeout_s: float = 40) -> None:
    def run_ended() -> bool:
        statuses = cluster.run_statuses()
        return sum(statuses.values()) == 1 and (statuses.get("Pending", 0) + statuses.get("Running", 0)) == 0

    def live_executions_ended() -> bool:  # e.g. a callback still running after the run's end was recorded
        killed = {p.pid for p in cluster.services.processes if p.killed_at is not None}
        return all(e.ended_at is not None or e.pgid in killed for e in cluster.executions())

    wait_until(run_ended, timeout_s, interval_s=0.2, message=lambda: f"the run to end ({cluster.run_statuses()})")
    assert cluster.run_statuses() == {"Completed": 1}
    assert [r["item"] for r in cluster.runs()] == [1], "the trigger should have fired exactly one run"
    wait_until(live_executions_ended, 30, message="the live workers' executions to end")


def _kill_while_in_flight(cluster: Cluster, workers: list[ServiceProcess], task: str) -> ServiceProcess:
    """SIGKILL the worker whose execution of ``task`` (a task, or ``on_success:<task>``) is running; returns the
    survivor."""

    def in_flight() -> list[Execution]:
        return [e for e in cluster.executions() if e.task == task and e.ended_at is None]

    (victim,) = wait_until(in_flight, 60, message=f"{task} to start")
    doomed = cluster.services.by_pid(victim.pgid)
    assert doomed is not None and doomed in workers
    time.sleep(0.5)  # the kill lands half a second into the 4 s sleep (mid-execution is the behaviour under test)
    doomed.kill()
    return workers[1 - workers.index(doomed)]


def _trace(executions: list[Execution], workers: list[ServiceProcess]) -> list[tuple[str, str, bool]]:
    """(task, worker name, ended) of every execution, in start order."""
    names = {w.pid: w.name for w in workers}
    return [(e.task, names.get(e.pgid, str(e.pgid)), e.ended_at is not None) for e in executions]


def _task_executions(cluster: Cluster) -> list[Execution]:
    return [e for e in cluster.executions() if not e.task.startswith(CALLBACK)]


def _attempts(cluster: Cluster) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in cluster.attempts():
        out.setdefault(a.task_id, []).append(a.status)
    return out


def _attempt_pids(cluster: Cluster, task: str) -> list[int]:
    """The worker pid of each attempt of ``task`` (the worker name is ``<host>:<pid>``)."""
    return [int(a.worker.rsplit(":", 1)[1]) for a in cluster.attempts() if a.task_id == task]


def _pids_of(cluster: Cluster, service: ServiceProcess) -> set[int]:
    """The pids of ``service``'s processes that recorded evidence (its prefork children)."""
    return {e.pid for e in cluster.executions() if e.pgid == service.pid}


def _messages_received(cluster: Cluster) -> int:
    return sum(len(RECEIVED.findall(cluster.services.log_of(name))) for name in ("w1", "w2"))


@pytest.mark.timeout(150)
def test_worker_killed_during_a_task_of_the_stretch_resumes_at_that_task(cluster: Cluster) -> None:
    workers, poller = _start(cluster, DIST_SLOW_TASK="s2")
    survivor = _kill_while_in_flight(cluster, workers, "s2")
    doomed = workers[1 - workers.index(survivor)]
    _wait_completed(cluster)

    d, s = doomed.name, survivor.name
    assert _trace(cluster.executions(), workers) == [
        ("s1", d, True),
        (CALLBACK + "s1", d, True),
        ("s2", d, False),  # cut off by the kill
        ("s2", s, True),
        (CALLBACK + "s2", s, True),
        ("s3", s, True),
        (CALLBACK + "s3", s, True),
        ("s4", s, True),
        (CALLBACK + "s4", s, True),
    ]
    executions = _task_executions(cluster)
    assert Counter(e.task for e in executions) == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})
    assert reexecution_problems(executions, killed_pgids={doomed.pid}) == []
    assert _attempts(cluster) == {"s1": ["Completed"], "s2": ["Lost", "Completed"], "s3": ["Completed"],
                                  "s4": ["Completed"]}  # fmt: skip
    again = _attempt_pids(cluster, "s2")[1:] + _attempt_pids(cluster, "s3") + _attempt_pids(cluster, "s4")
    assert set(again) <= _pids_of(cluster, survivor)
    assert "attempt lost with its worker" in poller.log_text()


@pytest.mark.timeout(150)
def test_worker_killed_after_a_completion_before_the_next_task_resumes_at_the_next_task(cluster: Cluster) -> None:
    # s2's finish records its completion and starts s3 (the task its worker runs next) in one statement. A gate in
    # the database holds that statement (recording s3's attempt waits for an advisory lock the test holds); the test
    # kills the worker there, then lets the statement commit, as if the worker had died right after it: s2 is
    # Completed, s3 is Running on a dead worker. Recovery counts s3's attempt as lost and runs s3 on the survivor;
    # s2 never runs again.
    key = random.randrange(1, 2**31)
    schema = cluster.schema
    execute_sql(
        cluster.pg_url,
        schema,
        f"""CREATE FUNCTION gate_s3_start() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT task_id FROM "{schema}".task_runs WHERE id = NEW.task_run_id) = 's3' THEN
                PERFORM pg_advisory_xact_lock({key});
            END IF;
            RETURN NEW;
        END $$""",
        "CREATE TRIGGER gate_s3_start BEFORE INSERT ON task_attempts FOR EACH ROW EXECUTE FUNCTION gate_s3_start()",
    )

    def backends_at_gate() -> list[int]:
        sql = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = :key"
        return [int(r[0]) for r in cluster.sql(sql, key=key)]

    with psycopg.connect(cluster.pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        workers, poller = _start(cluster)
        wait_until(backends_at_gate, 60, message="a worker to reach s3's start")
        (s2,) = [e for e in cluster.executions() if e.task == "s2"]
        assert s2.ended_at is not None
        doomed = cluster.services.by_pid(s2.pgid)
        assert doomed is not None and doomed in workers
        doomed.kill()
        # Leaving the block releases the lock: the dead worker's statement commits.
    survivor = workers[1 - workers.index(doomed)]
    wait_until(
        lambda: cluster.sql("SELECT status FROM task_runs WHERE task_id = 's2'")[0][0] == "Completed",
        30,
        message="s2's finish to commit",
    )
    _wait_completed(cluster)

    d, s = doomed.name, survivor.name
    assert _trace(cluster.executions(), workers) == [
        ("s1", d, True),
        (CALLBACK + "s1", d, True),
        ("s2", d, True),
        (CALLBACK + "s2", d, True),
        ("s3", s, True),
        (CALLBACK + "s3", s, True),
        ("s4", s, True),
        (CALLBACK + "s4", s, True),
    ]
    assert reexecution_problems(cluster.executions(), killed_pgids=set()) == []
    # s2 had completed: it never ran again. s3 had been started for the dead worker: its attempt was lost.
    assert _attempts(cluster) == {"s1": ["Completed"], "s2": ["Completed"], "s3": ["Lost", "Completed"],
                                  "s4": ["Completed"]}  # fmt: skip
    assert set(_attempt_pids(cluster, "s3")[1:] + _attempt_pids(cluster, "s4")) <= _pids_of(cluster, survivor)
    assert "attempt lost with its worker" in poller.log_text()


@pytest.mark.timeout(150)
def test_worker_killed_in_an_on_success_callback_the_task_runs_again(cluster: Cluster) -> None:
    # The coordinator runs on_success before it records the completion (cloacina/execution/coordinator.py,
    # "cloaca's order"): the callback is part of the attempt, so a kill inside it loses the attempt.
    workers, poller = _start(cluster, DIST_SLOW_CALLBACK="s2")
    survivor = _kill_while_in_flight(cluster, workers, CALLBACK + "s2")
    doomed = workers[1 - workers.index(survivor)]
    _wait_completed(cluster)

    d, s = doomed.name, survivor.name
    assert _trace(cluster.executions(), workers) == [
        ("s1", d, True),
        (CALLBACK + "s1", d, True),
        ("s2", d, True),
        (CALLBACK + "s2", d, False),  # cut off by the kill, before s2's completion was recorded
        ("s2", s, True),
        (CALLBACK + "s2", s, True),
        ("s3", s, True),
        (CALLBACK + "s3", s, True),
        ("s4", s, True),
        (CALLBACK + "s4", s, True),
    ]
    assert reexecution_problems(cluster.executions(), killed_pgids={doomed.pid}) == []
    assert _attempts(cluster) == {"s1": ["Completed"], "s2": ["Lost", "Completed"], "s3": ["Completed"],
                                  "s4": ["Completed"]}  # fmt: skip
    assert "attempt lost with its worker" in poller.log_text()


@pytest.mark.timeout(150)
def test_a_slow_on_success_callback_on_a_live_worker_is_not_a_lost_attempt(cluster: Cluster) -> None:
    # s2's callback takes 4 s, longer than the heartbeat timeout (3 s); no worker dies, so nothing may run twice.
    workers, poller = _start(cluster, DIST_SLOW_CALLBACK="s2")
    _wait_completed(cluster)

    executions = cluster.executions()
    assert [e.task for e in executions] == [n for t in TASKS for n in (t, CALLBACK + t)], _trace(executions, workers)
    assert reexecution_problems(executions, killed_pgids=set()) == []
    assert _attempts(cluster) == {t: ["Completed"] for t in TASKS}
    assert "attempt lost with its worker" not in poller.log_text()


@pytest.mark.timeout(150)
def test_worker_killed_during_the_first_task_of_the_stretch_resumes_at_the_first_task(cluster: Cluster) -> None:
    workers, poller = _start(cluster, DIST_SLOW_TASK="s1")
    survivor = _kill_while_in_flight(cluster, workers, "s1")
    doomed = workers[1 - workers.index(survivor)]
    _wait_completed(cluster)

    d, s = doomed.name, survivor.name
    assert _trace(cluster.executions(), workers) == [
        ("s1", d, False),  # cut off by the kill
        ("s1", s, True),
        (CALLBACK + "s1", s, True),
        ("s2", s, True),
        (CALLBACK + "s2", s, True),
        ("s3", s, True),
        (CALLBACK + "s3", s, True),
        ("s4", s, True),
        (CALLBACK + "s4", s, True),
    ]
    executions = _task_executions(cluster)
    assert Counter(e.task for e in executions) == Counter({"s1": 2, "s2": 1, "s3": 1, "s4": 1})
    assert reexecution_problems(executions, killed_pgids={doomed.pid}) == []
    assert _attempts(cluster) == {"s1": ["Lost", "Completed"], "s2": ["Completed"], "s3": ["Completed"],
                                  "s4": ["Completed"]}  # fmt: skip
    assert "attempt lost with its worker" in poller.log_text()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_one_run_without_kills_one_message_per_stretch_or_per_task(cluster: Cluster, fuse: bool) -> None:
    env = {} if fuse else {"CLOACINA_FUSE_STRETCHES": "false"}
    workers, poller = _start(cluster, **env)
    _wait_completed(cluster)

    executions = _task_executions(cluster)
    assert [e.task for e in executions] == TASKS, "each task ran once, in order"
    assert all(e.ended_at is not None for e in executions)
    assert reexecution_problems(executions, killed_pgids=set()) == []
    assert _attempts(cluster) == {t: ["Completed"] for t in TASKS}
    assert all(w.alive for w in workers) and poller.alive
    # Every message was taken (and logged) before its first task started, long before the run completed.
    received = _messages_received(cluster)
    if fuse:
        # The whole stretch went out as one message, run back to back by one worker process.
        assert received == 1
        assert len({(e.pid, e.pgid) for e in executions}) == 1, executions
    else:
        assert received == len(TASKS)


@pytest.mark.timeout(150)
def test_a_delayed_retry_hands_the_rest_of_the_stretch_back_to_celery(cluster: Cluster) -> None:
    # s2 fails its first attempt; its retry 1 s later comes back as a new message carrying s2..s4 (the worker
    # slot is not held for the delay), then the stretch finishes; nothing else runs twice.
    _start(cluster, DIST_FAIL_ONCE="s2", DIST_RETRY_DELAY_MS="1000")
    _wait_completed(cluster)
    assert Counter(e.task for e in _task_executions(cluster)) == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})
    assert _attempts(cluster) == {
        "s1": ["Completed"],
        "s2": ["Failed", "Completed"],
        "s3": ["Completed"],
        "s4": ["Completed"],
    }
    assert _messages_received(cluster) == 2  # the stretch, then the retry of its rest
