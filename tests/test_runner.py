"""``DefaultRunner`` end to end, embedded mode, on every backend: results, context flow, trigger rules,
failures, run deadlines, async handles, concurrency, configuration and lifecycle.

Retries, task timeouts and callbacks are in ``test_runner_retries.py``.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta

import pytest

import cloacina as cloaca
from cloacina.definitions import registry

pytestmark = pytest.mark.timeout(60)


def _diamond(name: str = "diamond") -> None:
    """root -> (left, right) -> join_lr (deps left, right) and join_rl (deps right, left)."""
    with cloaca.WorkflowBuilder(name) as builder:
        builder.description("fan-out and fan-in")

        @cloaca.task(id="root")
        def root(ctx):
            ctx.set("items", ["root"])
            ctx.set("meta", {"root": 1})
            ctx.set("n", 0)
            return ctx

        @cloaca.task(id="left", dependencies=["root"])
        def left(ctx):
            ctx.set("items", [*ctx.get("items"), "left"])
            ctx.set("meta", {"left": 1})
            ctx.set("n", 1)
            return ctx

        @cloaca.task(id="right", dependencies=[root])
        def right(ctx):
            ctx.set("items", ["right"])
            ctx.set("meta", {"right": 2, "root": 9})
            ctx.set("n", 2)
            return ctx

        @cloaca.task(id="join_lr", dependencies=["left", "right"])
        def join_lr(ctx):
            ctx.set("seen_lr", {"items": ctx.get("items"), "meta": ctx.get("meta"), "n": ctx.get("n")})
            return ctx

        @cloaca.task(id="join_rl", dependencies=["right", "left"])
        def join_rl(ctx):
            ctx.set("seen_rl", {"items": ctx.get("items"), "n": ctx.get("n")})
            return ctx


def _chain() -> None:
    with cloaca.WorkflowBuilder("chain"):

        @cloaca.task(id="first")
        def first(ctx):
            ctx.set("trail", [*ctx.get("trail", []), "first"])
            return ctx

        @cloaca.task(id="second", dependencies=["first"])
        def second(ctx):
            ctx.set("trail", [*ctx.get("trail"), "second"])
            return None  # None passes the input on as received: the in-place change is discarded (cloaca)

        @cloaca.task(id="third", dependencies=["second"])
        def third(ctx):
            return {**ctx.to_dict(), "trail": [*ctx.get("trail"), "third"], "done": True}  # a dict is a context


def test_execute_returns_a_workflow_result(make_runner) -> None:
    _chain()
    runner = make_runner()
    result = runner.execute("chain", cloaca.Context({"trail": ["input"]}))
    assert isinstance(result, cloaca.WorkflowResult)
    assert result.status == "Completed" and result.is_success
    assert result.error_message is None
    assert isinstance(result.final_context, cloaca.Context)
    assert result.final_context.to_dict() == {"trail": ["input", "first", "third"], "done": True}
    assert result.start_time.endswith("+00:00") and result.end_time is not None  # RFC 3339 text, UTC
    assert datetime.fromisoformat(result.start_time) == result.started_at <= result.completed_at  # type: ignore[operator]
    assert result.started_at.utcoffset() == timedelta(0)
    record = runner.runs.get_run(result.run_id)
    assert record is not None and record.status == "Completed"
    assert runner.get_run(result.run_id).final_context == result.final_context
    tasks = runner.runs.get_tasks(result.run_id)
    assert tasks["second"].input_context == {"trail": ["input", "first"]}
    assert {t.status for t in tasks.values()} == {"Completed"}


def test_diamond_merges_both_branches(make_runner) -> None:
    _diamond()
    result = make_runner().execute("diamond")
    assert result.status == "Completed"
    final = result.final_context
    # Lists concatenate without duplicates, objects merge recursively, scalars: the later dependency wins.
    assert final.get("seen_lr") == {
        "items": ["root", "left", "right"],
        "meta": {"root": 9, "left": 1, "right": 2},
        "n": 2,
    }
    assert final.get("seen_rl") == {"items": ["right", "root", "left"], "n": 1}
    # final_context is the merge of the two leaves in topological order.
    assert final.get("items") == ["root", "left", "right"]
    assert final.get("meta") == {"root": 9, "left": 1, "right": 2}


def test_unknown_workflow_is_a_value_error_naming_it(make_runner) -> None:
    _chain()
    runner = make_runner()
    with pytest.raises(ValueError, match="unknown workflow 'no_such_workflow'") as info:
        runner.execute("no_such_workflow")
    assert "chain" in str(info.value)  # the message lists what is registered
    with pytest.raises(TypeError):
        runner.execute(42)  # type: ignore[arg-type]
    assert runner.runs.count_runs() == 0


def test_execute_accepts_workflow_object_dict_context_or_none(make_runner) -> None:
    @cloaca.task(id="echo")
    def echo(ctx):
        ctx.set("keys", sorted(ctx.keys()))
        return ctx

    builder = cloaca.WorkflowBuilder("unregistered")  # not used as a context manager: never registered
    builder.add_task(echo)
    workflow = builder.build()
    assert "unregistered" not in registry.workflow_names()
    runner = make_runner()
    assert runner.execute(workflow, {"a": 1}).final_context.get("keys") == ["a"]
    assert runner.execute(workflow, cloaca.Context({"b": 2})).final_context.to_dict() == {"b": 2, "keys": ["b"]}
    assert runner.execute(workflow, None).final_context.to_dict() == {"keys": []}
    assert runner.execute(workflow).status == "Completed"
    with pytest.raises(TypeError):
        runner.execute(workflow, ["not", "a", "context"])  # type: ignore[arg-type]


def test_workflow_constructor_is_called_at_registration(make_runner) -> None:
    calls = []

    def construct() -> cloaca.Workflow:
        calls.append(1)
        with cloaca.WorkflowBuilder("lazy") as builder:

            @cloaca.task(id="only")
            def only(ctx):
                ctx.set("lazy", True)
                return ctx  # None would pass the input on unchanged

            builder.add_task(only)
        return builder.build()

    cloaca.register_workflow_constructor("lazy", construct)
    assert calls == [1]  # cloaca calls the constructor at once
    assert make_runner().execute("lazy").final_context.get("lazy") is True


def test_false_rule_skips_the_task_and_downstream_still_runs(make_runner) -> None:
    with cloaca.WorkflowBuilder("gated"):

        @cloaca.task(id="start")
        def start(ctx):
            ctx.set("go", False)
            return ctx  # None would pass the input on unchanged

        @cloaca.task(id="gate", dependencies=["start"], trigger_rules=cloaca.context_value("go", "==", True))
        def gate(ctx):
            ctx.set("gate_ran", True)
            return ctx  # None would pass the input on unchanged

        @cloaca.task(id="after", dependencies=["gate"])
        def after(ctx):
            ctx.set("after_ran", True)
            return ctx  # None would pass the input on unchanged

    runner = make_runner()
    result = runner.execute("gated")
    assert result.status == "Completed"
    assert result.final_context.to_dict() == {"go": False, "after_ran": True}
    tasks = runner.runs.get_tasks(result.run_id)
    assert (tasks["gate"].status, tasks["gate"].skip_reason) == ("Skipped", "rule_false")
    assert runner.runs.get_attempts(result.run_id, "gate") == []
    assert tasks["after"].status == "Completed"


def test_failed_task_fails_the_run_and_downstream_still_runs(make_runner) -> None:
    with cloaca.WorkflowBuilder("breaks"):

        @cloaca.task(id="explode", retry_attempts=0)
        def explode(ctx):
            raise ValueError("kaput")

        @cloaca.task(id="child", dependencies=["explode"])
        def child(ctx):
            ctx.set("child", True)
            return ctx  # None would pass the input on unchanged

        @cloaca.task(id="grandchild", dependencies=["child"])
        def grandchild(ctx):
            ctx.set("grandchild", True)
            return ctx  # None would pass the input on unchanged

        @cloaca.task(id="independent")
        def independent(ctx):
            ctx.set("independent", True)
            return ctx  # None would pass the input on unchanged

    runner = make_runner()
    result = runner.execute("breaks", {"x": 1})
    assert result.status == "Failed" and not result.is_success
    assert result.error_message is not None
    assert "explode" in result.error_message and "ValueError: kaput" in result.error_message
    tasks = runner.runs.get_tasks(result.run_id)
    assert tasks["explode"].status == "Failed"
    # cloaca's default rule (Always): downstream tasks of a failure still run; the run is Failed all the same
    assert tasks["child"].status == "Completed" and tasks["grandchild"].status == "Completed"
    assert tasks["independent"].status == "Completed"
    assert result.final_context.get("independent") is True
    assert result.final_context.get("grandchild") is True


def test_task_failed_rule_runs_an_error_handler(make_runner) -> None:
    with cloaca.WorkflowBuilder("handled"):

        @cloaca.task(id="fetch", retry_attempts=0)
        def fetch(ctx):
            raise ConnectionError("upstream down")

        @cloaca.task(id="on_error", dependencies=["fetch"], trigger_rules=cloaca.task_failed("fetch"))
        def on_error(ctx):
            ctx.set("handled", True)
            return ctx  # None would pass the input on unchanged

        @cloaca.task(id="on_ok", dependencies=["fetch"], trigger_rules=cloaca.task_success("fetch"))
        def on_ok(ctx):
            ctx.set("ok", True)
            return ctx  # None would pass the input on unchanged

    runner = make_runner()
    result = runner.execute("handled", {"source": "api"})
    tasks = runner.runs.get_tasks(result.run_id)
    assert tasks["on_error"].status == "Completed"
    assert (tasks["on_ok"].status, tasks["on_ok"].skip_reason) == ("Skipped", "rule_false")
    assert result.final_context.get("handled") is True and result.final_context.get("ok") is None
    assert result.status == "Failed" and "fetch" in (result.error_message or "")


def test_async_tasks(make_runner) -> None:
    with cloaca.WorkflowBuilder("async_wf"):

        @cloaca.task(id="a")
        async def a(ctx):
            await asyncio.sleep(0.01)  # a task that really awaits something (the behaviour under test)
            ctx.set("a", True)
            return ctx

        @cloaca.task(id="b", dependencies=["a"])
        async def b(ctx):
            ctx.set("b", ctx.get("a"))
            return ctx  # None would pass the input on unchanged

    result = make_runner().execute("async_wf")
    assert result.status == "Completed"
    assert result.final_context.to_dict() == {"a": True, "b": True}


def test_non_context_return_fails_clearly(make_runner) -> None:
    with cloaca.WorkflowBuilder("returns_int"):

        @cloaca.task(id="answer", retry_attempts=0)
        def answer(ctx):
            return 42

    result = make_runner().execute("returns_int")
    assert result.status == "Failed"
    assert "'answer' returned int" in (result.error_message or "")
    assert "return the context" in (result.error_message or "")


def test_non_json_value_fails_naming_the_key(make_runner) -> None:
    with cloaca.WorkflowBuilder("bad_value"):

        @cloaca.task(id="store_set", retry_attempts=0)
        def store_set(ctx):
            ctx.set("handle", object())  # a set would be stored as a list (cloaca's JSON-on-write rule)

    result = make_runner().execute("bad_value")
    assert result.status == "Failed"
    assert "TypeError" in (result.error_message or "") and "'handle'" in (result.error_message or "")


@pytest.mark.timeout(30)
def test_workflow_timeout_fails_the_run(make_runner) -> None:
    release = threading.Event()
    with cloaca.WorkflowBuilder("slow_wf"):

        @cloaca.task(id="stuck", retry_attempts=0)
        def stuck(ctx):
            release.wait(10)

        @cloaca.task(id="never", dependencies=["stuck"])
        def never(ctx):
            ctx.set("never", True)

    runner = make_runner(workflow_timeout_seconds=1)
    try:
        with pytest.raises(ValueError, match="timed out") as info:  # cloaca: execute() raises ValueError
            runner.execute("slow_wf")
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, cloaca.WorkflowTimeoutError)
        result = runner.wait_for_run(info.value.run_id, 10)  # the run itself was failed at its deadline
        tasks = runner.runs.get_tasks(result.run_id)
    finally:
        release.set()
    assert result.status == "Failed" and "timed out" in (result.error_message or "")
    assert tasks["stuck"].status == "Failed" and tasks["never"].status == "Skipped"


@pytest.mark.timeout(30)
def test_execute_async_handle(make_runner) -> None:
    release = threading.Event()
    with cloaca.WorkflowBuilder("held"):

        @cloaca.task(id="hold")
        def hold(ctx):
            release.wait(10)
            ctx.set("released", True)
            return ctx  # None would pass the input on unchanged

    runner = make_runner()
    handle = runner.execute_async("held", {"k": "v"})
    try:
        assert isinstance(handle.run_id, str) and handle.run_id
        with pytest.raises(TimeoutError):
            handle.wait(timeout=0.05)
        assert handle.status() in ("Pending", "Running")
    finally:
        release.set()
    result = handle.wait(timeout=10)
    assert (result.run_id, result.status) == (handle.run_id, "Completed")
    assert result.final_context.to_dict() == {"k": "v", "released": True}
    assert handle.status() == "Completed"


@pytest.mark.timeout(60)
def test_many_concurrent_runs_complete(make_runner) -> None:
    _diamond("many")
    runner = make_runner(max_concurrent_tasks=4)
    handles = [runner.execute_async("many", {"i": i}) for i in range(30)]
    results = [h.wait(timeout=45) for h in handles]
    assert [r.status for r in results] == ["Completed"] * 30
    assert len({r.run_id for r in results}) == 30
    assert [r.final_context.get("i") for r in results] == list(range(30))
    assert all(r.final_context.get("seen_lr")["n"] == 2 for r in results)
    assert runner.runs.count_runs(status="Completed") == 30


# -- configuration and lifecycle ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"max_concurrent_tasks": 0},
        {"max_concurrent_tasks": -1},
        {"task_timeout_seconds": -1},
        {"task_timeout_seconds": 0},
        {"workflow_timeout_seconds": -5},
        {"trigger_poll_timeout_seconds": -1},
        {"cron_poll_interval_seconds": -1},
        {"recovery_stale_after_seconds": -1},
        {"db_pool_size": 0},
        {"cron_catchup_policy": "sometimes"},
        {"cron_max_catchup_executions": 1001},
        {"scheduler_poll_interval_ms": 9},
    ],
)
def test_config_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        cloaca.DefaultRunnerConfig(**bad)
    config = cloaca.DefaultRunnerConfig()
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError):
        setattr(config, key, value)  # validated on assignment too


def test_config_is_checked_by_the_runner() -> None:
    with pytest.raises(TypeError, match="DefaultRunnerConfig"):
        cloaca.DefaultRunner(":memory:", {"max_concurrent_tasks": 2})  # type: ignore[arg-type]
    with cloaca.DefaultRunner.with_config(":memory:", cloaca.DefaultRunnerConfig(max_concurrent_tasks=2)) as r:
        assert r.config.max_concurrent_tasks == 2


def test_shutdown_is_idempotent_and_final(make_runner) -> None:
    _chain()
    runner = make_runner()
    assert runner.execute("chain").status == "Completed"
    runner.shutdown()
    runner.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        runner.execute("chain")
    with pytest.raises(RuntimeError, match="shut down"):
        runner.execute_async("chain")


def test_context_manager_shuts_down(backend) -> None:
    _chain()
    with cloaca.DefaultRunner(backend.url, schema=backend.schema) as runner:
        assert runner.execute("chain").status == "Completed"
    with pytest.raises(RuntimeError):
        runner.execute("chain")


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_config_rejects_non_finite_durations(value: float) -> None:
    with pytest.raises(ValueError):
        cloaca.DefaultRunnerConfig(trigger_poll_timeout_seconds=value)  # a cloacina field: seconds as a float
    with pytest.raises(TypeError):
        cloaca.DefaultRunnerConfig(task_timeout_seconds=value)  # cloaca's fields are ints


def test_config_rejects_unknown_options() -> None:
    with pytest.raises(TypeError):
        cloaca.DefaultRunnerConfig(no_such_option=1)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        cloaca.DefaultRunnerConfig().no_such_option = 1  # type: ignore[attr-defined]
