"""A worker stopped with SIGTERM (what Kubernetes and ``docker stop`` send, through tini) finishes its running task
before it exits: Celery's warm shutdown (issue 13). The chart's and compose's grace periods cover the task timeout
for this reason; this test shows the worker really waits, with a real prefork worker and a task that runs for
seconds, and that the task is not run a second time.
"""

from __future__ import annotations

import signal

import pytest

from tests.distributed_harness import (
    INBOX_APP,
    Cluster,
    all_done,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.timeout(240)
def test_sigterm_lets_the_running_task_finish_then_the_worker_exits(cluster: Cluster) -> None:
    cluster.add_items(1)
    env = {"DIST_TASK_S": "0.2", "DIST_SLOW_TASK": "fetch", "DIST_SLOW_S": "8"}
    worker = cluster.services.worker("w1", INBOX_APP, concurrency=1, **env)
    poller = cluster.services.poller("p1", INBOX_APP, **env)
    wait_for_worker_ready(worker)
    wait_for_poller_ready(poller)

    def fetch_running() -> bool:
        return any(e.task == "fetch" and e.ended_at is None for e in cluster.executions())

    wait_until(fetch_running, 60, message="the long task to start", interval_s=0.1)
    worker.proc.send_signal(signal.SIGTERM)  # the leader only, as tini forwards it

    def fetch_ended_while_the_worker_waited() -> bool:
        ended = any(e.task == "fetch" and e.ended_at is not None for e in cluster.executions())
        assert ended or worker.alive, f"the worker exited before its task ended:\n{worker.log_text()[-3000:]}"
        return ended

    wait_until(fetch_ended_while_the_worker_waited, 60, message="the running task to finish", interval_s=0.1)
    assert worker.wait_exit(60) == 0, worker.log_text()[-3000:]
    assert "Warm shutdown" in worker.log_text()

    # Another worker finishes the run; the task that was running at the SIGTERM is not run again.
    wait_for_worker_ready(cluster.services.worker("w2", INBOX_APP, concurrency=1, **env))
    wait_until(lambda: all_done(cluster), 90, message="the run to complete", interval_s=0.5)
    fetches = [e for e in cluster.executions() if e.task == "fetch"]
    assert len(fetches) == 1 and fetches[0].pgid == worker.pid
    assert [r["status"] for r in cluster.runs()] == ["Completed"]
