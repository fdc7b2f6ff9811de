"""Infrastructure faults under a running deployment (DESIGN §4 recovery, issue 4).

- Redis restarted with its data lost while runs are in flight: the runs whose messages were lost are found from
  their stale SQL state and republished by the pollers' sweeper; every run completes; no task runs twice.
- PostgreSQL briefly unavailable (a TCP proxy between the services and the server drops every connection and
  refuses new ones; the real server is never touched): the services log, retry with backoff and do not crash;
  a worker started during the outage waits for the database; afterwards every item completes.

Each test has a ``redis-server`` of its own; tasks and triggers write their evidence straight to PostgreSQL
(:mod:`tests.dist_apps.evidence`), bypassing both the Redis that restarts and the proxy that fails.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL
from tests.distributed_harness import (
    INBOX_APP,
    Cluster,
    RedisServer,
    ServiceProcess,
    TcpProxy,
    all_done,
    reexecution_problems,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _assert_every_item_completed_once(cluster: Cluster, items: int) -> list[dict[str, object]]:
    runs = cluster.runs()
    assert Counter(r["status"] for r in runs) == Counter({"Completed": items})
    assert sorted(r["item"] for r in runs) == list(range(1, items + 1)), "an item ran twice (or never)"
    return runs


@pytest.mark.timeout(240)
def test_redis_restart_with_data_loss_runs_are_republished_from_sql(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    items = 12
    cluster.add_items(items)
    env = {"DIST_POLL_MS": "100", "DIST_TASK_S": "0.5"}
    workers = [cluster.services.worker(f"w{n}", INBOX_APP, concurrency=2, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", INBOX_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)

    # Restart while some runs are done, several are active and tasks are executing.
    def mid_stream() -> bool:
        statuses = cluster.run_statuses()
        busy = [e for e in cluster.executions() if e.ended_at is None]
        return statuses.get("Completed", 0) >= 2 and cluster.active_runs() >= 3 and bool(busy)

    wait_until(mid_stream, 60, message="runs in flight", interval_s=0.05)
    before = cluster.runs()
    active_at_restart = {r["id"] for r in before if r["status"] in ("Pending", "Running")}
    completed_before = {r["id"] for r in before if r["status"] == "Completed"}
    keys_before = redis_server.dbsize()
    redis_server.kill()  # no persistence: queues, unacked messages, chord counters, locks and leases are gone
    time.sleep(1.0)  # Redis stays down for a second: the outage is the behaviour under test
    redis_server.start()
    restarted_at = time.time()
    keys_after = redis_server.dbsize()
    assert keys_after < keys_before, f"Redis kept its data ({keys_before} keys before, {keys_after} after)"

    wait_until(lambda: all_done(cluster), 150, message="every item to complete after the restart", interval_s=0.5)
    assert all(p.alive for p in cluster.services.processes), "a service died with Redis"
    runs = _assert_every_item_completed_once(cluster, items)
    assert active_at_restart <= {r["id"] for r in runs}

    # No task ran twice: nothing was killed, so every (run, task) has exactly one execution, and it ended.
    executions = cluster.executions()
    assert reexecution_problems(executions, killed_pgids=set()) == []
    assert Counter(e.item for e in executions) == Counter({i: 4 for i in range(1, items + 1)})
    assert {a.status for a in cluster.attempts()} == {"Completed"}
    assert len(cluster.attempts()) == 4 * items
    # The lost messages were recovered by the sweeper from the runs' stale SQL state.
    log = cluster.services.log_of("p1")
    republished = set(re.findall(r"run made no progress for \S+; republishing it run_id=(\S+)", log))
    assert republished, "the sweeper should have republished runs whose messages were lost"
    assert republished.isdisjoint(completed_before), "a run that had completed was republished"
    print(f"{len(active_at_restart)} runs active at the restart, {len(republished)} republished by the sweeper; "
          f"all done {time.time() - restarted_at:.1f}s after the restart")  # fmt: skip


@pytest.fixture
def db_proxy(cluster: Cluster) -> Iterator[TcpProxy]:
    """A TCP proxy in front of PostgreSQL that the services (not the test, not the evidence) connect through.
    It outlives the services: they are stopped before it (teardown order), so only the test causes outages."""
    pg = make_url(PG_URL)
    proxy = TcpProxy((pg.host or "localhost", pg.port or 5432))
    proxy.start()
    cluster.route_services_through(proxy.address)
    try:
        yield proxy
    finally:
        cluster.services.stop_all()
        proxy.stop()


def _outage(cluster: Cluster, proxy: TcpProxy, seconds: float, *, during: Callable[[], object] = lambda: None) -> None:
    """Cut the services off PostgreSQL for ``seconds``; every service must stay up meanwhile."""
    proxy.stop()
    started = time.time()
    during()
    while time.time() - started < seconds:  # the outage lasts ``seconds``: the behaviour under test
        assert all(p.alive for p in cluster.services.processes), "a service crashed during the outage"
        time.sleep(0.25)
    proxy.start()


@pytest.mark.timeout(240)
def test_database_outage_services_retry_with_backoff_and_carry_on(cluster: Cluster, db_proxy: TcpProxy) -> None:
    items = 12
    cluster.add_items(items)
    env = {"DIST_POLL_MS": "100", "DIST_TASK_S": "0.3"}
    w1 = cluster.services.worker("w1", INBOX_APP, concurrency=2, **env)
    p1 = cluster.services.poller("p1", INBOX_APP, **env)
    wait_for_worker_ready(w1)
    wait_for_poller_ready(p1)
    wait_until(
        lambda: cluster.run_statuses().get("Completed", 0) >= 2 and cluster.in_flight(w1.pid),
        60,
        message="runs in flight",
        interval_s=0.05,
    )
    late_worker: list[ServiceProcess] = []
    # Every connection is cut and new ones are refused; a second worker starts during the outage.
    _outage(
        cluster,
        db_proxy,
        8.0,
        during=lambda: late_worker.append(cluster.services.worker("w2", INBOX_APP, concurrency=1, **env)),
    )
    assert cluster.pending_items() > 0, "the outage should have hit mid-stream"
    wait_for_worker_ready(late_worker[0])
    wait_until(lambda: all_done(cluster), 150, message="every item to complete after the outage", interval_s=0.5)
    assert all(p.alive for p in cluster.services.processes), "a service crashed"
    _assert_every_item_completed_once(cluster, items)

    # They logged the outage and retried; the late worker waited for the database with growing delays.
    poller_log, w1_log, w2_log = (cluster.services.log_of(n) for n in ("p1", "w1", "w2"))
    assert re.search(r"WARNING cloacina\.\w+ .*(failed|unavailable|not reachable)", poller_log), poller_log[-3000:]
    assert re.search(r"WARNING cloacina\.\w+ .*(failed|unavailable|not reachable)", w1_log), w1_log[-3000:]
    waits = [float(d) for d in re.findall(r"database not reachable \(.*\); retrying in ([\d.]+)s", w2_log)]
    assert len(waits) >= 2 and waits == sorted(waits) and waits[-1] > waits[0], f"no backoff: {waits}"

    # Every task's execution is on record. A task whose completion the outage swallowed may have run again
    # (tasks are at-least-once), but once a completion was recorded the task never ran again.
    executions = cluster.executions()
    ended = {(e.run_key, e.task) for e in executions if e.ended_at is not None}
    assert len(ended) == 4 * items
    attempts = cluster.attempts()
    completed = Counter((a.run_id, a.task_id) for a in attempts if a.status == "Completed")
    assert len(completed) == 4 * items and set(completed.values()) == {1}
    for a in attempts:
        assert a.status in ("Completed", "Lost"), a
    key_of = {r["id"]: r["key"] for r in cluster.runs()}
    completed_at = {
        (key_of[run_id], task): at.timestamp()
        for run_id, task, at in cluster.sql("SELECT run_id, task_id, completed_at FROM task_runs")
    }
    late = [e for e in executions if e.started_at > completed_at[(e.run_key, e.task)]]
    assert late == [], "a task ran again after its completion was recorded"
    rerun = {k: v for k, v in Counter((e.run_key, e.task) for e in executions).items() if v > 1}
    print(f"tasks executed again after the outage (at-least-once): {len(rerun)}; "
          f"proxied connections: {db_proxy.connections_accepted}")  # fmt: skip


@pytest.mark.timeout(180)
def test_database_outage_longer_than_the_heartbeat_timeout_does_not_rerun_a_live_task(
    cluster: Cluster, db_proxy: TcpProxy
) -> None:
    """A task still running on a live worker after the outage keeps its attempt: the sweeper, back on the
    database, must not take the silence of the outage for a dead worker and start the task a second time."""
    cluster.add_items(1)
    env = {"DIST_SLOW_TASK": "left", "DIST_SLOW_S": "12", "DIST_TASK_S": "0.2"}
    workers = [cluster.services.worker(f"w{n}", INBOX_APP, concurrency=1, **env) for n in (1, 2)]
    poller = cluster.services.poller("p1", INBOX_APP, **env)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    wait_until(
        lambda: [e for e in cluster.executions() if e.task == "left" and time.time() - e.started_at > 1.0],
        60,
        message="the slow task to run for a second",
    )
    _outage(cluster, db_proxy, 6.0)  # twice the heartbeat timeout (3 s)
    wait_until(lambda: cluster.active_runs() == 0, 60, message="the run to end", interval_s=0.2)
    assert cluster.run_statuses() == {"Completed": 1}
    lefts = [e for e in cluster.executions() if e.task == "left"]
    assert len(lefts) == 1, f"the live task ran again: {lefts}"
    assert [a.status for a in cluster.attempts() if a.task_id == "left"] == ["Completed"]
