"""Compile a workflow DAG into a Celery canvas: fused sequential stretches, chained, with groups and chords for
fan-out and fan-in.

A **stretch** is a run of tasks in which each has exactly one successor and that successor has exactly one
dependency: ``a -> b -> c`` is one stretch. A stretch is one canvas node, so one broker message runs its tasks
back to back in one worker process (each task still gets its own durable start and completion). Fusion can be
turned off (``fuse=False``): then every task is a stretch of its own.

Stretches are cut into topological levels (a stretch's level is one more than the deepest level of the
stretches its first task depends on). Each level becomes one signature or a group, and the levels are chained;
Celery turns ``group`` followed by anything into a chord, the fan-in barrier. A chain compiles to one node, a
diamond ``a -> (b, c) -> d`` to ``chain(a, group(b, c), d)``. A DAG that is not series-parallel waits at level
barriers a little more than strictly needed (one fixed-shape canvas instead of a scheduler round trip per task).

Every node is the same Celery task, ``cloacina.task``, with keyword arguments (workflow, run_id, tasks) that
read well in Flower: the node consults the SQL state machine for each of its tasks, so rules, skips, retries and
callbacks behave exactly as embedded, and a node delivered twice, or for tasks already finished, does nothing.

>>> from cloacina import WorkflowBuilder, task
>>> with WorkflowBuilder("doc_canvas") as b:
...     for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", ["d"])):
...         _ = task(id=name, dependencies=deps)(lambda ctx: ctx)
...         b.add_task(name)
>>> stretches(b.build())
[['a'], ['b'], ['c'], ['d', 'e']]
>>> canvas_levels(b.build())
[[['a']], [['b'], ['c']], [['d', 'e']]]
>>> canvas_levels(b.build(), finished={"a", "b", "c", "d"})
[[['e']]]
>>> canvas_levels(b.build(), fuse=False)
[[['a']], [['b'], ['c']], [['d']], [['e']]]
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery import Celery, chain, group
from celery.canvas import Signature

from cloacina.definitions.workflow import Workflow

TASK_NAME = "cloacina.task"


def stretches(workflow: Workflow, finished: Collection[str] = (), *, fuse: bool = True) -> list[list[str]]:
    """The unfinished tasks cut into sequential stretches, in topological (and declaration) order."""
    remaining = [t for t in workflow.topological_order if t not in finished]
    deps = {t: [d for d in workflow.tasks[t].dependencies if d not in finished] for t in remaining}
    successors: dict[str, int] = dict.fromkeys(remaining, 0)
    for task_id in remaining:
        for dep in deps[task_id]:
            successors[dep] += 1
    stretch_of: dict[str, list[str]] = {}
    cut: list[list[str]] = []
    for task_id in remaining:
        own = deps[task_id]
        if fuse and len(own) == 1 and successors[own[0]] == 1:
            stretch = stretch_of[own[0]]  # the predecessor's only successor, with no other dependency: fuse
            stretch.append(task_id)
        else:
            stretch = [task_id]
            cut.append(stretch)
        stretch_of[task_id] = stretch
    return cut


def canvas_levels(workflow: Workflow, finished: Collection[str] = (), *, fuse: bool = True) -> list[list[list[str]]]:
    """The stretches of :func:`stretches` grouped by level."""
    cut = stretches(workflow, finished, fuse=fuse)
    first_of = {id(s): s[0] for s in cut}
    stretch_of = {task_id: s for s in cut for task_id in s}
    level: dict[int, int] = {}
    for stretch in cut:  # topological: every dependency's stretch comes earlier
        head = first_of[id(stretch)]
        deps = [d for d in workflow.tasks[head].dependencies if d not in finished]
        level[id(stretch)] = 1 + max((level[id(stretch_of[d])] for d in deps), default=-1)
    levels: list[list[list[str]]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for stretch in cut:
        levels[level[id(stretch)]].append(stretch)
    return levels


def node_signature(
    app: Celery, run_id: str, workflow_name: str, task_ids: list[str], queue: str, chord_header: bool = False
) -> Signature[Any]:
    """The canvas node for one stretch: immutable, so it ignores its parents' return values. Only chord headers
    store a (null) result: the chord counts them; every other node skips the result backend."""
    # Keyword arguments read well in Flower: {'workflow': 'etl', 'run_id': '...', 'tasks': ['extract', 'load']}.
    kwargs = {"workflow": workflow_name, "run_id": run_id, "tasks": list(task_ids)}
    # Celery would otherwise compute both reprs with its recursion-safe saferepr on every publish (a fifth of
    # a single-node publish's CPU); these arguments are plain strings and lists, so repr() gives the same text.
    return app.signature(
        TASK_NAME,
        kwargs=kwargs,
        immutable=True,
        queue=queue,
        ignore_result=not chord_header,
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )


def compile_canvas(
    app: Celery,
    workflow: Workflow,
    run_id: str,
    *,
    queue: str = "cloacina",
    finished: Collection[str] = (),
    fuse: bool = True,
) -> Any:
    """The canvas that runs every unfinished task of ``run_id`` (``None`` when nothing is left)."""
    stages = []
    levels = canvas_levels(workflow, finished, fuse=fuse)
    for index, level in enumerate(levels):
        header = len(level) > 1 and index < len(levels) - 1  # a group followed by more work becomes a chord
        sigs = [node_signature(app, run_id, workflow.name, s, queue, chord_header=header) for s in level]
        stages.append(sigs[0] if len(sigs) == 1 else group(sigs))
    if not stages:
        return None
    return stages[0] if len(stages) == 1 else chain(*stages)
