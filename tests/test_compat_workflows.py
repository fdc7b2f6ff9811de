"""CLOACA_API §6, workflows: ``WorkflowBuilder`` (namespace, ``add_task`` inside the block, ``build``, ``__exit__``),
``Workflow`` (qualified ids, metadata, repr) and ``register_workflow_constructor`` (called at once); running what
they register on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

import cloacina as cloaca
from cloacina.definitions import registry


def _echo(ctx: Any) -> Any:
    return ctx


def _declare(task_id: str, deps: list[str] | None = None) -> Any:
    def fn(ctx: Any) -> Any:
        return ctx

    fn.__name__ = task_id
    return cloaca.task(id=task_id, dependencies=deps or [])(fn)


# -- WorkflowBuilder ------------------------------------------------------------------------------------------


def test_constructor_signature_and_repr() -> None:
    builder = cloaca.WorkflowBuilder("etl", tenant="acme", package="pkg", workflow="etl_v2")
    assert repr(builder) == "WorkflowBuilder(name='etl')"
    assert repr(cloaca.WorkflowBuilder(name="plain")) == "WorkflowBuilder(name='plain')"
    with pytest.raises(TypeError):
        cloaca.WorkflowBuilder("etl", "acme")  # type: ignore[misc]  # tenant is keyword-only
    with pytest.raises(TypeError):
        cloaca.WorkflowBuilder(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.WorkflowBuilder("etl", tenant=1)  # type: ignore[arg-type]


def test_description_and_tag_return_none_and_reach_the_workflow() -> None:
    with cloaca.WorkflowBuilder("described") as builder:
        assert builder.description("nightly load") is None
        assert builder.tag("team", "data") is None
        _declare("only")
    workflow = registry.get_workflow("described")
    assert workflow.description == "nightly load"
    with cloaca.WorkflowBuilder("undescribed"):
        _declare("only")
    assert registry.get_workflow("undescribed").description == ""


def test_tasks_register_under_the_default_namespace() -> None:
    with cloaca.WorkflowBuilder("ns_default"):
        _declare("a")
        _declare("b", ["a"])
    workflow = registry.get_workflow("ns_default")
    assert workflow.topological_sort() == ["public::embedded::ns_default::a", "public::embedded::ns_default::b"]


def test_custom_namespace_and_workflow_id() -> None:
    with cloaca.WorkflowBuilder("display", tenant="acme", package="billing", workflow="invoices") as builder:
        _declare("draft")
        _declare("send", ["draft"])
        builder.add_task("draft")
    assert "invoices" in registry.workflow_names() and "display" not in registry.workflow_names()
    registered = registry.get_workflow("invoices")
    assert registered.name == "invoices"
    assert registered.get_roots() == ["acme::billing::invoices::draft"]
    assert registered.get_leaves() == ["acme::billing::invoices::send"]
    built = builder.build()
    assert built.name == "display" and built.get_roots() == ["acme::billing::invoices::draft"]


def test_add_task_inside_the_block_works_and_never_duplicates() -> None:
    with cloaca.WorkflowBuilder("usual") as builder:

        @cloaca.task(id="extract")
        def extract(ctx: Any) -> Any:
            return ctx

        @cloaca.task(id="load", dependencies=["extract"])
        def load(ctx: Any) -> Any:
            return ctx

        assert builder.add_task("extract") is None
        assert builder.add_task(load) is None  # a function: the task named by its __name__
        builder.add_task("extract")
        builder.add_task(extract)
    assert len(registry.get_workflow("usual").task_ids) == 2
    built = builder.build()
    assert built.task_ids == ("extract", "load")
    assert repr(built) == "Workflow(name='usual', tasks=2)"


def test_add_task_looks_only_in_its_own_namespace() -> None:
    with cloaca.WorkflowBuilder("first_ns"):
        elsewhere = _declare("elsewhere")
    builder = cloaca.WorkflowBuilder("second_ns")
    with pytest.raises(ValueError, match="elsewhere"):
        builder.add_task("elsewhere")
    with pytest.raises(ValueError, match="elsewhere"):
        builder.add_task(elsewhere)
    with pytest.raises(ValueError):
        builder.add_task(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never_declared"):
        builder.add_task("never_declared")
    with cloaca.WorkflowBuilder("renamed_ns") as renamed:

        @cloaca.task(id="real_id")
        def function_name(ctx: Any) -> Any:
            return ctx

        with pytest.raises(ValueError, match="function_name"):
            renamed.add_task(function_name)  # a function means the task named by its __name__, as in cloaca
        renamed.add_task("real_id")


def test_build_is_exactly_the_added_tasks() -> None:
    with cloaca.WorkflowBuilder("partial") as builder:
        _declare("a")
        _declare("b", ["a"])
        _declare("c")
        builder.add_task("a")
        builder.add_task("b")
    assert builder.build().task_ids == ("a", "b")
    assert registry.get_workflow("partial").task_ids == ("a", "b", "c")  # __exit__ takes every task


def test_build_rejects_empty_cyclic_and_incomplete_workflows() -> None:
    with pytest.raises(ValueError):
        cloaca.WorkflowBuilder("nothing").build()
    with cloaca.WorkflowBuilder("missing_dep") as incomplete:
        _declare("ok")
    registry.unregister_workflow("missing_dep")
    with registry.workflow_context("missing_dep"):
        _declare("needs", ["ghost"])
    incomplete.add_task("needs")
    with pytest.raises(ValueError, match="ghost"):
        incomplete.build()
    with registry.workflow_context("loop"):
        _declare("x", ["y"])
        _declare("y", ["x"])
    looping = cloaca.WorkflowBuilder("loop")
    looping.add_task("x")
    looping.add_task("y")
    with pytest.raises(ValueError, match="cycle"):
        looping.build()


def test_exit_validates_and_registers_replacing_an_earlier_workflow() -> None:
    with pytest.raises(ValueError), cloaca.WorkflowBuilder("empty_block"):
        pass
    with pytest.raises(ValueError, match="cycle"), cloaca.WorkflowBuilder("cyclic_block"):
        _declare("p", ["q"])
        _declare("q", ["p"])
    with pytest.raises(ValueError, match="nowhere"), cloaca.WorkflowBuilder("dangling_block"):
        _declare("r", ["nowhere"])
    assert not {"empty_block", "cyclic_block", "dangling_block"} & set(registry.workflow_names())

    with cloaca.WorkflowBuilder("replaced"):
        _declare("v1")
    first = registry.get_workflow("replaced")
    with cloaca.WorkflowBuilder("replaced"):
        _declare("v2")
    assert registry.get_workflow("replaced") is not first
    assert set(registry.get_workflow("replaced").task_ids) == {"v1", "v2"}  # the namespace keeps v1, as in cloaca


def test_exit_runs_even_if_the_block_raised_and_returns_false() -> None:
    with pytest.raises(KeyError), cloaca.WorkflowBuilder("raised"):
        _declare("kept")
        raise KeyError("in the block")
    assert registry.get_workflow("raised").task_ids == ("kept",)
    builder = cloaca.WorkflowBuilder("direct")
    assert builder.__enter__() is builder
    _declare("t")
    assert builder.__exit__(None, None, None) is False
    assert registry.current_scope() is None


# -- Workflow ---------------------------------------------------------------------------------------------------


def test_workflow_methods_return_qualified_ids() -> None:
    with cloaca.WorkflowBuilder("diamond", tenant="t1", package="p1"):
        _declare("a")
        _declare("b", ["a"])
        _declare("c", ["a"])
        _declare("d", ["b", "c"])
        _declare("lone")
    wf = registry.get_workflow("diamond")
    q = "t1::p1::diamond::{}".format
    assert wf.name == "diamond" and wf.description == ""
    assert isinstance(wf.version, str) and wf.version
    order = wf.topological_sort()
    assert sorted(order) == sorted(q(t) for t in ("a", "b", "c", "d", "lone"))
    assert order.index(q("a")) < order.index(q("b")) < order.index(q("d"))
    assert order.index(q("c")) < order.index(q("d"))
    levels = wf.get_execution_levels()
    assert [sorted(level) for level in levels] == [sorted([q("a"), q("lone")]), sorted([q("b"), q("c")]), [q("d")]]
    assert sorted(wf.get_roots()) == [q("a"), q("lone")]
    assert sorted(wf.get_leaves()) == [q("d"), q("lone")]
    assert wf.validate() is None
    assert repr(wf) == "Workflow(name='diamond', tasks=5)"


def test_version_is_an_opaque_string_that_follows_the_definition() -> None:
    def build(dep: bool) -> str:
        builder = cloaca.WorkflowBuilder("versioned")
        with registry.workflow_context("versioned"):
            _declare("a")
            _declare("b", ["a"] if dep else [])
        builder.add_task("a")
        builder.add_task("b")
        return builder.build().version

    assert build(True) == build(True) != build(False)


# -- register_workflow_constructor -----------------------------------------------------------------------------


def _single(name: str, task_id: str, key: str) -> cloaca.Workflow:
    with cloaca.WorkflowBuilder(name) as builder:

        @cloaca.task(id=task_id)
        def step(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set(key, True)
            return ctx

        builder.add_task(task_id)  # by id: a function is looked up by its __name__ ("step")
    return builder.build()


def test_constructor_is_called_at_once_and_registered_under_the_given_name() -> None:
    calls: list[str] = []

    def constructor() -> cloaca.Workflow:
        calls.append("called")
        return _single("inner_name", "step", "ran")

    assert cloaca.register_workflow_constructor("outer_name", constructor) is None
    assert calls == ["called"]
    assert registry.get_workflow("outer_name").task_ids == ("step",)
    cloaca.register_workflow_constructor(name="outer_name", constructor=lambda: _single("x", "other", "o"))
    assert registry.get_workflow("outer_name").task_ids == ("other",)  # registering again replaces


@pytest.mark.parametrize("returned", [None, "workflow", 42, {"name": "wf"}])
def test_constructor_returning_another_type_is_a_value_error(returned: Any) -> None:
    with pytest.raises(ValueError):
        cloaca.register_workflow_constructor("bad_type", lambda: returned)
    assert "bad_type" not in registry.workflow_names()


def test_constructor_that_raises_is_a_value_error_at_once() -> None:
    def constructor() -> cloaca.Workflow:
        raise RuntimeError("cannot build")

    with pytest.raises(ValueError, match="cannot build"):
        cloaca.register_workflow_constructor("raising", constructor)
    assert "raising" not in registry.workflow_names()


def test_registered_workflows_run(make_runner: Any) -> None:
    cloaca.register_workflow_constructor("by_constructor", lambda: _single("built_as", "mark", "constructed"))
    with cloaca.WorkflowBuilder("shown", workflow="by_block"):

        @cloaca.task(id="first")
        def first(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("first", True)
            return ctx

        @cloaca.task(id="second", dependencies=["first"])
        def second(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("second", ctx.get("first"))
            return ctx

    runner = make_runner()
    constructed = runner.execute("by_constructor", cloaca.Context({"in": 1}))
    assert constructed.status == "Completed"
    assert constructed.final_context.to_dict() == {"in": 1, "constructed": True}
    blocked = runner.execute("by_block", cloaca.Context({}))
    assert blocked.status == "Completed" and blocked.final_context.get("second") is True
