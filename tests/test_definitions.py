"""WorkflowBuilder, @task, Workflow validation and versioning, @trigger and TriggerResult, and the registry."""

from __future__ import annotations

from typing import Any

import pytest

from cloacina import (
    Context,
    DefinitionError,
    RetryPolicy,
    TriggerPollError,
    TriggerResult,
    Workflow,
    WorkflowBuilder,
    all_of,
    any_of,
    register_workflow_constructor,
    task,
    task_failed,
    task_success,
    trigger,
)
from cloacina.definitions import registry
from cloacina.definitions.trigger import to_trigger_result
from cloacina.errors import WorkflowNotFoundError


def _fn() -> Any:
    """A fresh task function (the decorators attach their definition to the function object)."""

    def run(ctx: Any) -> Any:
        return ctx

    return run


# -- WorkflowBuilder -------------------------------------------------------------------------------------
def test_builder_registers_on_exit_with_metadata() -> None:
    with WorkflowBuilder("etl") as builder:
        assert builder.description("extract then load") is None
        assert builder.tag("team", "data") is None

        @task(id="extract")
        def extract(ctx: Any) -> Any:
            return ctx

        @task(id="load", dependencies=["extract"])
        def load(ctx: Any) -> Any:
            return ctx

        assert "etl" not in registry.workflow_names()  # only on exit
    wf = registry.get_workflow("etl")
    assert isinstance(wf, Workflow)
    assert wf.task_ids == ("extract", "load")
    assert wf.description == "extract then load"
    assert dict(wf.tags) == {"team": "data"}
    assert wf.roots == ("extract",) and wf.leaves == ("load",)
    assert wf.get_task("load").dependencies == ("extract",)
    assert extract.task_id == "extract" and extract(5) == 5  # the function stays callable


def test_builder_exit_runs_even_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), WorkflowBuilder("broken"):
        task(id="a")(_fn())
        raise RuntimeError("boom")
    assert registry.get_workflow("broken").task_ids == ("a",)
    assert registry.current_scope() is None
    with pytest.raises(ValueError, match="no tasks") as info, WorkflowBuilder("broken_empty"):
        raise RuntimeError("before any task")
    assert isinstance(info.value.__context__, RuntimeError)  # the block's error is chained
    with pytest.raises(WorkflowNotFoundError, match="broken_empty"):
        registry.get_workflow("broken_empty")


def test_standalone_tasks_are_usable_by_add_task_and_dependencies() -> None:
    task(id="shared_one")(_fn())
    shared_two = task(id="shared_two", dependencies=["shared_one"])(_fn())
    shared_three = task(id="shared_three", dependencies=[shared_two])(_fn())
    builder = WorkflowBuilder("reuse")
    assert builder.add_task("shared_one") is None
    builder.add_task(shared_two)
    builder.add_task(shared_three.__cloacina_task__)
    wf = builder.build()
    assert wf.topological_order == ("shared_one", "shared_two", "shared_three")
    assert "reuse" not in registry.workflow_names()  # build() alone does not register
    with WorkflowBuilder("uses_shared"):
        task(id="mine", dependencies=["shared_two"])(_fn())
    assert registry.get_workflow("uses_shared").topological_order == ("shared_one", "shared_two", "mine")


def test_add_task_rejects_unknown_id_and_plain_function() -> None:
    builder = WorkflowBuilder("adds")
    with pytest.raises(ValueError, match="'nope'"):
        builder.add_task("nope")
    with pytest.raises(ValueError, match="'run' not found"):
        builder.add_task(_fn())
    with pytest.raises(ValueError, match="Task must be either a string task ID or a function object"):
        builder.add_task(42)  # type: ignore[arg-type]


def test_builder_metadata_validation() -> None:
    builder = WorkflowBuilder("meta")
    with pytest.raises(TypeError, match="description"):
        builder.description(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tag"):
        builder.tag("k", 1)  # type: ignore[arg-type]


def test_nested_builders_scope_tasks_to_the_innermost() -> None:
    with WorkflowBuilder("outer"):
        task(id="o")(_fn())
        with WorkflowBuilder("inner"):
            task(id="i")(_fn())
        task(id="o2")(_fn())
    assert registry.get_workflow("outer").task_ids == ("o", "o2")
    assert registry.get_workflow("inner").task_ids == ("i",)


def test_workflow_context_lets_bare_tasks_register_for_a_loader() -> None:
    with registry.workflow_context("pkg_wf", package="my_pkg") as scope:
        assert registry.current_scope() is scope
        task(id="first")(_fn())
        task(id="second", dependencies=["first"])(_fn())
    assert registry.current_scope() is None
    assert "pkg_wf" not in registry.workflow_names()  # the loader decides
    wf = registry.collect_workflow("pkg_wf", package="my_pkg")
    assert wf.topological_sort() == ["public::my_pkg::pkg_wf::first", "public::my_pkg::pkg_wf::second"]
    with pytest.raises(ValueError, match="no tasks"):
        registry.collect_workflow("pkg_wf")  # another namespace: nothing there


# -- @task options ---------------------------------------------------------------------------------------
def test_task_every_option() -> None:
    def ok(*args: Any) -> None:
        return None

    with WorkflowBuilder("opts"):

        @task
        def bare(ctx: Any) -> Any:
            """Docstring becomes the description."""
            return ctx

        retry = {"retry_attempts": 5, "retry_backoff": "linear", "retry_delay_ms": 10, "retry_max_delay_ms": 100}
        retry |= {"retry_condition": "transient", "retry_jitter": False}
        callbacks = {"on_success": ok, "on_failure": ok}
        rule = task_success("bare")

        @task(
            id="full", dependencies=[bare], **retry, **callbacks, trigger_rules=rule, timeout_seconds=2, description="x"
        )
        async def full(ctx: Any) -> Any:
            return ctx

        task(id="policy", retry=RetryPolicy(max_attempts=1, condition="never"), timeout_seconds=0.5)(_fn())

    wf = registry.get_workflow("opts")
    bare_def, full_def, policy_def = (wf.get_task(t) for t in ("bare", "full", "policy"))
    assert bare_def.description == "Docstring becomes the description."
    assert bare_def.retry == RetryPolicy() and bare_def.timeout_s is None and not bare_def.is_async
    assert full_def.dependencies == ("bare",)
    assert full_def.retry == RetryPolicy(
        max_attempts=5, backoff="linear", initial_delay=0.01, max_delay=0.1, condition="transient", with_jitter=False
    )
    assert full_def.on_success is ok and full_def.on_failure is ok
    assert full_def.trigger_rule is not None and full_def.trigger_rule.to_dict() == all_of(task_success("bare"))
    assert full_def.timeout_s == 2.0 and full_def.description == "x" and full_def.is_async
    assert policy_def.retry.max_attempts == 1 and policy_def.timeout_s == 0.5


def test_trigger_rules_given_as_dict() -> None:
    with WorkflowBuilder("dict_rule") as builder:
        task(id="a")(_fn())
        task(id="b", dependencies=["a"], trigger_rules={"type": "TaskFailed", "task_name": "a"})(lambda ctx: ctx)
        builder.add_task("a")
        builder.add_task("b")
    assert builder.build().get_task("b").trigger_rule.to_dict() == all_of(task_failed("a"))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retries": 3}, "retries"),
        ({"retry_attempts": 3, "bogus_flag": 1}, "bogus_flag"),
        ({"retry": RetryPolicy(), "retry_attempts": 2}, "cannot be combined"),
        ({"retry_attempts": -1}, "retry_attempts"),
        ({"retry_delay_ms": -5}, "retry_delay_ms"),
        ({"on_success": "not callable"}, "on_success"),
        ({"on_failure": 42}, "on_failure"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": -1.5}, "timeout_seconds"),
        ({"timeout_seconds": "10"}, "timeout_seconds"),
        ({"timeout_seconds": True}, "timeout_seconds"),
        ({"dependencies": "a"}, "dependencies must be a list"),
        ({"dependencies": [3]}, "dependency"),
        ({"dependencies": ["x", "x"]}, "twice"),
        ({"trigger_rules": "always"}, "trigger_rules"),
        ({"trigger_rules": {"type": "nonsense"}}, "trigger_rules"),
        ({"trigger_rules": all_of(any_of(task_success("a")))}, "trigger_rules"),
    ],
)
def test_bad_task_options_raise_value_error_naming_the_culprit(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        task(id="t", **options)(_fn())


def test_task_level_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match=r"'t'.*retry_attempts"):
        task(id="t", retry_attempts=-1)(_fn())
    with pytest.raises(ValueError, match="'self_ref' depends on itself"):
        task(id="self_ref", dependencies=["self_ref"])(_fn())


@pytest.mark.parametrize("bad", ["", "has space", ".dot", "-dash", "a" * 201, "semi;colon", "ünï"])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid task id"):
        task(id=bad)(_fn())
    with pytest.raises(ValueError, match="invalid workflow name"):
        WorkflowBuilder(bad)
    with pytest.raises(ValueError, match="invalid trigger name"):
        trigger(workflow="wf", name=bad)(_fn())
    assert registry.triggers() == []
    with pytest.raises(TypeError, match="WorkflowBuilder name"):
        WorkflowBuilder(None)  # type: ignore[arg-type]


def test_lambda_needs_an_explicit_id() -> None:
    with pytest.raises(ValueError, match="'<lambda>'"):
        task()(lambda ctx: ctx)
    with pytest.raises(ValueError, match="'<lambda>'"):
        trigger(workflow="wf")(lambda: True)


# -- workflow validation ---------------------------------------------------------------------------------
def test_cycle_is_rejected_and_shown() -> None:
    with pytest.raises(ValueError, match="cycle") as info, WorkflowBuilder("cyclic"):
        task(id="start")(_fn())
        task(id="a", dependencies=["start", "c"])(_fn())
        task(id="b", dependencies=["a"])(_fn())
        task(id="c", dependencies=["b"])(_fn())
    message = str(info.value)
    assert "'cyclic'" in message
    cycle = message.split("cycle: ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    assert "start" not in cycle
    assert "cyclic" not in registry.workflow_names()


def test_unknown_dependency_names_task_and_dependency() -> None:
    with pytest.raises(DefinitionError, match="task 'b' depends on unknown task 'ghost'") as info:  # noqa: SIM117
        with WorkflowBuilder("unknown_dep"):
            task(id="a")(_fn())
            task(id="b", dependencies=["a", "ghost"])(_fn())
    assert isinstance(info.value, ValueError) and info.value.subject == "b"


def test_redeclaring_a_task_id_replaces_it() -> None:
    def second(ctx: Any) -> Any:
        return ctx

    with WorkflowBuilder("dupes"):
        task(id="x")(_fn())
        task(id="x")(second)
    wf = registry.get_workflow("dupes")
    assert wf.task_ids == ("x",) and wf.get_task("x").function is second


def test_empty_workflow_is_rejected() -> None:
    with pytest.raises(ValueError, match="'empty' has no tasks"), WorkflowBuilder("empty"):
        pass
    assert "empty" not in registry.workflow_names()


def test_rule_on_non_upstream_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="task 'c' refers to 'b', which is not upstream"), WorkflowBuilder("side"):
        task(id="a")(_fn())
        task(id="b", dependencies=["a"])(_fn())
        task(id="c", dependencies=["a"], trigger_rules=task_success("b"))(_fn())


def test_rule_on_unknown_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="task 'b' refers to unknown task 'zzz'"), WorkflowBuilder("unknown_rule"):
        task(id="a")(_fn())
        task(id="b", dependencies=["a"], trigger_rules=task_failed("zzz"))(_fn())


def test_rule_on_transitive_ancestor_is_allowed() -> None:
    with WorkflowBuilder("transitive"):
        task(id="a")(_fn())
        task(id="b", dependencies=["a"])(_fn())
        task(id="c", dependencies=["b"], trigger_rules=task_failed("a"))(_fn())
    assert registry.get_workflow("transitive").ancestors("c") == {"a", "b"}


# -- versions --------------------------------------------------------------------------------------------
def _versioned(name: str = "ver", *, dep: bool = True, attempts: int = 3, timeout: float | None = None) -> Workflow:
    with WorkflowBuilder(name):
        task(id="a")(_fn())
        task(id="b", dependencies=["a"] if dep else [], retry_attempts=attempts, timeout_seconds=timeout)(_fn())
    return registry.get_workflow(name)


def test_version_is_a_stable_content_hash() -> None:
    first, second = _versioned(), _versioned()
    assert first.version == second.version
    assert len(first.version) == 16 and int(first.version, 16) >= 0
    assert registry.get_workflow("ver").version == first.version


def test_version_changes_with_definition() -> None:
    base = _versioned().version
    assert _versioned(dep=False).version != base
    assert _versioned(attempts=1).version != base
    assert _versioned(timeout=5).version != base
    assert _versioned(name="ver2").version != base


def test_version_changes_with_code() -> None:
    def one(ctx: Any) -> Any:
        return ctx

    def two(ctx: Any) -> Any:
        ctx.set("x", 1)
        return ctx

    versions = set()
    for fn in (one, two):
        builder = WorkflowBuilder("code")
        builder.add_task(task(id="a")(fn))  # re-registering a global task id replaces it
        versions.add(builder.build().version)
    assert len(versions) == 2


# -- constructors ----------------------------------------------------------------------------------------
def _one_task_workflow(name: str, task_id: str) -> Workflow:
    builder = WorkflowBuilder(name)
    builder.add_task(task(id=task_id)(_fn()))
    return builder.build()


def test_register_workflow_constructor_calls_the_constructor_at_once() -> None:
    calls: list[int] = []

    def construct() -> Workflow:
        calls.append(1)
        return _one_task_workflow("lazy", "lazy_a")

    assert register_workflow_constructor("lazy", construct) is None
    assert calls == [1]
    assert registry.get_workflow("lazy").task_ids == ("lazy_a",)
    assert registry.get_workflow("lazy") is registry.get_workflow("lazy")
    assert calls == [1]


def test_constructor_workflow_is_registered_under_the_given_name() -> None:
    register_workflow_constructor("alias", lambda: _one_task_workflow("something_else", "z"))
    wf = registry.get_workflow("alias")
    assert wf.name == "alias" and wf.task_ids == ("z",)
    assert "something_else" not in registry.workflow_names()


def test_register_workflow_constructor_validation() -> None:
    with pytest.raises(ValueError, match="callable"):
        register_workflow_constructor("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid workflow name"):
        register_workflow_constructor("bad name", lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="returned str"):
        register_workflow_constructor("wrong_type", lambda: "nope")  # type: ignore[arg-type,return-value]

    def raises() -> Workflow:
        raise KeyError("inside")

    with pytest.raises(ValueError, match="KeyError"):
        register_workflow_constructor("raising", raises)
    assert "wrong_type" not in registry.workflow_names() and "raising" not in registry.workflow_names()


def test_unknown_workflow_lists_known_names() -> None:
    register_workflow_constructor("known_one", lambda: _one_task_workflow("known_one", "k"))
    with pytest.raises(WorkflowNotFoundError, match=r"'missing'.*known_one"):
        registry.get_workflow("missing")


# -- @trigger --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("interval", "ms"), [("100ms", 100), ("5s", 5000), ("1m", 60_000), ("1h", 3_600_000)])
def test_trigger_accepts_poll_intervals(interval: str, ms: int) -> None:
    @trigger(workflow="wf", poll_interval=interval)
    def my_trigger() -> TriggerResult:
        return TriggerResult.skip()

    definition = registry.get_trigger("my_trigger")
    assert definition is not None
    assert definition.poll_interval_ms == ms and definition.workflow == "wf"
    assert definition.allow_concurrent is False
    assert my_trigger.__cloacina_trigger__ is definition
    assert my_trigger().is_skip_result()  # still callable


@pytest.mark.parametrize("interval", ["5", "5x", "", "1.5s", "-5s", "5 sec", "\u0665s"])
def test_trigger_rejects_bad_poll_interval_at_decoration(interval: object) -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        trigger(workflow="wf", poll_interval=interval)  # type: ignore[arg-type]
    assert registry.triggers() == []


def test_trigger_name_options_and_validation() -> None:
    @trigger(workflow="wf", name="custom", allow_concurrent=True)
    async def poll() -> bool:
        return True

    definition = registry.get_trigger("custom")
    assert definition is not None and definition.allow_concurrent and definition.is_async
    assert definition.poll_interval_ms == 5000  # default "5s"
    with pytest.raises(ValueError, match="allow_concurrent"):
        trigger(workflow="wf", allow_concurrent="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid workflow name"):
        trigger(workflow="bad wf")
    with pytest.raises(ValueError, match="function"):
        trigger(workflow="wf", name="n")("not a function")  # type: ignore[arg-type]


def test_trigger_listeners_are_called_and_removable() -> None:
    seen: list[str] = []

    def listener(definition: Any) -> None:
        seen.append(definition.name)

    registry.add_trigger_listener(listener)
    try:
        trigger(workflow="wf", name="first")(lambda: False)
    finally:
        registry.remove_trigger_listener(listener)
    trigger(workflow="wf", name="second")(lambda: False)
    assert seen == ["first"]


# -- TriggerResult ---------------------------------------------------------------------------------------
def test_trigger_result_skip_and_fire() -> None:
    skip, fire_none = TriggerResult.skip(), TriggerResult.fire()
    ctx = Context({"k": 1})
    fire_ctx = TriggerResult.fire(ctx)
    assert skip.is_skip_result() and not skip.is_fire_result() and skip.context is None
    assert fire_none.is_fire_result() and not fire_none.is_skip_result() and fire_none.context is None
    assert fire_ctx.is_fire_result() and fire_ctx.context == ctx
    assert repr(skip) == "TriggerResult.Skip"
    assert repr(fire_none) == "TriggerResult.Fire(None)"
    assert repr(fire_ctx) == "TriggerResult.Fire(<context>)"
    assert TriggerResult.fire({"k": 1}) == fire_ctx != fire_none != skip


def test_fire_with_dict_builds_context_and_rejects_other_types() -> None:
    result = TriggerResult.fire({"path": "/tmp/x"})
    assert isinstance(result.context, Context) and result.context.get("path") == "/tmp/x"
    with pytest.raises(TypeError, match="fire"):
        TriggerResult.fire("str")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'bad'"):
        TriggerResult.fire({"bad": object()})


@pytest.mark.parametrize("value", [None, 1, 0, "fire", {"a": 1}, Context()])
def test_to_trigger_result_accepts_results_and_bools_only(value: object) -> None:
    fired = TriggerResult.fire({"a": 1})
    assert to_trigger_result(fired, "t") is fired
    assert to_trigger_result(True, "t") == TriggerResult.fire()
    assert to_trigger_result(False, "t") == TriggerResult.skip()
    with pytest.raises(TriggerPollError, match="'my_poll'") as info:
        to_trigger_result(value, "my_poll")
    assert info.value.trigger_name == "my_poll"
