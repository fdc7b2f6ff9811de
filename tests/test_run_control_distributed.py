"""Run control on Celery: a poller and a worker as real processes, a client ``DefaultRunner(broker_url=...)``.

- Cancel a run while its long task runs on the worker: the run ends Cancelled at once (a client waiting for it
  is told), the same context fires a new run right away (SQL key and Redis dedup lock freed), that new run,
  queued behind the long task on the only worker slot, is cancelled too and its message is revoked (the worker
  discards it: its task never starts), and when the long task returns its result is discarded and its
  successor never starts.
- Retry a failed diamond: the new run, linked to the original, runs only the failed task and the one after it
  (executions counted by the task bodies in Redis); a Completed run cannot be retried; cancel twice and cancel an
  unknown id behave as embedded.

Services use the harness's short recovery settings and a Redis server of the test's own.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

import pytest
import redis

import cloacina as cloaca
from tests.distributed_harness import Cluster, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
CONTROL_APP = "tests.dist_apps.control_app"
WAIT_S = 60.0


def _app() -> ModuleType:
    """The control app, (re)registered in this test's registry: the client needs its workflows."""
    module = sys.modules.get(CONTROL_APP)
    return importlib.reload(module) if module is not None else importlib.import_module(CONTROL_APP)


def _client(cluster: Cluster) -> cloaca.DefaultRunner:
    return cloaca.DefaultRunner(cluster.direct_db_url, cloaca.DefaultRunnerConfig(broker_url=cluster.redis_url))


def _count(r: redis.Redis, key: str) -> int:
    return int(r.get(key) or 0)


@pytest.mark.timeout(240)
def test_cancel_a_run_while_its_long_task_runs_on_a_worker(cluster: Cluster) -> None:
    _app()
    r = redis.Redis.from_url(cluster.redis_url)
    worker = cluster.services.worker("w1", CONTROL_APP, concurrency=1)
    poller = cluster.services.poller("p1", CONTROL_APP)
    wait_for_worker_ready(worker)
    wait_for_poller_ready(poller)
    with _client(cluster) as client:
        r.set("ctl:armed", 1)
        wait_until(lambda: _count(r, "ctl:started:slow") == 1, WAIT_S, message="the long task to start")
        (first,) = cluster.sql("SELECT id FROM workflow_runs")
        first_id = str(first[0])
        waited: list[Any] = []
        waiter = threading.Thread(target=lambda: waited.append(client.wait_for_run(first_id, WAIT_S)))
        waiter.start()
        wait_until(
            lambda: cluster.sql("SELECT dedup_skip_count FROM trigger_schedules")[0][0] > 0,
            WAIT_S,
            message="a fire of the same context to be refused while the run is active",
        )

        (lock_key,) = r.keys("*dedup:control_item:*")  # the poller's Redis dedup lock of the active run
        token = r.get(lock_key)
        assert token is not None

        assert client.cancel_run(first_id) is True
        # Freed by the time cancel_run returns: SQL's key, and the Redis lock (gone, or already the next fire's).
        assert r.get(lock_key) != token
        assert cluster.sql("SELECT dedup_active FROM trigger_executions WHERE run_id = :run", run=first_id) == [
            (False,)
        ]
        waiter.join(WAIT_S)
        assert [w.status for w in waited] == ["Cancelled"], "the waiting client was not told"
        # The key is free at once, in SQL and in Redis: the poller's next fire of the same context starts a run.
        second_id = wait_until(
            lambda: next(
                (str(row[0]) for row in cluster.sql("SELECT id FROM workflow_runs") if row[0] != first_id), None
            ),
            WAIT_S,
            message="a new run of the same context",
        )
        r.delete("ctl:armed")
        assert client.cancel_run(second_id) is True  # queued: the only worker slot runs the long task
        assert client.cancel_run(second_id) is False
        with pytest.raises(KeyError, match="unknown run"):
            client.cancel_run("00000000-0000-0000-0000-000000000000")

        r.set("ctl:release", 1)  # the long task returns now: its result is discarded
        wait_until(lambda: _count(r, "ctl:ended:slow") == 1, WAIT_S, message="the long task to end")
        # The worker goes on in queue order: once a run started after both has completed, the second run's
        # message has been delivered (and discarded) before it.
        later = client.execute("control_diamond", {}, timeout=WAIT_S)
        assert later.status == "Completed"
        attempts = wait_until(
            lambda: cluster.sql(
                "SELECT a.attempt, a.status, a.error_kind, a.error_message FROM task_attempts a "
                "JOIN task_runs t ON t.id = a.task_run_id WHERE t.run_id = :run AND a.completed_at IS NOT NULL",
                run=first_id,
            ),
            WAIT_S,
            message="the late result to be recorded as discarded",
        )
    assert [(a[0], a[1], a[2]) for a in attempts] == [(1, "Cancelled", "cancelled")]
    assert "discarded (the task completed after the cancellation)" in attempts[0][3]
    tasks = dict(
        cluster.sql("SELECT task_id, status FROM task_runs WHERE run_id = :run ORDER BY task_id", run=first_id)
    )
    assert tasks == {"after": "Skipped", "slow": "Failed"}
    statuses = dict(cluster.sql("SELECT id, status FROM workflow_runs WHERE id IN (:a, :b)", a=first_id, b=second_id))
    assert statuses == {first_id: "Cancelled", second_id: "Cancelled"}
    assert _count(r, "ctl:started:slow") == 1, "the cancelled queued run's task started"
    assert _count(r, "ctl:count:after") == 0, "a successor of the cancelled task started"
    assert cluster.sql(
        "SELECT count(*) FROM task_attempts a JOIN task_runs t ON t.id = a.task_run_id WHERE t.run_id = :run",
        run=second_id,
    ) == [(0,)]
    assert "Discarding revoked task" in cluster.services.log_of("w1"), "the queued message was not revoked"
    executions = cluster.sql("SELECT count(*) FROM trigger_executions WHERE dedup_active")
    assert executions == [(0,)]
    r.close()


@pytest.mark.timeout(240)
def test_retry_a_failed_diamond_on_workers(cluster: Cluster) -> None:
    _app()
    r = redis.Redis.from_url(cluster.redis_url)
    worker = cluster.services.worker("w1", CONTROL_APP, concurrency=2)
    wait_for_worker_ready(worker)
    r.set("ctl:fail:b", 1)
    with _client(cluster) as client:
        original = client.execute("control_diamond", {"seed": 3}, timeout=WAIT_S)
        assert original.status == "Failed" and "b fails on purpose" in (original.error_message or "")
        assert [_count(r, f"ctl:count:{t}") for t in "abcd"] == [1, 1, 1, 1]

        r.delete("ctl:fail:b")
        retry_id = client.retry_run(original.run_id)
        result = client.wait_for_run(retry_id, WAIT_S)
        assert result.status == "Completed", result.error_message
        # a and c completed in the original and are reused; b failed and d depends on it: those run again.
        assert [_count(r, f"ctl:count:{t}") for t in "abcd"] == [1, 2, 1, 2]
        assert all(result.final_context.get(t) is True for t in "abcd")
        assert result.final_context.get("seed") == 3
        record = client.runs.get_run(retry_id)
        assert record is not None and record.retry_of == original.run_id
        assert str(client.runs.get_run(original.run_id).status) == "Failed"  # unchanged

        with pytest.raises(ValueError, match="is Completed: only a Failed or Cancelled run can be retried"):
            client.retry_run(retry_id)
        with pytest.raises(KeyError, match="unknown run"):
            client.retry_run("00000000-0000-0000-0000-000000000000")
        assert client.cancel_run(retry_id) is False
    reused = cluster.sql(
        "SELECT task_id FROM task_runs WHERE run_id = :run AND attempt = 0 ORDER BY task_id", run=retry_id
    )
    assert [row[0] for row in reused] == ["a", "c"]
    r.close()
