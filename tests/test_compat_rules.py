"""CLOACA_API §5, trigger rules: builder dict shapes, operator spellings, ``trigger_rules=`` validation, and the
evaluation semantics, including the default rule ``Always`` (a task runs after a failed dependency), end to end
on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

import cloacina as cloaca
from cloacina.definitions import registry

# -- builders return plain dicts of cloaca's shapes ------------------------------------------------------------


def test_condition_builders_return_cloaca_dicts() -> None:
    assert cloaca.context_value("rows", "Equals", 3) == {
        "type": "ContextValue",
        "key": "rows",
        "operator": "Equals",
        "value": 3,
    }
    assert cloaca.task_success("extract") == {"type": "TaskSuccess", "task_name": "extract"}
    assert cloaca.task_failed("extract") == {"type": "TaskFailed", "task_name": "extract"}
    assert cloaca.task_skipped("extract") == {"type": "TaskSkipped", "task_name": "extract"}
    assert type(cloaca.task_success("x")) is dict


def test_rule_builders_return_cloaca_dicts() -> None:
    a, b = cloaca.task_success("a"), cloaca.context_value("k", "exists", None)
    assert cloaca.all_of(a, b) == {"type": "All", "conditions": [a, b]}
    assert cloaca.any_of(a) == {"type": "Any", "conditions": [a]}
    assert cloaca.none_of() == {"type": "None", "conditions": []}
    assert cloaca.always() == {"type": "Always"}
    assert type(cloaca.all_of(a)) is dict


def test_context_value_takes_its_three_arguments_by_name_and_all_are_required() -> None:
    assert cloaca.context_value(key="k", operator="eq", value=[1, (2, 3)]) == {
        "type": "ContextValue",
        "key": "k",
        "operator": "Equals",
        "value": [1, [2, 3]],
    }
    with pytest.raises(TypeError):
        cloaca.context_value("k", "Exists")  # type: ignore[call-arg]
    assert cloaca.task_failed(task_name="t") == {"type": "TaskFailed", "task_name": "t"}


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Equals", "Equals"),
        ("equals", "Equals"),
        ("EQUALS", "Equals"),
        ("==", "Equals"),
        ("eq", "Equals"),
        ("EQ", "Equals"),
        ("NotEquals", "NotEquals"),
        ("not_equals", "NotEquals"),
        ("NOT_EQUALS", "NotEquals"),
        ("!=", "NotEquals"),
        ("ne", "NotEquals"),
        ("GreaterThan", "GreaterThan"),
        ("greater_than", "GreaterThan"),
        (">", "GreaterThan"),
        ("gt", "GreaterThan"),
        ("LessThan", "LessThan"),
        ("less_than", "LessThan"),
        ("<", "LessThan"),
        ("lt", "LessThan"),
        ("Contains", "Contains"),
        ("contains", "Contains"),
        ("NotContains", "NotContains"),
        ("not_contains", "NotContains"),
        ("Exists", "Exists"),
        ("exists", "Exists"),
        ("NotExists", "NotExists"),
        ("not_exists", "NotExists"),
        ("_not__exists_", "NotExists"),  # every `_` is ignored
    ],
)
def test_operator_spellings_are_stored_pascal_case(spelling: str, canonical: str) -> None:
    assert cloaca.context_value("k", spelling, 1)["operator"] == canonical


@pytest.mark.parametrize("bad", ["", "equal", "is", "=", "===", "greater", "like", "in", "not equals", "~="])
def test_unknown_operator_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="operator"):
        cloaca.context_value("k", bad, 1)


def test_wrong_argument_types_are_type_errors_and_non_json_values_value_errors() -> None:
    with pytest.raises(TypeError):
        cloaca.context_value(3, "Equals", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.context_value("k", 3, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.task_success(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        cloaca.context_value("k", "Equals", object())
    with pytest.raises(ValueError, match="JSON"):
        cloaca.all_of(object())


# -- trigger_rules= -----------------------------------------------------------------------------------------


def _fn(ctx: Any) -> Any:
    return ctx


def _rule_of(task_id: str, workflow: str) -> dict[str, Any]:
    rule = registry.get_workflow(workflow).get_task(task_id).trigger_rule
    assert rule is not None
    return rule.to_dict()


def test_bare_condition_is_wrapped_in_all_and_hand_written_dicts_are_equivalent() -> None:
    with cloaca.WorkflowBuilder("rule_shapes"):
        cloaca.task(id="a")(_fn)
        cloaca.task(id="bare", dependencies=["a"], trigger_rules=cloaca.task_success("a"))(lambda c: c)
        hand = {"type": "All", "conditions": [{"type": "TaskSuccess", "task_name": "a"}]}
        cloaca.task(id="hand", dependencies=["a"], trigger_rules=hand)(lambda c: c)
        cv = {"type": "ContextValue", "key": "n", "operator": "greater_than", "value": 2}
        cloaca.task(id="cv", dependencies=["a"], trigger_rules=cv)(lambda c: c)
        cloaca.task(id="alw", dependencies=["a"], trigger_rules={"type": "Always"})(lambda c: c)
    expected = cloaca.all_of(cloaca.task_success("a"))
    assert _rule_of("bare", "rule_shapes") == expected == _rule_of("hand", "rule_shapes")
    assert _rule_of("cv", "rule_shapes") == cloaca.all_of(cloaca.context_value("n", "GreaterThan", 2))
    assert _rule_of("alw", "rule_shapes") == cloaca.always()


@pytest.mark.parametrize(
    "bad",
    [
        cloaca.all_of(cloaca.any_of(cloaca.task_success("a"))),  # a combinator nested in a combinator
        cloaca.any_of(cloaca.always()),
        {"type": "All", "conditions": [{"type": "Bogus"}]},
        {"type": "All", "conditions": "not a list"},
        {"type": "All", "conditions": [1]},
        {"type": "ContextValue", "key": "k", "operator": "roughly", "value": 1},
        {"type": "TaskSuccess"},
        {"type": "Sometimes"},
        {"conditions": []},
        "Always",
        ["Always"],
        42,
    ],
)
def test_bad_trigger_rules_are_value_errors_at_decoration(bad: Any) -> None:
    def target(ctx: Any) -> Any:
        return ctx

    with pytest.raises(ValueError):
        cloaca.task(id="t", trigger_rules=bad)(target)
    assert registry.find_task("t") is None


# -- evaluation semantics, end to end -----------------------------------------------------------------------


def _statuses(runner: Any, result: Any) -> dict[str, str]:
    return {tid: str(t.status) for tid, t in runner.runs.get_tasks(result.run_id).items()}


def test_default_rule_runs_downstream_of_a_failure_and_the_run_fails(make_runner: Any) -> None:
    with cloaca.WorkflowBuilder("default_rule"):

        @cloaca.task(id="extract", retry_attempts=1)
        def extract(ctx: cloaca.Context) -> cloaca.Context:
            raise RuntimeError("source down")

        @cloaca.task(id="load", dependencies=["extract"])
        def load(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("load_saw", sorted(ctx.to_dict()))
            return ctx

        @cloaca.task(id="report", dependencies=["load"])
        def report(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("reported", True)
            return ctx

    runner = make_runner()
    result = runner.execute("default_rule", cloaca.Context({"job": 7}))
    assert result.status == "Failed"
    assert _statuses(runner, result) == {"extract": "Failed", "load": "Completed", "report": "Completed"}
    assert result.final_context.get("reported") is True
    assert result.final_context.get("load_saw") == []  # a failed dependency contributes no output


def test_task_conditions_check_the_named_tasks_status(make_runner: Any) -> None:
    with cloaca.WorkflowBuilder("status_rules"):

        @cloaca.task(id="ok")
        def ok(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

        @cloaca.task(id="bad", retry_attempts=1)
        def bad(ctx: cloaca.Context) -> cloaca.Context:
            raise ValueError("no")

        @cloaca.task(id="gated", dependencies=["ok"], trigger_rules=cloaca.context_value("go", "==", True))
        def gated(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

        rules = {
            "on_failure": cloaca.task_failed("bad"),
            "on_success": cloaca.task_success("bad"),
            "on_skip": cloaca.task_skipped("gated"),
            "all": cloaca.all_of(cloaca.task_success("ok"), cloaca.task_failed("bad")),
            "any": cloaca.any_of(cloaca.task_success("bad"), cloaca.task_skipped("gated")),
            "none": cloaca.none_of(cloaca.task_success("bad"), cloaca.task_success("gated")),
            "none_false": cloaca.none_of(cloaca.task_success("ok")),
            "always": cloaca.always(),
        }
        for task_id, rule in rules.items():
            cloaca.task(id=task_id, dependencies=["ok", "bad", "gated"], trigger_rules=rule)(_fn)

    runner = make_runner()
    result = runner.execute("status_rules", {"go": False})
    statuses = _statuses(runner, result)
    assert result.status == "Failed"
    assert (statuses["ok"], statuses["bad"], statuses["gated"]) == ("Completed", "Failed", "Skipped")
    ran = {t for t in rules if statuses[t] == "Completed"}
    assert ran == {"on_failure", "on_skip", "all", "any", "none", "always"}
    assert {statuses[t] for t in set(rules) - ran} == {"Skipped"}


CONTEXT = {"n": 5, "f": 2.5, "s": "hello world", "l": [1, "two", {"k": 3}], "o": {"k": 1}, "null": None, "b": True}
CASES: list[tuple[str, str, Any, bool]] = [
    ("n", "Equals", 5, True),
    ("n", "Equals", 6, False),
    ("n", "Equals", "5", False),
    ("b", "Equals", True, True),
    ("b", "Equals", 1, False),  # JSON: a boolean is not a number
    ("o", "Equals", {"k": 1}, True),
    ("l", "Equals", [1, "two", {"k": 3}], True),
    ("null", "Equals", None, True),
    ("missing", "Equals", None, False),  # a missing key equals nothing
    ("n", "NotEquals", 6, True),
    ("missing", "NotEquals", 1, True),
    ("n", "GreaterThan", 4.5, True),
    ("f", "GreaterThan", 2, True),
    ("n", "GreaterThan", 5, False),
    ("s", "GreaterThan", "a", False),  # only numbers compare
    ("b", "GreaterThan", 0, False),
    ("missing", "GreaterThan", 0, False),
    ("n", "LessThan", 5.5, True),
    ("f", "LessThan", 2, False),
    ("n", "LessThan", "9", False),
    ("s", "Contains", "lo wo", True),
    ("s", "Contains", "xyz", False),
    ("l", "Contains", "two", True),
    ("l", "Contains", {"k": 3}, True),
    ("l", "Contains", 2, False),
    ("o", "Contains", "k", False),  # neither a string nor an array
    ("n", "Contains", 5, False),
    ("s", "NotContains", "xyz", True),
    ("l", "NotContains", 1, False),
    ("missing", "NotContains", 1, True),
    ("null", "Exists", None, True),
    ("missing", "Exists", None, False),
    ("missing", "NotExists", "ignored", True),
    ("n", "NotExists", None, False),
]


def test_context_value_reads_the_tasks_input_context(make_runner: Any) -> None:
    with cloaca.WorkflowBuilder("context_rules"):

        @cloaca.task(id="produce")
        def produce(ctx: cloaca.Context) -> cloaca.Context:
            ctx.update_from_dict(CONTEXT)
            return ctx

        for i, (key, op, value, _) in enumerate(CASES):
            rule = cloaca.context_value(key, op, value)
            cloaca.task(id=f"case_{i}", dependencies=["produce"], trigger_rules=rule)(_fn)

    runner = make_runner()
    result = runner.execute("context_rules", {})
    assert result.status == "Completed"
    statuses = _statuses(runner, result)
    got = [(*case[:3], statuses[f"case_{i}"] == "Completed") for i, case in enumerate(CASES)]
    assert got == CASES


def test_a_skipped_task_passes_its_input_on_and_downstream_runs(make_runner: Any) -> None:
    with cloaca.WorkflowBuilder("skip_flow"):

        @cloaca.task(id="start")
        def start(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("mode", "dry")
            return ctx

        @cloaca.task(id="write", dependencies=["start"], trigger_rules=cloaca.context_value("mode", "eq", "live"))
        def write(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("written", True)
            return ctx

        @cloaca.task(id="finish", dependencies=["write"])
        def finish(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("finished", ctx.get("mode"))
            return ctx

    runner = make_runner()
    result = runner.execute("skip_flow", {})
    assert result.status == "Completed"
    assert _statuses(runner, result) == {"start": "Completed", "write": "Skipped", "finish": "Completed"}
    assert result.final_context.to_dict() == {"mode": "dry", "finished": "dry"}
