"""What a canvas node's message shows in Flower: its arguments' reprs are set by cloacina (Celery would compute
them with ``saferepr`` on every publish) and must read exactly as Celery's own."""

from __future__ import annotations

from celery import Celery
from celery.utils.saferepr import saferepr

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.dispatch.canvas import RUN_STAMP, node_signature, stretch_from, stretches


def test_node_messages_carry_the_reprs_celery_would_compute() -> None:
    with cloaca.WorkflowBuilder("repr_diamond") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", ["d"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx: ctx)
    app = Celery("repr-test", set_as_current=False)
    workflow = registry.get_workflow(builder.name)
    assert stretches(workflow) == [["a"], ["b"], ["c"], ["d", "e"]]
    nodes = [node_signature(app, "run-1", workflow.name, stretch_from(workflow, t), "q") for t in ("a", "b", "d")]
    assert [node.kwargs["tasks"] for node in nodes] == [["a"], ["b"], ["d", "e"]]
    for node in nodes:
        assert node.options[RUN_STAMP] == "run-1"  # what a cancel revokes
        assert node.options["ignore_result"] is True  # no result backend on the hot path
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
