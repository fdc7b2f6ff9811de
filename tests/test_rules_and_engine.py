"""Trigger rules (construction, serialization, evaluation), context merge, and the pure run planner."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloacina import all_of, always, any_of, context_value, none_of, task_failed, task_skipped, task_success
from cloacina.definitions.rules import parse_rule
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.workflow import Workflow, build_workflow
from cloacina.engine.merge import json_equal, merge_contexts, merge_values
from cloacina.engine.planner import TaskView, final_context, plan, run_outcome
from cloacina.engine.rule_eval import evaluate_rule
from cloacina.engine.states import RunStatus, SkipReason, TaskStatus

S = TaskStatus
FAIL = "fail"

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=4), json_values, max_size=5)
conditions = (
    st.builds(task_success, st.sampled_from(["a", "b"]))
    | st.builds(task_failed, st.sampled_from(["a", "b"]))
    | st.builds(task_skipped, st.sampled_from(["a", "b"]))
    | st.builds(context_value, st.sampled_from(["k", "n"]), st.sampled_from(["==", ">", "contains"]), json_values)
)
rules = (
    st.just(always())
    | conditions
    | st.lists(conditions, max_size=3).flatmap(lambda cs: st.sampled_from([all_of(*cs), any_of(*cs), none_of(*cs)]))
)


# -- rule construction and serialization -----------------------------------------------------------------
def test_builders_return_cloaca_dicts() -> None:
    def fn(ctx: Any) -> Any:
        return ctx

    fn.task_id = "from_fn"  # type: ignore[attr-defined]
    assert always() == {"type": "Always"}
    assert task_success("a") == {"type": "TaskSuccess", "task_name": "a"}
    assert task_failed("a") == {"type": "TaskFailed", "task_name": "a"}
    assert task_skipped(fn) == {"type": "TaskSkipped", "task_name": "from_fn"}  # extension: a @task function
    assert all_of(task_success("a"), task_failed("b")) == {
        "type": "All",
        "conditions": [task_success("a"), task_failed("b")],
    }
    assert context_value("n", ">=", 3) == {"type": "ContextValue", "key": "n", "operator": "GreaterOrEqual", "value": 3}
    assert context_value("n", "exists", None)["operator"] == "Exists"
    nested = parse_rule(any_of(task_success("a"), task_failed("b"), task_skipped("c")))
    assert nested.referenced_tasks() == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("==", "Equals"),
        ("eq", "Equals"),
        ("EQUALS", "Equals"),
        ("not_equals", "NotEquals"),
        ("Not_Equals", "NotEquals"),
        ("<=", "LessOrEqual"),
        ("greater_than", "GreaterThan"),
        ("NOT_EXISTS", "NotExists"),
    ],
)
def test_operator_aliases_normalise(alias: str, canonical: str) -> None:
    assert context_value("k", alias, 1)["operator"] == canonical


def test_rule_constructor_errors() -> None:
    with pytest.raises(ValueError, match="unknown operator '~='"):
        context_value("k", "~=", 1)
    with pytest.raises(TypeError):
        context_value(1, "==", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        task_success(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        context_value("k", "==", {1, 2})
    with pytest.raises(ValueError, match="unknown trigger rule type"):
        parse_rule({"kind": "maybe"})
    with pytest.raises(ValueError, match="do not nest"):
        parse_rule(all_of(any_of(task_success("a"))))
    with pytest.raises(ValueError, match="task_name"):
        parse_rule(task_success(""))


@given(rules)
def test_rule_dict_round_trip(rule: dict[str, Any]) -> None:
    parsed = parse_rule(rule)
    assert parse_rule(parsed.to_dict()) == parsed
    assert parse_rule(copy.deepcopy(parsed.to_dict())).to_dict() == parsed.to_dict()


def _holds(rule: dict[str, Any], statuses: dict[str, TaskStatus], context: dict[str, Any]) -> bool:
    return evaluate_rule(parse_rule(rule), statuses, context)


# -- rule evaluation -------------------------------------------------------------------------------------
STATUSES = {"ok": S.COMPLETED, "bad": S.FAILED, "skip": S.SKIPPED}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (always(), True),
        (task_success("ok"), True),
        (task_success("bad"), False),
        (task_failed("bad"), True),
        (task_skipped("skip"), True),
        (task_skipped("ok"), False),
        (task_success("unknown"), False),
        (task_success("public::embedded::wf::ok"), True),  # a qualified name names the task
        (all_of(), True),
        (any_of(), False),
        (none_of(), True),
        (all_of(task_success("ok"), task_failed("bad")), True),
        (all_of(task_success("ok"), task_failed("ok")), False),
        (any_of(task_failed("ok"), task_skipped("skip")), True),
        (none_of(task_failed("ok"), task_failed("bad")), False),
        (none_of(task_failed("ok")), True),
    ],
)
def test_status_rules(rule: dict[str, Any], expected: bool) -> None:
    assert _holds(rule, STATUSES, {}) is expected


CTX = {"n": 5, "s": "hello", "l": [1, 2, {"a": 1}], "d": {"k": 1}, "none": None, "flag": True, "f": 2.5}


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("n", "==", 5, True),
        ("n", "==", 5.0, False),  # JSON values as cloaca compares them: an integer is not a float
        ("f", "==", 2.5, True),
        ("n", "==", "5", False),
        ("flag", "==", True, True),
        ("flag", "==", 1, False),
        ("n", "!=", 4, True),
        ("n", "!=", 5, False),
        ("n", ">", 4, True),
        ("n", ">", 4.5, True),
        ("n", ">", 5, False),
        ("n", ">=", 5, True),
        ("n", "<", 6, True),
        ("n", "<", 5, False),
        ("n", "<=", 5, True),
        ("f", ">", 2, True),
        ("s", "contains", "ell", True),
        ("s", "not_contains", "xyz", True),
        ("l", "contains", 2, True),
        ("l", "contains", {"a": 1}, True),
        ("l", "contains", True, False),
        ("l", "not_contains", 3, True),
        ("d", "==", {"k": 1}, True),
        ("l", "==", [1, 2, {"a": 1}], True),
        ("none", "==", None, True),
        ("none", "exists", None, True),
        ("n", "exists", None, True),
        ("n", "not_exists", None, False),
    ],
)
def test_context_value_operators(key: str, op: str, value: Any, expected: bool) -> None:
    assert _holds(context_value(key, op, value), {}, CTX) is expected


MISSING_KEY = {"==": False, "!=": True, ">": False, ">=": False, "<": False, "<=": False, "contains": False}
MISSING_KEY |= {"not_contains": True, "exists": False, "not_exists": True}


@pytest.mark.parametrize(("op", "expected"), MISSING_KEY.items())
def test_context_value_on_missing_key(op: str, expected: bool) -> None:
    assert _holds(context_value("absent", op, 1), {}, CTX) is expected


def test_missing_key_equals_nothing_not_even_null() -> None:
    assert _holds(context_value("absent", "==", None), {}, CTX) is False
    assert _holds(context_value("absent", "!=", None), {}, CTX) is True


@pytest.mark.parametrize(
    ("key", "op", "value"),
    [
        ("s", ">", 1),
        ("s", ">", "apple"),  # strings are not compared: only numbers are
        ("s", "<=", 1),
        ("none", "<", 1),
        ("flag", ">", 0),  # a boolean is not a number
        ("l", ">=", 1),
        ("d", ">", {"k": 0}),
        ("n", "contains", 1),
        ("s", "contains", 1),
        ("d", "contains", "k"),  # an object's keys are not searched
        ("d", "contains", [1]),
    ],
)
def test_incomparable_values_are_false_not_errors(key: str, op: str, value: Any) -> None:
    assert _holds(context_value(key, op, value), {}, CTX) is False


# -- merge -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (
            {"a": {"x": 1, "z": {"p": 1}}},
            {"a": {"y": 2, "z": {"q": 2}}},
            {"a": {"x": 1, "y": 2, "z": {"p": 1, "q": 2}}},
        ),
        ({"l": [1, 2]}, {"l": [2, 3, 1, 4]}, {"l": [1, 2, 3, 4]}),
        ({"l": [{"a": 1}]}, {"l": [{"a": 1}, {"a": 2}]}, {"l": [{"a": 1}, {"a": 2}]}),
        ({"l": [1, 0]}, {"l": [True, False, 1.0]}, {"l": [1, 0, True, False]}),
        ({"v": 1}, {"v": 2}, {"v": 2}),
        ({"v": 1}, {"v": None}, {"v": None}),
        ({"v": {"x": 1}}, {"v": 3}, {"v": 3}),
        ({"v": [1]}, {"v": {"x": 1}}, {"v": {"x": 1}}),
        ({"v": "s"}, {"v": [1]}, {"v": [1]}),
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
    ],
)
def test_merge_values(left: dict, right: dict, expected: dict) -> None:
    assert merge_values(left, right) == expected
    assert json_equal(merge_values(left, right), expected)


def test_merge_contexts_folds_in_order() -> None:
    assert merge_contexts([]) == {}
    assert merge_contexts([{"v": 1, "l": [1]}, {"v": 2, "l": [2]}, {"v": 3, "l": [1]}]) == {"v": 3, "l": [1, 2]}


def test_json_equal_keeps_booleans_apart_from_numbers() -> None:
    assert json_equal(1, 1.0) and json_equal({"a": [1]}, {"a": [1.0]})
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal([True], [1])
    assert not json_equal({"a": 1}, {"a": 1, "b": 2}) and not json_equal([1], [1, 1])


@given(json_objects)
def test_merge_with_empty_is_identity(data: dict) -> None:
    assert merge_values(data, {}) == data
    assert merge_values({}, data) == data
    assert merge_values(data, data) == data


@given(json_objects, json_objects)
def test_merge_does_not_mutate_or_alias_inputs(left: dict, right: dict) -> None:
    left_before, right_before = copy.deepcopy(left), copy.deepcopy(right)
    merged = merge_values(left, right)
    assert left == left_before and right == right_before
    assert set(merged) == set(left) | set(right)
    for key, value in right.items():
        if not isinstance(value, dict | list):
            assert json_equal(merged[key], value)  # scalars: last wins
    for value in merged.values():
        if isinstance(value, dict | list):
            value.clear()
    assert left == left_before and right == right_before


# -- planner ---------------------------------------------------------------------------------------------
def _wf(spec: dict[str, tuple[list[str], dict[str, Any] | None]]) -> Workflow:
    tasks = {
        tid: TaskDefinition(tid, lambda c: c, tuple(deps), trigger_rule=parse_rule(rule) if rule else None)
        for tid, (deps, rule) in spec.items()
    }
    return build_workflow("planned", tasks)


Behaviour = Callable[[dict[str, Any]], dict[str, Any]] | str


def _simulate(wf: Workflow, run_input: dict[str, Any], behaviours: dict[str, Behaviour]) -> dict[str, TaskView]:
    """Drive the planner to the end: each run task's output is its behaviour applied to its input, or a failure."""
    views = {tid: TaskView() for tid in wf.task_ids}
    for _ in range(len(views) + 1):
        decisions = plan(wf, run_input, views)
        if not decisions:
            return views
        for d in decisions:
            if d.action == "skip":
                views[d.task_id] = TaskView(S.SKIPPED, d.input_context, d.skip_reason)
            elif behaviours.get(d.task_id) == FAIL:
                views[d.task_id] = TaskView(S.FAILED)
            else:
                action = behaviours.get(d.task_id, lambda ctx: ctx)
                views[d.task_id] = TaskView(S.COMPLETED, action(dict(d.input_context)))  # type: ignore[operator]
    raise AssertionError("planner did not converge")


def _adds(**items: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda ctx: {**ctx, **items}


def test_chain_passes_outputs_along() -> None:
    wf = _wf({"a": ([], None), "b": (["a"], None), "c": (["b"], None)})
    views = {t: TaskView() for t in wf.task_ids}
    first = plan(wf, {"in": 1}, views)
    assert [(d.task_id, d.action, d.input_context) for d in first] == [("a", "run", {"in": 1})]
    views["a"] = TaskView(S.RUNNING)
    assert plan(wf, {"in": 1}, views) == []  # nothing new while a runs
    views["a"] = TaskView(S.COMPLETED, {"in": 1, "a": 1})
    assert [(d.task_id, d.input_context) for d in plan(wf, {"in": 1}, views)] == [("b", {"in": 1, "a": 1})]
    assert run_outcome(views) is None

    done = _simulate(wf, {"in": 1}, {"a": _adds(a=1), "b": _adds(b=2), "c": _adds(c=3)})
    assert run_outcome(done) == RunStatus.COMPLETED
    assert final_context(wf, done) == {"in": 1, "a": 1, "b": 2, "c": 3}


def test_root_input_is_a_copy_of_the_run_input() -> None:
    wf = _wf({"a": ([], None)})
    run_input = {"l": [1]}
    (decision,) = plan(wf, run_input, {"a": TaskView()})
    decision.input_context["l"].append(2)
    assert run_input == {"l": [1]}


def test_diamond_merges_dependencies_in_declaration_order() -> None:
    wf = _wf({"a": ([], None), "b": (["a"], None), "c": (["a"], None), "d": (["c", "b"], None)})
    seen: dict[str, Any] = {}

    def record(ctx: dict[str, Any]) -> dict[str, Any]:
        seen.update(ctx)
        return ctx

    views = _simulate(
        wf,
        {},
        {
            "a": _adds(items=["a"]),
            "b": lambda ctx: {**ctx, "who": "b", "items": [*ctx["items"], "b"], "nested": {"b": 1}},
            "c": lambda ctx: {**ctx, "who": "c", "items": [*ctx["items"], "c"], "nested": {"c": 1}},
            "d": record,
        },
    )
    assert seen == {"who": "b", "items": ["a", "c", "b"], "nested": {"c": 1, "b": 1}}
    assert run_outcome(views) == RunStatus.COMPLETED


def test_fan_out_releases_all_dependents_at_once() -> None:
    wf = _wf({"a": ([], None), "b": (["a"], None), "c": (["a"], None), "d": (["a"], None)})
    views = {t: TaskView() for t in wf.task_ids}
    views["a"] = TaskView(S.COMPLETED, {"x": 1})
    decisions = plan(wf, {}, views)
    assert [(d.task_id, d.action) for d in decisions] == [("b", "run"), ("c", "run"), ("d", "run")]
    assert all(d.input_context == {"x": 1} for d in decisions)


def test_rule_false_skip_passes_input_through_and_downstream_still_runs() -> None:
    gate = context_value("go", "==", True)
    wf = _wf({"a": ([], None), "b": (["a"], gate), "c": (["b"], None), "d": (["c"], None)})
    views = {t: TaskView() for t in wf.task_ids}
    views["a"] = TaskView(S.COMPLETED, {"go": False, "a": 1})
    decisions = plan(wf, {}, views)
    assert [(d.task_id, d.action, d.skip_reason) for d in decisions] == [
        ("b", "skip", SkipReason.RULE_FALSE),
        ("c", "run", None),
    ]
    assert decisions[1].input_context == {"go": False, "a": 1}

    done = _simulate(wf, {"go": False}, {"a": _adds(a=1), "b": _adds(b=1), "c": _adds(c=1)})
    assert done["b"].status == S.SKIPPED and done["b"].output == {"go": False, "a": 1}
    assert done["d"].status == S.COMPLETED
    assert run_outcome(done) == RunStatus.COMPLETED
    assert final_context(wf, done) == {"go": False, "a": 1, "c": 1}

    ran = _simulate(wf, {"go": True}, {"b": _adds(b=1)})
    assert ran["b"].status == S.COMPLETED and final_context(wf, ran) == {"go": True, "b": 1}


def test_default_rule_runs_downstream_of_a_failure_and_the_run_still_fails() -> None:
    wf = _wf({"a": ([], None), "b": (["a"], None), "c": (["b"], None), "d": (["c"], None), "side": ([], None)})
    views = {t: TaskView() for t in wf.task_ids}
    views["a"] = TaskView(S.FAILED)
    views["side"] = TaskView(S.COMPLETED, {"side": 1})
    decisions = plan(wf, {}, views)
    assert [(d.task_id, d.action, d.input_context) for d in decisions] == [("b", "run", {})]
    done = _simulate(wf, {"in": 0}, {"a": FAIL, "b": _adds(b=1), "c": _adds(c=1), "side": _adds(side=1)})
    assert [done[t].status for t in "bcd"] == [S.COMPLETED] * 3
    assert run_outcome(done) == RunStatus.FAILED  # a run with a failed task ends Failed
    assert final_context(wf, done) == {"b": 1, "c": 1, "in": 0, "side": 1}


def test_fan_in_after_a_failure_merges_the_outputs_that_exist() -> None:
    wf = _wf({"a": ([], None), "b": ([], None), "join": (["a", "b"], None)})
    done = _simulate(wf, {"in": 1}, {"a": FAIL, "b": _adds(b=1), "join": _adds(joined=True)})
    assert done["join"].status == S.COMPLETED
    assert done["join"].output == {"in": 1, "b": 1, "joined": True}
    assert run_outcome(done) == RunStatus.FAILED


def test_task_failed_rule_runs_an_error_handler() -> None:
    wf = _wf({"a": ([], None), "handler": (["a"], task_failed("a")), "next": (["a"], task_success("a"))})
    failed = _simulate(wf, {"in": 1}, {"a": FAIL, "handler": _adds(handled=True)})
    assert failed["handler"].status == S.COMPLETED and failed["handler"].output == {"handled": True}
    assert failed["next"].status == S.SKIPPED and failed["next"].skip_reason == "rule_false"
    assert run_outcome(failed) == RunStatus.FAILED

    ok = _simulate(wf, {"in": 1}, {"handler": _adds(handled=True)})
    assert ok["handler"].status == S.SKIPPED and ok["handler"].skip_reason == "rule_false"
    assert ok["next"].status == S.COMPLETED
    assert run_outcome(ok) == RunStatus.COMPLETED


def test_always_rule_runs_after_failure_and_rule_reads_task_input() -> None:
    wf = _wf({"a": ([], None), "b": (["a"], always()), "c": (["b"], context_value("b_ran", "exists", None))})
    done = _simulate(wf, {}, {"a": FAIL, "b": _adds(b_ran=True)})
    assert done["b"].status == S.COMPLETED and done["c"].status == S.COMPLETED


def test_plan_leaves_started_and_finished_tasks_alone() -> None:
    wf = _wf({"a": ([], None), "b": ([], None)})
    views = {"a": TaskView(S.COMPLETED, {}), "b": TaskView(S.READY)}
    assert plan(wf, {}, views) == []
    assert run_outcome(views) is None
    assert run_outcome({"a": TaskView(S.SKIPPED, {}), "b": TaskView(S.COMPLETED, {})}) == RunStatus.COMPLETED


def test_final_context_merges_leaves_in_topological_order() -> None:
    wf = _wf({"a": ([], None), "x": (["a"], None), "y": (["a"], None), "z": (["a"], task_failed("a"))})
    assert wf.leaves == ("x", "y", "z")
    done = _simulate(
        wf,
        {"base": 1},
        {"x": _adds(who="x", l=["x"], o={"x": 1}), "y": _adds(who="y", l=["y"], o={"y": 1})},
    )
    assert done["z"].status == S.SKIPPED
    assert final_context(wf, done) == {"base": 1, "who": "y", "l": ["x", "y"], "o": {"x": 1, "y": 1}}
    done["y"] = TaskView(S.FAILED)
    assert final_context(wf, done) == {"base": 1, "who": "x", "l": ["x"], "o": {"x": 1}}
