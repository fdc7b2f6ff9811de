"""Contract §3 ``TaskHandle``: ``defer_until`` releases the task's concurrency slot while it waits and takes one
again; ``is_slot_held``; the handle is spent once the call returns. Written from ``CLOACA_API.md`` §3.

- Embedded: the slot is one of the runner's ``max_concurrent_tasks``; with a single slot, a task deferring until
  another run's task has run completes (it would deadlock if the slot were kept).
- The slot pool itself (:class:`cloacina.dispatch.threads.SlotPool`): a resuming task goes before work that has not
  started; giving up an attempt wakes its pending re-acquisition.
- Distributed (real ``cloacina worker`` processes, :mod:`tests.dist_apps.handle_app`): with one worker of
  concurrency 1, another run's task executes on that worker while a task defers; a worker SIGKILLed while its task
  defers is recovered like any lost attempt; retries and callbacks behave as embedded.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import cloacina as cloaca
from cloacina.dispatch.threads import SlotPool
from tests.distributed_harness import Cluster, execute_sql, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

HANDLE_APP = "tests.dist_apps.handle_app"


def _one_slot_runner() -> cloaca.DefaultRunner:
    return cloaca.DefaultRunner(":memory:", cloaca.DefaultRunnerConfig(max_concurrent_tasks=1))


@pytest.fixture
def runner() -> Iterator[cloaca.DefaultRunner]:
    with _one_slot_runner() as r:
        yield r


# -- the object ------------------------------------------------------------------------------------------------
def test_task_handle_has_no_constructor() -> None:
    with pytest.raises(TypeError):
        cloaca.TaskHandle()
    assert "TaskHandle" in cloaca.__all__


def _handle_task(name: str, body: Any) -> None:
    with cloaca.WorkflowBuilder(name):
        cloaca.task(id="t", retry_attempts=1)(body)


# -- embedded: the thread-pool slot --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_deferring_task_frees_the_only_slot_for_another_run(runner) -> None:
    signalled = threading.Event()
    deferring = threading.Event()
    held: dict[str, Any] = {"during": []}

    def waiter(context, handle):
        held["before"] = handle.is_slot_held()
        deferring.set()

        def signal_seen() -> bool:
            held["during"].append(handle.is_slot_held())
            return signalled.is_set()

        handle.defer_until(signal_seen, poll_interval_ms=20)
        held["after"] = handle.is_slot_held()
        context.set("waited", True)
        return context

    def signal(context):
        signalled.set()
        return context

    _handle_task("waits", waiter)
    _handle_task("signals", signal)
    waiting = runner.execute_async("waits")
    assert deferring.wait(20), "the waiter never started"
    # With one slot, this run can only execute because the waiter gave its slot back.
    assert runner.execute("signals", timeout=20).status == "Completed"
    result = waiting.wait(timeout=20)
    assert result.status == "Completed" and result.final_context.get("waited") is True
    assert held["before"] is True and held["after"] is True
    assert held["during"] and not any(held["during"])


@pytest.mark.timeout(60)
def test_condition_is_called_every_interval_after_a_first_interval(runner) -> None:
    calls: list[float] = []
    timing: dict[str, float] = {}

    def t(context, handle):
        timing["start"] = time.monotonic()

        def third_time() -> bool:
            calls.append(time.monotonic())
            return len(calls) == 3

        handle.defer_until(third_time, poll_interval_ms=50)
        return context

    _handle_task("polls", t)
    assert runner.execute("polls", timeout=20).status == "Completed"
    assert len(calls) == 3
    assert calls[0] - timing["start"] >= 0.05  # the first call comes after one interval
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(calls))


@pytest.mark.timeout(60)
def test_a_raise_or_a_non_bool_counts_as_false(runner, capfd) -> None:
    answers: list[Any] = [ZeroDivisionError("flaky check"), 1, "yes", None, True]
    seen: list[Any] = []

    def t(context, handle):
        def condition() -> Any:
            answer = answers[len(seen)]
            seen.append(answer)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        handle.defer_until(condition, poll_interval_ms=5)
        return context

    _handle_task("truthy", t)
    assert runner.execute("truthy", timeout=20).status == "Completed"
    assert len(seen) == 5  # only the real True ended the wait
    assert "defer_until condition error" in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_the_handle_is_spent_when_the_call_returns(runner) -> None:
    kept: list[cloaca.TaskHandle] = []

    def t(context, task_handle):
        kept.append(task_handle)
        return context

    _handle_task("spent", t)
    assert runner.execute("spent", timeout=20).status == "Completed"
    [handle] = kept
    with pytest.raises(ValueError):
        handle.is_slot_held()
    with pytest.raises(ValueError):
        handle.defer_until(lambda: True)


@pytest.mark.timeout(60)
def test_bad_defer_until_arguments(runner) -> None:
    errors: list[type[BaseException]] = []

    def t(context, handle):
        for args in (("not callable",), (lambda: True, "100"), (lambda: True, 1.5), (lambda: True, -1)):
            try:
                handle.defer_until(*args)
            except Exception as exc:
                errors.append(type(exc))
        handle.defer_until(condition=lambda: True, poll_interval_ms=1)  # keyword names are contract
        return context

    _handle_task("bad_args", t)
    assert runner.execute("bad_args", timeout=20).status == "Completed"
    assert errors == [TypeError, TypeError, TypeError, ValueError]


@pytest.mark.timeout(60)
def test_a_deferral_past_the_task_timeout_fails_the_attempt_and_gives_the_slot_back() -> None:
    outcome: dict[str, Any] = {}
    ended = threading.Event()

    def t(context, handle):
        try:
            handle.defer_until(lambda: False, poll_interval_ms=20)
        except ValueError as exc:  # the attempt timed out: the waiting call ends instead of taking a slot
            outcome["error"] = exc
        finally:
            ended.set()
        return context

    _handle_task("forever", t)
    _handle_task("next_one", lambda context: context)
    config = cloaca.DefaultRunnerConfig(max_concurrent_tasks=1, task_timeout_seconds=1)
    with cloaca.DefaultRunner(":memory:", config) as one_slot:
        result = one_slot.execute("forever", timeout=20)
        assert result.status == "Failed" and "timed out" in (result.error_message or "")
        [attempt] = one_slot.runs.get_attempts(result.run_id, "t")
        assert attempt.error_kind == "transient"
        assert ended.wait(10) and isinstance(outcome.get("error"), ValueError)
        assert one_slot.execute("next_one", timeout=20).status == "Completed"  # the slot was not leaked


# -- the slot pool ---------------------------------------------------------------------------------------------
def test_slot_pool_counts_permits_and_a_resuming_task_goes_first() -> None:
    pool = SlotPool(1)
    first = pool.try_lease()
    assert first is not None and first.is_held and pool.try_lease() is None
    first.release()
    assert not first.is_held and pool.free == 1
    second = pool.try_lease()
    assert second is not None
    resumed = threading.Event()
    resumer = threading.Thread(target=lambda: first.reacquire() and resumed.set())
    resumer.start()
    wait_until(lambda: pool._resuming == 1, 5, message="the resumer to wait")
    second.close()
    assert resumed.wait(5) and first.is_held
    resumer.join(5)
    assert pool.try_lease() is None  # the resumer took the permit, not new work
    first.close()
    assert pool.free == 1


def test_closing_a_lease_wakes_its_pending_reacquire_without_a_permit() -> None:
    pool = SlotPool(1)
    lease = pool.try_lease()
    assert lease is not None
    lease.release()
    blocker = pool.try_lease()
    assert blocker is not None
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(lease.reacquire()))
    waiter.start()
    wait_until(lambda: pool._resuming == 1, 5, message="the re-acquisition to wait")
    lease.close()
    waiter.join(5)
    assert result == [False] and not lease.is_held
    assert pool.try_lease() is None  # the blocker still holds the only permit
    blocker.close()
    assert pool.free == 1
    with pytest.raises(ValueError):
        SlotPool(0)


# -- distributed: the worker slot ---------------------------------------------------------------------------------
def _app() -> ModuleType:
    """The handle app, (re)registered in this test's registry: the client needs its workflows to start runs."""
    module = sys.modules.get(HANDLE_APP)
    return importlib.reload(module) if module is not None else importlib.import_module(HANDLE_APP)


def _notes(cluster: Cluster, key: str) -> dict[str, list[Any]]:
    rows = cluster.sql("SELECT kind, payload FROM ev_notes WHERE key = :key ORDER BY id", key=key)
    out: dict[str, list[Any]] = {}
    for kind, payload in rows:
        out.setdefault(kind, []).append(json.loads(payload) if payload is not None else None)
    return out


def _client(cluster: Cluster) -> cloaca.DefaultRunner:
    return cloaca.DefaultRunner(cluster.direct_db_url, cloaca.DefaultRunnerConfig(broker_url=cluster.redis_url))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(150)
def test_a_deferring_task_lets_another_run_use_the_only_worker_slot(cluster: Cluster) -> None:
    app = _app()
    execute_sql(cluster.pg_url, cluster.schema, app.NOTES_DDL)
    worker = cluster.services.worker("w1", HANDLE_APP, concurrency=1)
    wait_for_worker_ready(worker)
    key, flag = f"wait-{uuid.uuid4().hex[:8]}", f"flag-{uuid.uuid4().hex[:8]}"
    with _client(cluster) as client:
        waiting = client.execute_async("defer_wait", {"key": key, "flag": flag})
        wait_until(lambda: "deferring" in _notes(cluster, key), 60, message="the waiter to defer")
        # One worker, one prefork child: the signal runs only because the deferring task released the slot.
        signal = client.execute("defer_signal", {"key": "signal", "flag": flag}, timeout=60)
        assert signal.status == "Completed"
        result = waiting.wait(timeout=60)
    assert result.status == "Completed", result.error_message
    assert all(result.final_context.get(name) is True for name in ("waited", "after", "left", "right", "join"))
    notes = _notes(cluster, key)
    assert notes["held_before"] == [True] and notes["held_after"] == [True]
    assert notes["held_during"][0] and not any(notes["held_during"][0])
    # Both runs executed in the worker's single child process.
    pids = {e.pid for e in cluster.executions()}
    assert len(pids) == 1 and {e.pgid for e in cluster.executions()} == {worker.pid}
    assert [e.task for e in cluster.executions() if e.run_key == "signal"] == ["signal"]
    assert {a[3] for a in cluster.attempts()} == {"Completed"}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_a_worker_killed_while_its_task_defers_is_recovered(cluster: Cluster) -> None:
    app = _app()
    execute_sql(cluster.pg_url, cluster.schema, app.NOTES_DDL)
    workers = [cluster.services.worker(f"w{n}", HANDLE_APP, concurrency=1) for n in (1, 2)]
    poller = cluster.services.poller("p1", HANDLE_APP)
    for w in workers:
        wait_for_worker_ready(w)
    wait_for_poller_ready(poller)
    key, flag = f"kill-{uuid.uuid4().hex[:8]}", f"flag-{uuid.uuid4().hex[:8]}"
    with _client(cluster) as client:
        waiting = client.execute_async("defer_wait", {"key": key, "flag": flag})
        wait_until(lambda: "deferring" in _notes(cluster, key), 60, message="the waiter to defer")
        [deferring] = [e for e in cluster.executions() if e.task == "waiter"]
        doomed = cluster.services.by_pid(deferring.pgid)
        assert doomed is not None and doomed in workers
        doomed.kill()
        survivor = workers[1 - workers.index(doomed)]
        # The lost attempt is given back and the run republished: the waiter defers again on the survivor.
        wait_until(lambda: len(_notes(cluster, key).get("deferring", [])) == 2, 90, message="the second deferral")
        execute_sql(  # now the condition holds
            cluster.pg_url,
            cluster.schema,
            f"INSERT INTO ev_notes (key, kind, pid, pgid, at) VALUES ('test', '{flag}', 0, 0, 0)",
        )
        result = waiting.wait(timeout=60)
    assert result.status == "Completed", result.error_message
    waiter_attempts = [a[3] for a in cluster.attempts() if a[1] == "waiter"]
    assert waiter_attempts == ["Lost", "Completed"]
    finished = [e for e in cluster.executions() if e.task == "waiter" and e.ended_at is not None]
    assert [e.pgid for e in finished] == [survivor.pid]
    assert "attempt lost with its worker" in poller.log_text()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(150)
def test_retries_and_callbacks_on_a_worker(cluster: Cluster) -> None:
    app = _app()
    execute_sql(cluster.pg_url, cluster.schema, app.NOTES_DDL)
    worker = cluster.services.worker("w1", HANDLE_APP, concurrency=1)
    wait_for_worker_ready(worker)
    key = f"flaky-{uuid.uuid4().hex[:8]}"
    with _client(cluster) as client:
        result = client.execute("dist_flaky", {"key": key}, timeout=90)
    assert result.status == "Completed", result.error_message
    notes = _notes(cluster, key)
    assert notes["call"] == [1, 2, 3]  # retry_attempts=3: three runs in all
    prefix = "Python task execution failed: ConnectionError: call"
    assert [n["message"] for n in notes["on_failure"]] == [f"{prefix} 1 lost its connection",
                                                           f"{prefix} 2 lost its connection"]  # fmt: skip
    assert [n["context"]["before_raise"] for n in notes["on_failure"]] == [1, 2]  # the context as changed
    assert [n["context"]["before_raise"] for n in notes["on_success"]] == [3]
    assert [a[3] for a in cluster.attempts()] == ["Failed", "Failed", "Completed"]
    [max_attempts] = cluster.sql("SELECT max_attempts FROM task_runs WHERE task_id = 'flaky'")[0]
    assert max_attempts == 3
