"""Contract §3 (tasks): the ``@task`` retry keywords, how a task function is called and what it may return, the
callbacks, and retries, on the embedded runner. Written from ``CLOACA_API.md`` §3.

The same coordinator code runs attempts on Celery workers; ``test_compat_task_handle.py`` and
``test_distributed_stretches.py`` cover the distributed side (retries, callbacks and deferrals on real workers).
Retry delays are checked as lower bounds on recorded attempt start times, never as wall-clock upper bounds.
"""

from __future__ import annotations

import itertools
import time
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cloacina as cloaca

pytestmark = pytest.mark.timeout(60)
PREFIX = "Python task execution failed: "


@pytest.fixture
def runner() -> Iterator[cloaca.DefaultRunner]:
    """A cheap single-backend runner for tests whose subject is not the store."""
    with cloaca.DefaultRunner(":memory:") as r:
        yield r


class _Outer:
    class Failure(Exception):
        """An exception class whose qualified name has a dot."""


class NetworkHiccup(Exception):
    """Transient by its name alone: the failure message embeds the type name."""


def _failing(
    name: str, failures: int, make_error: Callable[[int], BaseException], **options: Any
) -> tuple[list[int], list[tuple[str, str, dict]]]:
    """Workflow ``name`` whose task ``t`` raises ``make_error(n)`` on its first ``failures`` calls, with an
    ``on_failure`` recorder; returns (call numbers, on_failure calls as (task_id, message, context dict))."""
    calls: list[int] = []
    failures_seen: list[tuple[str, str, dict]] = []

    def on_failure(task_id: str, message: str, context: cloaca.Context) -> None:
        failures_seen.append((task_id, message, context.to_dict()))

    with cloaca.WorkflowBuilder(name):

        @cloaca.task(id="t", on_failure=on_failure, **options)
        def t(ctx):
            calls.append(len(calls) + 1)
            if len(calls) <= failures:
                raise make_error(len(calls))
            ctx.set("succeeded_on", len(calls))
            return ctx

    return calls, failures_seen


# -- retry_attempts counts every attempt ---------------------------------------------------------------------
def test_retry_attempts_is_the_total_number_of_runs(make_runner) -> None:
    calls, _ = _failing("three", 10, lambda n: ValueError(f"no {n}"), retry_attempts=3, retry_delay_ms=5)
    runner = make_runner()
    result = runner.execute("three")
    assert result.status == "Failed" and calls == [1, 2, 3]
    attempts = runner.runs.get_attempts(result.run_id, "t")
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert runner.runs.get_tasks(result.run_id)["t"].max_attempts == 3


def test_the_default_is_three_attempts(runner) -> None:
    assert _declare() == cloaca.RetryPolicy.default() and _declare().max_attempts == 3
    # Only the delay differs from the default here (waiting 1 s then 2 s would only slow the test down).
    calls, _ = _failing("fast_default", 10, lambda n: ValueError("no"), retry_delay_ms=5)
    result = runner.execute("fast_default")
    assert calls == [1, 2, 3] and len(runner.runs.get_attempts(result.run_id, "t")) == 3


@pytest.mark.parametrize(("attempts", "runs"), [(1, 1), (0, 1)])
def test_one_attempt_means_no_retry(runner, attempts: int, runs: int) -> None:
    calls, _ = _failing("once", 10, lambda n: ValueError("no"), retry_attempts=attempts, retry_delay_ms=5)
    assert runner.execute("once").status == "Failed" and len(calls) == runs


def test_success_on_the_last_allowed_attempt(runner) -> None:
    calls, _ = _failing("last_chance", 2, lambda n: ValueError("no"), retry_attempts=3, retry_delay_ms=5)
    result = runner.execute("last_chance")
    assert result.status == "Completed" and result.final_context.get("succeeded_on") == 3 and calls == [1, 2, 3]


# -- the retry keywords ----------------------------------------------------------------------------------------
def _declare(**options: Any) -> Any:
    """The retry policy ``@task(**options)`` builds (a standalone task: a raise at decoration comes out as is)."""
    fn = cloaca.task(id="kw_task", **options)(lambda ctx: ctx)
    return fn.__cloacina_task__.retry


def test_retry_policy_and_retry_keywords_together_are_a_value_error() -> None:
    policy = cloaca.RetryPolicy.default()
    for keyword, value in (
        ("retry_attempts", 2),
        ("retry_backoff", "fixed"),
        ("retry_delay_ms", 5),
        ("retry_max_delay_ms", 5),
        ("retry_condition", "never"),
        ("retry_jitter", False),
    ):
        with pytest.raises(ValueError, match=keyword):
            _declare(retry=policy, **{keyword: value})
    assert _declare(retry=policy, retry_attempts=None) is policy  # None means "not given"


def test_keyword_defaults_and_values() -> None:
    default = _declare()
    assert (default.max_attempts, default.initial_delay, default.max_delay, default.with_jitter) == (3, 1.0, 60.0, True)
    assert default.backoff == cloaca.BackoffStrategy.exponential(2.0)
    assert default.condition == cloaca.RetryCondition.all_errors()
    given = _declare(retry_attempts=5, retry_delay_ms=250, retry_max_delay_ms=9000, retry_jitter=False)
    assert (given.max_attempts, given.initial_delay, given.max_delay, given.with_jitter) == (5, 0.25, 9.0, False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fixed", cloaca.BackoffStrategy.fixed()),
        ("linear", cloaca.BackoffStrategy.linear(1.0)),
        ("exponential", cloaca.BackoffStrategy.exponential(2.0)),
        ("quadratic", cloaca.BackoffStrategy.fixed()),  # other strings mean fixed
        ("Exponential", cloaca.BackoffStrategy.fixed()),
    ],
)
def test_retry_backoff_names(name: str, expected: cloaca.BackoffStrategy) -> None:
    assert _declare(retry_backoff=name).backoff == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("all", cloaca.RetryCondition.all_errors()),
        ("transient", cloaca.RetryCondition.transient_only()),
        ("never", cloaca.RetryCondition.never()),
        ("sometimes", cloaca.RetryCondition.all_errors()),  # other strings mean all
    ],
)
def test_retry_condition_names(name: str, expected: cloaca.RetryCondition) -> None:
    assert _declare(retry_condition=name).condition == expected


def test_an_unknown_condition_string_retries_every_error(runner) -> None:
    calls, _ = _failing("anything", 1, lambda n: ValueError("no"), retry_condition="mostly", retry_delay_ms=5)
    assert runner.execute("anything").status == "Completed" and calls == [1, 2]


def test_an_unknown_backoff_string_waits_a_fixed_delay(runner) -> None:
    _failing("fixed_wait", 2, lambda n: ValueError("no"), retry_backoff="cubic", retry_delay_ms=40, retry_jitter=False)
    result = runner.execute("fixed_wait")
    attempts = runner.runs.get_attempts(result.run_id, "t")
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert result.status == "Completed" and all(gap >= 0.04 for gap in gaps), gaps


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retry_attempts": "3"}, TypeError),
        ({"retry_attempts": 2.0}, TypeError),
        ({"retry_attempts": -1}, ValueError),
        ({"retry_backoff": 2}, TypeError),
        ({"retry_delay_ms": 1.5}, TypeError),
        ({"retry_delay_ms": -10}, ValueError),
        ({"retry_max_delay_ms": "60s"}, TypeError),
        ({"retry_condition": ["all"]}, TypeError),
        ({"retry_jitter": "yes"}, TypeError),
        ({"retry": "exponential"}, TypeError),
        ({"invokes": object()}, ValueError),  # computation graphs are out of scope (§18)
    ],
)
def test_bad_retry_keywords(options: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        _declare(**options)


def test_delays_grow_as_the_backoff_says(runner) -> None:
    _failing("linear_wait", 3, lambda n: ValueError("no"), retry_attempts=4, retry_backoff="linear",
             retry_delay_ms=30, retry_jitter=False)  # fmt: skip
    result = runner.execute("linear_wait")
    attempts = runner.runs.get_attempts(result.run_id, "t")
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert result.status == "Completed"
    assert gaps[0] >= 0.03 and gaps[1] >= 0.06 and gaps[2] >= 0.09, gaps  # d·n after attempt n


def test_the_cap_bounds_the_delay_before_jitter(runner) -> None:
    policy = _declare(retry_delay_ms=1000, retry_max_delay_ms=100)  # a cap below the initial delay is allowed
    assert [policy.calculate_delay(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.1, 0.1], rel=0.26)


# -- transient failures --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_error",
    [
        lambda n: TimeoutError("took too long"),
        lambda n: ConnectionRefusedError("refused"),
        lambda n: urllib.error.URLError("[Errno 111] Connection refused"),
        lambda n: NetworkHiccup("blip"),  # the type name is part of the message
        lambda n: RuntimeError("backend temporarily Unavailable"),
        lambda n: OSError("temporary failure in name resolution"),
    ],
    ids=["TimeoutError", "ConnectionRefusedError", "URLError", "NetworkHiccup", "unavailable", "temporary"],
)
def test_transient_failures_are_retried_under_transient(runner, make_error) -> None:
    calls, _ = _failing("transient", 1, make_error, retry_condition="transient", retry_delay_ms=5)
    result = runner.execute("transient")
    assert result.status == "Completed" and calls == [1, 2]
    [first, _second] = runner.runs.get_attempts(result.run_id, "t")
    assert first.error_kind == "transient"


@pytest.mark.parametrize("make_error", [lambda n: ValueError("bad row"), lambda n: KeyError("missing")])
def test_other_failures_are_not_retried_under_transient(runner, make_error) -> None:
    calls, _ = _failing("permanent", 1, make_error, retry_condition="transient", retry_delay_ms=5)
    result = runner.execute("permanent")
    assert result.status == "Failed" and calls == [1]


def test_never_means_one_attempt(runner) -> None:
    calls, _ = _failing("never", 1, lambda n: TimeoutError("t"), retry_condition="never", retry_attempts=5)
    assert runner.execute("never").status == "Failed" and calls == [1]


@pytest.mark.timeout(60)
def test_exceeding_the_task_timeout_is_transient(make_runner) -> None:
    calls: list[int] = []
    with cloaca.WorkflowBuilder("slow_first"):

        @cloaca.task(id="slow", retry_condition="transient", retry_attempts=2, retry_delay_ms=5)
        def slow(ctx):
            calls.append(1)
            if len(calls) == 1:
                time.sleep(3)  # outlives the runner's 1 s task timeout: the behaviour under test
            ctx.set("attempt", len(calls))
            return ctx

    runner = make_runner(task_timeout_seconds=1)
    result = runner.execute("slow_first")
    assert result.status == "Completed" and result.final_context.get("attempt") == 2
    first = runner.runs.get_attempts(result.run_id, "slow")[0]
    assert first.status == "Failed" and first.error_kind == "transient"


# -- calling and returning -------------------------------------------------------------------------------------
def test_none_return_passes_the_input_on_as_received(runner) -> None:
    with cloaca.WorkflowBuilder("none_return"):

        @cloaca.task(id="mutates")
        def mutates(ctx):
            ctx.set("added", 1)
            ctx.set("given", "changed")
            del ctx["dropped"]

        @cloaca.task(id="after", dependencies=["mutates"])
        def after(ctx):
            ctx.set("seen", ctx.to_dict())
            return ctx

    result = runner.execute("none_return", cloaca.Context({"given": "orig", "dropped": True}))
    assert result.status == "Completed"
    assert result.final_context.get("seen") == {"given": "orig", "dropped": True}


def test_a_returned_context_or_dict_is_the_output(runner) -> None:
    with cloaca.WorkflowBuilder("returns"):

        @cloaca.task(id="fresh")
        def fresh(ctx):
            return cloaca.Context({"only": "this"})

        @cloaca.task(id="as_dict", dependencies=["fresh"])
        def as_dict(ctx):
            return {**ctx.to_dict(), "dict": True}  # our extension (§17)

    result = runner.execute("returns", cloaca.Context({"input": 1}))
    assert result.final_context.to_dict() == {"only": "this", "dict": True}


def test_any_other_return_fails_the_attempt_without_on_failure(runner) -> None:
    failures: list[str] = []
    with cloaca.WorkflowBuilder("bad_return"):

        @cloaca.task(id="answer", retry_attempts=2, retry_delay_ms=5, on_failure=lambda *a: failures.append(a[1]))
        def answer(ctx):
            return 42

    result = runner.execute("bad_return")
    assert result.status == "Failed" and failures == []
    attempts = runner.runs.get_attempts(result.run_id, "answer")
    assert len(attempts) == 2  # the failure is retried like any other under "all"
    assert attempts[0].error_message.startswith(PREFIX + "TypeError: ") and "returned int" in attempts[0].error_message


def test_a_task_error_never_reaches_execute(runner) -> None:
    _failing("contained", 10, lambda n: SystemExit(3), retry_attempts=1)
    result = runner.execute("contained")
    assert result.status == "Failed" and "SystemExit: 3" in (result.error_message or "")


@pytest.mark.parametrize(
    "signature",
    ["def t(context, handle): pass", "def t(ctx, task_handle, extra=None): pass"],
)
def test_a_second_parameter_named_handle_receives_a_task_handle(runner, signature: str) -> None:
    seen: list[Any] = []
    namespace: dict[str, Any] = {}
    exec(signature.replace("pass", "seen.append(locals().copy()); return None"), {"seen": seen}, namespace)
    with cloaca.WorkflowBuilder("gets_handle"):
        cloaca.task(id="t")(namespace["t"])
    assert runner.execute("gets_handle").status == "Completed"
    [args] = seen
    handle = args.get("handle", args.get("task_handle"))
    assert isinstance(handle, cloaca.TaskHandle)


@pytest.mark.parametrize(
    "signature",
    [
        "def t(context): pass",
        "def t(context, other=None): pass",
        "def t(context, *, handle=None): pass",  # keyword-only: not a positional parameter
        "def t(context, *handle): pass",
    ],
)
def test_other_signatures_are_called_with_the_context_only(runner, signature: str) -> None:
    seen: list[Any] = []
    namespace: dict[str, Any] = {}
    exec(signature.replace("pass", "seen.append(locals().copy()); return None"), {"seen": seen}, namespace)
    with cloaca.WorkflowBuilder("no_handle"):
        cloaca.task(id="t")(namespace["t"])
    assert runner.execute("no_handle").status == "Completed"
    [args] = seen
    assert not any(isinstance(v, cloaca.TaskHandle) for v in args.values() if not isinstance(v, tuple))
    assert args.get("other") is None and args.get("handle") in (None, ())


# -- callbacks -------------------------------------------------------------------------------------------------
def test_on_failure_runs_after_every_raised_attempt_with_the_message_and_the_received_context(runner) -> None:
    received: list[cloaca.Context] = []
    failures: list[tuple[str, str, cloaca.Context]] = []
    with cloaca.WorkflowBuilder("watched"):

        @cloaca.task(
            id="t",
            retry_attempts=3,
            retry_delay_ms=5,
            on_failure=lambda task_id, message, ctx: failures.append((task_id, message, ctx)),
        )
        def t(ctx):
            received.append(ctx)
            ctx.set("before_raise", len(received))
            if len(received) < 3:
                raise _Outer.Failure(f"boom {len(received)}")
            return ctx

    result = runner.execute("watched", cloaca.Context({"input": True}))
    assert result.status == "Completed"
    assert [(task_id, message) for task_id, message, _ in failures] == [
        ("t", PREFIX + "_Outer.Failure: boom 1"),  # the class's qualified name
        ("t", PREFIX + "_Outer.Failure: boom 2"),
    ]
    for (_, _, ctx), got in zip(failures, received, strict=False):
        assert ctx is got  # the very Context object the function received
    assert [ctx.to_dict() for _, _, ctx in failures] == [
        {"input": True, "before_raise": 1},
        {"input": True, "before_raise": 2},
    ]
    stored = [a.error_message for a in runner.runs.get_attempts(result.run_id, "t")]
    assert stored == [PREFIX + "_Outer.Failure: boom 1", PREFIX + "_Outer.Failure: boom 2", None]


def test_failure_message_of_an_exception_without_text(runner) -> None:
    _, failures = _failing("empty_text", 1, lambda n: ValueError(), retry_attempts=1)
    runner.execute("empty_text")
    assert [message for _, message, _ in failures] == [PREFIX + "ValueError: "]


def test_on_success_runs_once_with_the_output_before_the_task_is_completed(runner) -> None:
    successes: list[tuple[str, dict, str]] = []

    def on_success(task_id: str, ctx: cloaca.Context) -> None:
        [run] = runner.runs.list_runs(workflow_name="succeeds")
        status = str(runner.runs.get_tasks(run.run_id)[task_id].status)
        successes.append((task_id, ctx.to_dict(), status))

    with cloaca.WorkflowBuilder("succeeds"):

        @cloaca.task(id="t", retry_attempts=2, retry_delay_ms=5, on_success=on_success)
        def t(ctx, attempts=[]):  # noqa: B006 - the list counts calls across attempts
            attempts.append(1)
            if len(attempts) == 1:
                raise ValueError("first attempt fails")
            return cloaca.Context({"out": len(attempts)})

    result = runner.execute("succeeds", cloaca.Context({"in": 1}))
    assert result.status == "Completed"
    assert successes == [("t", {"out": 2}, "Running")]  # once, with the output, while not yet Completed


def test_no_on_success_for_a_failure_and_no_on_failure_for_a_success(runner) -> None:
    calls: list[str] = []
    with cloaca.WorkflowBuilder("one_each"):

        @cloaca.task(id="ok", on_failure=lambda *a: calls.append("ok:failure"),
                     on_success=lambda *a: calls.append("ok:success"))  # fmt: skip
        def ok(ctx):
            return ctx

        @cloaca.task(id="bad", retry_attempts=1, on_failure=lambda *a: calls.append("bad:failure"),
                     on_success=lambda *a: calls.append("bad:success"))  # fmt: skip
        def bad(ctx):
            raise RuntimeError("no")

    runner.execute("one_each")
    assert sorted(calls) == ["bad:failure", "ok:success"]


def test_a_raising_callback_is_printed_to_stderr_and_ignored(runner, capfd) -> None:
    def broken(*args: Any) -> None:
        raise LookupError("callback bug")

    with cloaca.WorkflowBuilder("broken_callbacks"):

        @cloaca.task(id="ok", on_success=broken)
        def ok(ctx):
            ctx.set("ok", True)
            return ctx

        @cloaca.task(id="bad", dependencies=["ok"], retry_attempts=2, retry_delay_ms=5, on_failure=broken)
        def bad(ctx):
            raise RuntimeError("no")

    result = runner.execute("broken_callbacks")
    tasks = runner.runs.get_tasks(result.run_id)
    assert str(tasks["ok"].status) == "Completed" and tasks["ok"].output_context == {"ok": True}
    assert len(runner.runs.get_attempts(result.run_id, "bad")) == 2  # a raising on_failure changes nothing
    err = capfd.readouterr().err
    assert "on_success callback failed for task 'ok': LookupError" in err
    assert err.count("on_failure callback failed for task 'bad': LookupError") == 2
