"""Run-ended notices on Redis pub/sub, and a broker-mode client that waits on them instead of polling SQL.

Real Redis (a database of the test's own) and a real SQLite file; no worker is needed: the test ends the run in
the store and publishes the notice, as a worker does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import event

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.dispatch.run_notices import RunEndNotices
from cloacina.engine.states import RunStatus
from tests.support import wait_until


def test_a_published_run_end_is_heard_by_every_listener(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    publisher = RunEndNotices(client, "ns-a")
    heard: list[list[str]] = [[], []]
    listeners = [RunEndNotices(client, "ns-a"), RunEndNotices(client, "ns-a")]
    other_namespace = RunEndNotices(client, "ns-b")
    elsewhere: list[str] = []
    try:
        for listener, bucket in zip(listeners, heard, strict=True):
            listener.listen(bucket.append)
        other_namespace.listen(elsewhere.append)
        wait_until(lambda: all(n.listening for n in [*listeners, other_namespace]), 10, message="subscriptions")
        publisher.publish("run-1")
        publisher.publish("run-2")
        wait_until(lambda: heard == [["run-1", "run-2"], ["run-1", "run-2"]], 10, message="both notices heard")
        assert elsewhere == []  # another deployment's namespace hears nothing
        with pytest.raises(RuntimeError, match="already listening"):
            listeners[0].listen(print)
    finally:
        for notices in (*listeners, other_namespace):
            notices.stop()
    assert not listeners[0].listening


def test_publishing_without_redis_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    dead = RunEndNotices(redis.Redis(port=1, socket_connect_timeout=0.2), "ns")
    dead.publish("run-x")
    assert "could not publish the end of run run-x" in caplog.text


def test_a_client_runner_wakes_on_the_notice_not_by_polling(tmp_path: Path, redis_url: str) -> None:
    with cloaca.WorkflowBuilder("notice_wf") as builder:

        @cloaca.task(id="only")
        def only(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    workflow = registry.get_workflow(builder.name)
    config = cloaca.DefaultRunnerConfig(broker_url=redis_url)
    with cloaca.DefaultRunner(f"sqlite:///{tmp_path}/client.db", config) as runner:
        wait_until(lambda: runner._notices is not None and runner._notices.listening, 10, message="subscription")
        run_id = runner.coordinator.store.create_run(workflow, {"n": 1})  # as if published; no worker runs it
        assert run_id is not None
        run_reads: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if "FROM workflow_runs" in statement:
                run_reads.append(statement)

        event.listen(runner.db.engine, "before_cursor_execute", count)

        def finish_elsewhere() -> None:
            wait_until(lambda: run_id in runner._waiters, 10, message="the waiter")
            time.sleep(0.5)  # the run ends while the client waits (the behaviour under test), not at once
            runner.runs.finish_run(run_id, RunStatus.COMPLETED, {"n": 1}, None)
            runner.deployment.run_notices.publish(run_id)  # what the worker that ended the run does

        finisher = threading.Thread(target=finish_elsewhere)
        finisher.start()
        result = runner.wait_for_run(run_id, timeout=30)
        finisher.join()
        event.remove(runner.db.engine, "before_cursor_execute", count)
    assert result.status == "Completed"
    # One read before waiting and one after the notice (polling would have read ~7 times in its first 0.25 s;
    # the fallback poll runs once a second while notices are heard).
    assert len(run_reads) <= 3, run_reads
