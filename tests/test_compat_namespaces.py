"""CLOACA_API §13, package authoring and namespaces: ``workflow_params``, ``workflow_secrets``, ``boundary_schema``
and their decorator classes (§1's ``*Decorator`` rule), ``var``/``var_or``, ``TaskNamespace``, ``WorkflowContext``.
"""

from __future__ import annotations

import pytest

import cloacina as cloaca
from cloacina import TaskNamespace, WorkflowContext


# -- declaration decorators ------------------------------------------------------------------------------------
class _Thing:
    pass


def _decorators() -> list[tuple[object, type]]:
    return [
        (cloaca.workflow_params(region=str, retries=(int, 3)), cloaca.WorkflowParamsDecorator),
        (cloaca.workflow_params(), cloaca.WorkflowParamsDecorator),
        (cloaca.workflow_secrets("db_prod", "api_token"), cloaca.WorkflowSecretsDecorator),
        (cloaca.workflow_secrets(), cloaca.WorkflowSecretsDecorator),
        (cloaca.boundary_schema(bid=float, ask=float), type(cloaca.boundary_schema())),
    ]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("target", ["function", "class", "instance", "lambda"])
def test_decorator_call_returns_the_object_itself(index: int, target: str) -> None:
    decorator, cls = _decorators()[index]
    assert type(decorator) is cls

    def fn(context: object) -> object:
        return context

    obj: object = {"function": fn, "class": _Thing, "instance": _Thing(), "lambda": lambda c: c}[target]
    assert decorator(obj) is obj  # type: ignore[operator]


def test_decorator_leaves_the_function_untouched() -> None:
    def fn(context: object) -> object:
        return context

    before = dict(fn.__dict__)
    assert cloaca.workflow_secrets("s")(cloaca.workflow_params(a=int)(cloaca.boundary_schema(b=str)(fn))) is fn
    assert fn.__dict__ == before
    assert fn.__name__ == "fn"


@pytest.mark.parametrize("cls", [cloaca.WorkflowParamsDecorator, cloaca.WorkflowSecretsDecorator])
def test_decorator_classes_have_no_constructor(cls: type) -> None:
    with pytest.raises(TypeError):
        cls()


def test_decorators_stack_with_task_and_the_workflow_runs() -> None:
    with cloaca.WorkflowBuilder("authored"):

        @cloaca.workflow_params(region=str)
        @cloaca.workflow_secrets("db_prod")
        @cloaca.task(id="step")
        def step(context):
            context.set("region", context.get("region", "us-east-1"))
            return context

    assert callable(step) and step.__name__ == "step"
    with cloaca.DefaultRunner(":memory:") as runner:
        result = runner.execute("authored", cloaca.Context({"region": "eu-west-1"}))
    assert result.status == "Completed"
    assert result.final_context.get("region") == "eu-west-1"


def test_workflow_secrets_rejects_bad_names() -> None:
    with pytest.raises(TypeError):
        cloaca.workflow_secrets("ok", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cloaca.workflow_secrets("")


# -- var / var_or ---------------------------------------------------------------------------------------------
def test_var_reads_cloacina_var_name_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOACINA_VAR_Kafka_Broker", "localhost:9092")
    assert cloaca.var("Kafka_Broker") == "localhost:9092"
    assert cloaca.var(name="Kafka_Broker") == "localhost:9092"
    with pytest.raises(KeyError):
        cloaca.var("KAFKA_BROKER")  # case-sensitive
    with pytest.raises(KeyError):
        cloaca.var("kafka_broker")


def test_var_is_read_on_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOACINA_VAR_ROTATING", raising=False)
    with pytest.raises(KeyError):
        cloaca.var("ROTATING")
    monkeypatch.setenv("CLOACINA_VAR_ROTATING", "one")
    assert cloaca.var("ROTATING") == "one"
    monkeypatch.setenv("CLOACINA_VAR_ROTATING", "two")
    assert cloaca.var("ROTATING") == "two"
    monkeypatch.setenv("CLOACINA_VAR_ROTATING", "")
    assert cloaca.var("ROTATING") == ""
    monkeypatch.delenv("CLOACINA_VAR_ROTATING")
    with pytest.raises(KeyError, match="ROTATING"):
        cloaca.var("ROTATING")


def test_var_or_returns_default_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOACINA_VAR_THRESHOLD", raising=False)
    assert cloaca.var_or("THRESHOLD", "0.5") == "0.5"
    assert cloaca.var_or(name="THRESHOLD", default="0.7") == "0.7"
    monkeypatch.setenv("CLOACINA_VAR_THRESHOLD", "0.85")
    assert cloaca.var_or("THRESHOLD", "0.5") == "0.85"
    monkeypatch.setenv("CLOACINA_VAR_THRESHOLD", "")
    assert cloaca.var_or("THRESHOLD", "0.5") == ""


def test_var_rejects_non_str_arguments() -> None:
    with pytest.raises(TypeError):
        cloaca.var(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.var_or("X", 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.var_or(None, "d")  # type: ignore[arg-type]


# -- TaskNamespace --------------------------------------------------------------------------------------------
def test_task_namespace_parts_str_repr() -> None:
    ns = TaskNamespace("t", "p", "w", "task")
    assert (ns.tenant_id, ns.package_name, ns.workflow_id, ns.task_id) == ("t", "p", "w", "task")
    assert str(ns) == "t::p::w::task"
    assert repr(ns) == "TaskNamespace('t', 'p', 'w', 'task')"
    kw = TaskNamespace(tenant_id="t", package_name="p", workflow_id="w", task_id="task")
    assert kw == ns


@pytest.mark.parametrize("part", ["tenant_id", "package_name", "workflow_id", "task_id"])
def test_task_namespace_parts_are_read_only(part: str) -> None:
    ns = TaskNamespace("t", "p", "w", "task")
    with pytest.raises(AttributeError):
        setattr(ns, part, "x")
    assert getattr(ns, part) != "x"


def test_task_namespace_equality_and_hash_by_the_four_parts() -> None:
    a = TaskNamespace("t", "p", "w", "x")
    assert a == TaskNamespace("t", "p", "w", "x")
    assert hash(a) == hash(TaskNamespace("t", "p", "w", "x"))
    for other in (("T", "p", "w", "x"), ("t", "q", "w", "x"), ("t", "p", "v", "x"), ("t", "p", "w", "y")):
        assert a != TaskNamespace(*other)
    assert a != "t::p::w::x"
    assert len({a, TaskNamespace("t", "p", "w", "x"), TaskNamespace("t", "p", "w", "y")}) == 2


def test_from_string_needs_exactly_four_parts() -> None:
    ns = TaskNamespace.from_string("public::embedded::etl::extract")
    assert ns == TaskNamespace("public", "embedded", "etl", "extract")
    assert TaskNamespace.from_string(namespace_str="a::b::c::") == TaskNamespace("a", "b", "c", "")
    assert TaskNamespace.from_string(str(ns)) == ns
    for bad in ("a::b::c", "a::b::c::d::e", "", "abcd", "a:b:c:d", "a::b::c::d::"):
        with pytest.raises(ValueError):
            TaskNamespace.from_string(bad)


def test_parent_child_sibling() -> None:
    task = TaskNamespace("t", "p", "w", "a")
    parent = task.parent()
    assert parent == TaskNamespace("t", "p", "w", "")
    assert task.task_id == "a"  # parent() is a copy
    assert task.is_child_of(parent)
    assert not parent.is_child_of(parent)  # own task_id must be set
    assert not task.is_child_of(task)  # parent's task_id must be empty
    assert not task.is_child_of(TaskNamespace("t", "p", "other", ""))
    assert task.is_sibling_of(TaskNamespace("t", "p", "w", "b"))
    assert not task.is_sibling_of(task)  # different task ids
    assert not task.is_sibling_of(parent)  # both set
    assert not parent.is_sibling_of(task)
    assert not task.is_sibling_of(TaskNamespace("t", "q", "w", "b"))


def test_task_namespace_rejects_non_str_parts() -> None:
    with pytest.raises(TypeError):
        TaskNamespace("t", "p", "w", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskNamespace("t", "p", "w")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        TaskNamespace.from_string(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskNamespace("t", "p", "w", "a").is_child_of("t::p::w::")  # type: ignore[arg-type]


# -- WorkflowContext ------------------------------------------------------------------------------------------
def test_workflow_context_parts_str_repr_eq() -> None:
    wc = WorkflowContext("t", "p", "w")
    assert (wc.tenant_id, wc.package_name, wc.workflow_id) == ("t", "p", "w")
    assert str(wc) == "t::p::w"
    assert repr(wc) == "WorkflowContext('t', 'p', 'w')"
    assert wc == WorkflowContext(tenant_id="t", package_name="p", workflow_id="w")
    assert wc != WorkflowContext("t", "p", "x")
    assert wc != "t::p::w"
    with pytest.raises(AttributeError):
        wc.workflow_id = "x"  # type: ignore[misc]


def test_workflow_context_namespaces() -> None:
    wc = WorkflowContext("t", "p", "w")
    assert wc.task_namespace("extract") == TaskNamespace("t", "p", "w", "extract")
    assert wc.task_namespace(task_id="x") == TaskNamespace("t", "p", "w", "x")
    assert wc.resolve_dependency("load") == TaskNamespace("t", "p", "w", "load")
    assert wc.resolve_dependency(task_name="y") == TaskNamespace("t", "p", "w", "y")
    assert wc.workflow_namespace() == TaskNamespace("t", "p", "w", "")
    assert wc.contains_namespace(TaskNamespace("t", "p", "w", "anything"))
    assert wc.contains_namespace(wc.workflow_namespace())
    assert not wc.contains_namespace(TaskNamespace("t", "p", "other", "a"))
    assert not wc.contains_namespace(TaskNamespace("u", "p", "w", "a"))
    with pytest.raises(TypeError):
        wc.contains_namespace("t::p::w::a")  # type: ignore[arg-type]
