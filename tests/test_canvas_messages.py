"""What a canvas node's message shows in Flower: its arguments' reprs are set by cloacina (Celery would compute
them with ``saferepr`` on every publish) and must read exactly as Celery's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.dispatch.canvas import compile_canvas


def _nodes(sig: Any) -> Iterator[Any]:
    if isinstance(sig, (list, tuple)):
        for part in sig:
            yield from _nodes(part)
        return
    kind = sig.get("subtask_type")
    if kind == "chord":
        yield from _nodes(sig.tasks)
        yield from _nodes(sig.body)
    elif kind in ("chain", "group"):
        for part in sig.tasks:
            yield from _nodes(part)
    else:
        yield sig


def test_node_messages_carry_the_reprs_celery_would_compute() -> None:
    with cloaca.WorkflowBuilder("repr_diamond") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx: ctx)
    app = Celery("repr-test", set_as_current=False)
    canvas = compile_canvas(app, registry.get_workflow(builder.name), "run-1")
    nodes = list(_nodes(canvas))  # chain(a, chord(group(b, c), d))
    assert [node.kwargs["tasks"] for node in nodes] == [["a"], ["b"], ["c"], ["d"]]
    for node in nodes:
        assert node.options["kwargsrepr"] == saferepr(node.kwargs)
        assert node.options["argsrepr"] == saferepr(())
        message = app.amqp.as_task_v2(
            "id-1", node.task, node.args, node.kwargs,
            argsrepr=node.options["argsrepr"], kwargsrepr=node.options["kwargsrepr"],
        )  # fmt: skip
        assert (
            message.headers["kwargsrepr"]
            == "{'workflow': 'repr_diamond', 'run_id': 'run-1', 'tasks': " + repr(node.kwargs["tasks"]) + "}"
        )
