"""Compile a workflow DAG into a Celery canvas: chains for sequential stretches, groups and chords for fan-out
and fan-in.

The DAG is cut into topological levels (a task's level is one more than its deepest unfinished dependency).
Each level becomes one signature (a single task) or a group (several), and the levels are chained; Celery
turns ``group`` followed by anything into a chord, which is the fan-in barrier. A chain ``a -> b -> c``
compiles to ``chain(a, b, c)``, a diamond to ``chain(a, group(b, c), d)``. Any DAG compiles this way; a
DAG that is not series-parallel waits at level barriers a little more than strictly needed (documented
trade-off: one fixed-shape canvas instead of a scheduler round-trip per task).

Every node is the same Celery task, ``cloacina.task``, with immutable keyword arguments (workflow, task, run_id):
the node consults the SQL state machine, so rules, skips, retries and callbacks behave exactly as embedded, and
a node delivered twice, or for a task already finished, does nothing.

>>> from cloacina import WorkflowBuilder, task
>>> with WorkflowBuilder("doc_canvas") as b:
...     for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
...         _ = task(id=name, dependencies=deps)(lambda ctx: ctx)
>>> canvas_levels(b.build())
[['a'], ['b', 'c'], ['d']]
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature

from cloacina.definitions.workflow import Workflow

TASK_NAME = "cloacina.task"


def canvas_levels(workflow: Workflow, finished: Collection[str] = ()) -> list[list[str]]:
    """Unfinished tasks grouped by level, in topological (and declaration) order."""
    level: dict[str, int] = {}
    for task_id in workflow.topological_order:
        if task_id in finished:
            continue
        deps = [d for d in workflow.tasks[task_id].dependencies if d not in finished]
        level[task_id] = 1 + max((level[d] for d in deps), default=-1)
    levels: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for task_id in workflow.topological_order:
        if task_id in level:
            levels[level[task_id]].append(task_id)
    return levels


def node_signature(
    app: Celery, run_id: str, workflow_name: str, task_id: str, queue: str, chord_header: bool = False
) -> Signature:
    """The canvas node for one task: immutable, so it ignores its parents' return values. Only chord headers
    store a (null) result: the chord counts them; every other node skips the result backend."""
    # Keyword arguments read well in Flower: {'workflow': 'etl', 'task': 'load', 'run_id': '...'}.
    kwargs = {"workflow": workflow_name, "task": task_id, "run_id": run_id}
    return app.signature(TASK_NAME, kwargs=kwargs, immutable=True, queue=queue, ignore_result=not chord_header)


def compile_canvas(
    app: Celery, workflow: Workflow, run_id: str, *, queue: str = "cloacina", finished: Collection[str] = ()
) -> Any:
    """The canvas that runs every unfinished task of ``run_id`` (``None`` when nothing is left)."""
    stages = []
    levels = canvas_levels(workflow, finished)
    for index, tasks in enumerate(levels):
        header = len(tasks) > 1 and index < len(levels) - 1  # a group followed by more work becomes a chord
        sigs = [node_signature(app, run_id, workflow.name, t, queue, chord_header=header) for t in tasks]
        stages.append(sigs[0] if len(sigs) == 1 else group(sigs))
    if not stages:
        return None
    return stages[0] if len(stages) == 1 else chain(*stages)
