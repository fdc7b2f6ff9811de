"""Retries, task timeouts and task callbacks of the embedded ``DefaultRunner``.

Retry delays are checked as lower bounds on the recorded attempt start times (never as an upper bound on wall
time). Attempts are read back from the store with ``runner.runs.get_attempts``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Iterator

import pytest

import cloacina as cloaca

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runner() -> Iterator[cloaca.DefaultRunner]:
    """A cheap single-backend runner for tests whose subject is not the store."""
    with cloaca.DefaultRunner(":memory:") as r:
        yield r


def _flaky(failures: int, error: type[BaseException], **options) -> list[int]:
    """Workflow ``flaky`` whose only task raises ``error`` on its first ``failures`` calls; returns the call log."""
    calls: list[int] = []
    with cloaca.WorkflowBuilder("flaky"):

        @cloaca.task(id="flaky_task", **options)
        def flaky_task(ctx):
            calls.append(len(calls) + 1)
            if len(calls) <= failures:
                raise error(f"attempt {len(calls)} failed")
            ctx.set("succeeded_on", len(calls))
            return ctx

    return calls


# -- retries ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [cloaca.TransientError, ConnectionError])
def test_transient_error_is_retried_with_backoff(make_runner, error) -> None:
    calls = _flaky(2, error, retry_attempts=3, retry_backoff="exponential", retry_delay_ms=20, retry_jitter=False)
    runner = make_runner()
    result = runner.execute("flaky")
    assert result.status == "Completed"
    assert result.final_context.get("succeeded_on") == 3 and calls == [1, 2, 3]
    attempts = runner.runs.get_attempts(result.run_id, "flaky_task")
    assert [(a.attempt, a.status, a.error_kind) for a in attempts] == [
        (1, "Failed", "transient"),
        (2, "Failed", "transient"),
        (3, "Completed", None),
    ]
    assert attempts[0].error_message == f"Python task execution failed: {error.__name__}: attempt 1 failed"
    # Exponential from 20 ms: at least 20 ms before attempt 2 and 40 ms before attempt 3.
    gaps_ms = [(b.started_at - a.started_at).total_seconds() * 1000 for a, b in itertools.pairwise(attempts)]
    assert gaps_ms[0] >= 20 and gaps_ms[1] >= 40, gaps_ms
    task = runner.runs.get_tasks(result.run_id)["flaky_task"]
    assert (task.status, task.attempt, task.max_attempts) == ("Completed", 3, 3)  # retry_attempts counts all


def test_fixed_backoff_waits_the_same_delay(runner) -> None:
    _flaky(2, ValueError, retry_attempts=3, retry_backoff="fixed", retry_delay_ms=30, retry_jitter=False)
    result = runner.execute("flaky")
    attempts = runner.runs.get_attempts(result.run_id, "flaky_task")
    assert result.status == "Completed" and len(attempts) == 3
    gaps_ms = [(b.started_at - a.started_at).total_seconds() * 1000 for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 30 for gap in gaps_ms), gaps_ms


def test_retries_run_out(runner) -> None:
    calls = _flaky(10, ConnectionError, retry_attempts=2, retry_delay_ms=5, retry_jitter=False)
    result = runner.execute("flaky")
    assert result.status == "Failed" and calls == [1, 2]  # retry_attempts=2: two runs in all
    assert "Python task execution failed: ConnectionError: attempt 2 failed" in (result.error_message or "")
    assert [a.status for a in runner.runs.get_attempts(result.run_id, "flaky_task")] == ["Failed"] * 2


def test_retry_condition_never_fails_after_one_attempt(runner) -> None:
    calls = _flaky(1, cloaca.TransientError, retry_attempts=3, retry_delay_ms=5, retry_condition="never")
    result = runner.execute("flaky")
    assert result.status == "Failed" and calls == [1]
    assert len(runner.runs.get_attempts(result.run_id, "flaky_task")) == 1


def test_retry_condition_transient_does_not_retry_value_error(runner) -> None:
    calls = _flaky(1, ValueError, retry_attempts=3, retry_delay_ms=5, retry_condition="transient")
    result = runner.execute("flaky")
    assert result.status == "Failed" and calls == [1]
    [attempt] = runner.runs.get_attempts(result.run_id, "flaky_task")
    assert (attempt.error_kind, attempt.error_message) == (
        "error",
        "Python task execution failed: ValueError: attempt 1 failed",
    )


def test_permanent_error_is_never_retried(runner) -> None:
    calls = _flaky(1, cloaca.PermanentError, retry_attempts=3, retry_delay_ms=5, retry_condition="all")
    result = runner.execute("flaky")
    assert result.status == "Failed" and calls == [1]
    [attempt] = runner.runs.get_attempts(result.run_id, "flaky_task")
    assert attempt.error_kind == "permanent"


# -- task timeouts --------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_sync_task_timeout_fails_the_attempt(runner) -> None:
    with cloaca.WorkflowBuilder("sleepy"):

        @cloaca.task(id="sleepy", timeout_seconds=0.2, retry_attempts=0)
        def sleepy(ctx):
            time.sleep(1.0)  # outlives the 0.2 s task timeout: the behaviour under test
            ctx.set("woke", True)

    result = runner.execute("sleepy")
    assert result.status == "Failed"
    assert "TaskTimeoutError: task 'sleepy' timed out after 0.2s" in (result.error_message or "")
    [attempt] = runner.runs.get_attempts(result.run_id, "sleepy")
    assert attempt.error_kind == "transient" and "timed out" in (attempt.error_message or "")
    assert result.final_context.get("woke") is None


@pytest.mark.timeout(30)
def test_timed_out_attempt_is_retried(runner) -> None:
    calls: list[int] = []
    with cloaca.WorkflowBuilder("slow_once"):

        @cloaca.task(id="slow_once", timeout_seconds=0.2, retry_attempts=2, retry_delay_ms=20, retry_jitter=False)
        def slow_once(ctx):
            calls.append(1)
            if len(calls) == 1:
                time.sleep(1.0)  # outlives the timeout (the behaviour): this attempt's late result is discarded
            ctx.set("attempts_seen", len(calls))
            return ctx

    result = runner.execute("slow_once")
    assert result.status == "Completed" and result.final_context.get("attempts_seen") == 2
    attempts = runner.runs.get_attempts(result.run_id, "slow_once")
    assert [(a.status, a.error_kind) for a in attempts] == [("Failed", "transient"), ("Completed", None)]
    assert "TaskTimeoutError" in (attempts[0].error_message or "")


@pytest.mark.timeout(30)
def test_async_task_timeout(runner) -> None:
    with cloaca.WorkflowBuilder("async_sleepy"):

        @cloaca.task(id="async_sleepy", timeout_seconds=0.2, retry_attempts=0)
        async def async_sleepy(ctx):
            await asyncio.sleep(10)  # outlives the 0.2 s task timeout: the behaviour under test

    result = runner.execute("async_sleepy")
    assert result.status == "Failed"
    assert "TaskTimeoutError: task 'async_sleepy' timed out after 0.2s" in (result.error_message or "")


def test_runner_default_task_timeout_applies(make_runner) -> None:
    with cloaca.WorkflowBuilder("default_timeout"):

        @cloaca.task(id="lingers", retry_attempts=0)
        def lingers(ctx):
            time.sleep(3.0)  # outlives the runner's 1 s default task timeout: the behaviour under test

    result = make_runner(task_timeout_seconds=1).execute("default_timeout")
    assert result.status == "Failed" and "timed out after 1s" in (result.error_message or "")


# -- callbacks ----------------------------------------------------------------------------------------------
def test_callbacks_have_run_when_execute_returns(runner) -> None:
    # The last task's callback must not race the caller: the seed's demo prints it before "Workflow status".
    calls: list[str] = []

    # Slow callbacks (the behaviour under test): execute() must not return before they have run.
    def slow_success(task_id, context):
        time.sleep(0.2)
        calls.append(task_id)

    def slow_failure(task_id, error, context):
        time.sleep(0.2)
        calls.append(task_id)

    with cloaca.WorkflowBuilder("last_callbacks"):

        @cloaca.task(id="ok", on_success=slow_success)
        def ok(ctx):
            return ctx

        @cloaca.task(id="last", dependencies=["ok"], on_failure=slow_failure, retry_attempts=0)
        def last(ctx):
            raise ValueError("no")

    runner.execute("last_callbacks")
    assert calls == ["ok", "last"]


def test_callbacks_receive_the_documented_arguments(make_runner) -> None:
    successes: list[tuple] = []
    failures: list[tuple] = []

    def on_success(task_id, context):
        successes.append((task_id, context))

    def on_failure(task_id, error, context):
        failures.append((task_id, error, context))

    with cloaca.WorkflowBuilder("monitored"):

        @cloaca.task(id="good", on_success=on_success, on_failure=on_failure)
        def good(ctx):
            ctx.set("good", 1)
            return ctx

        @cloaca.task(
            id="bad",
            dependencies=["good"],
            on_success=on_success,
            on_failure=on_failure,
            retry_attempts=2,
            retry_delay_ms=5,
            retry_jitter=False,
        )
        def bad(ctx):
            raise RuntimeError("disk full")

    result = make_runner().execute("monitored", {"input": True})
    assert result.status == "Failed"
    assert [(t, c.to_dict()) for t, c in successes] == [("good", {"input": True, "good": 1})]
    # on_failure fires after every attempt that raised, retries included (retry_attempts=2: two attempts).
    assert len(failures) == 2
    for task_id, error, context in failures:
        assert (task_id, error) == ("bad", "Python task execution failed: RuntimeError: disk full")
        assert isinstance(context, cloaca.Context) and context.to_dict() == {"input": True, "good": 1}
    assert isinstance(successes[0][1], cloaca.Context)


def test_raising_callbacks_do_not_change_the_outcome(runner, capfd) -> None:
    def buggy_success(task_id, context):
        raise Exception("Callback error!")

    def buggy_failure(task_id, error, context):
        raise KeyError("also broken")

    with cloaca.WorkflowBuilder("resilient"):

        @cloaca.task(id="resilient_task", on_success=buggy_success)
        def resilient_task(ctx):
            ctx.set("result", "success")
            return ctx

        @cloaca.task(id="doomed", on_failure=buggy_failure, retry_attempts=0)
        def doomed(ctx):
            raise ValueError("expected")

        @cloaca.task(id="cleanup", dependencies=["doomed"], trigger_rules=cloaca.always())
        def cleanup(ctx):
            ctx.set("cleaned", True)
            return ctx

    result = runner.execute("resilient")
    tasks = runner.runs.get_tasks(result.run_id)
    assert tasks["resilient_task"].status == "Completed"
    assert (tasks["doomed"].status, tasks["doomed"].error_message) == (
        "Failed",
        "Python task execution failed: ValueError: expected",
    )
    assert tasks["cleanup"].status == "Completed"
    assert result.final_context.get("result") == "success" and result.final_context.get("cleaned") is True
    assert result.status == "Failed" and "also broken" not in (result.error_message or "")
    # A raising callback is printed to stderr (the callbacks ran before execute() returned).
    err = capfd.readouterr().err
    assert "on_success callback failed for task 'resilient_task': Exception: Callback error!" in err
    assert "on_failure callback failed for task 'doomed': KeyError: 'also broken'" in err


@pytest.mark.timeout(30)
def test_task_ending_itself_is_a_recorded_failure(runner) -> None:
    # Regression: sys.exit() in a task, or a coroutine raising CancelledError, used to escape as BaseException
    # and leave the attempt Running forever.
    with cloaca.WorkflowBuilder("quits"):

        @cloaca.task(id="quits", retry_attempts=0)
        def quits(ctx):
            sys.exit(3)

    with cloaca.WorkflowBuilder("cancels"):

        @cloaca.task(id="cancels", retry_attempts=0)
        async def cancels(ctx):
            raise asyncio.CancelledError()

    quit_result = runner.execute("quits", timeout=10)
    assert quit_result.status == "Failed" and "SystemExit: 3" in (quit_result.error_message or "")
    cancel_result = runner.execute("cancels", timeout=10)
    assert cancel_result.status == "Failed" and "CancelledError" in (cancel_result.error_message or "")
