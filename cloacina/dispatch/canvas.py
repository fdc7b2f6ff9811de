"""The messages a run's tasks travel in: one per sequential stretch, published as its head becomes Ready.

A **stretch** is a run of tasks in which each has exactly one successor and that successor has exactly one
dependency: ``a -> b -> c`` is one stretch. A stretch is one broker message, so one worker process runs its tasks
back to back (each task still gets its own durable start and completion). Fusion can be turned off
(``fuse=False``): then every task is a stretch of its own.

**Routing** (DESIGN §4b). A task's messages go to its Celery queue (:meth:`Workflow.queue_of`: its ``queue=``,
else the workflow's ``default_queue``, else the deployment's ``CLOACINA_QUEUE``), and only the workers that consume
that queue run it. A stretch never crosses queues: it is cut where the queue changes, so every message carries
tasks of one queue and is published to it.

There is no canvas of chords and groups. A new run publishes the stretches of its root tasks; the statement that
finishes a task returns the tasks it made Ready, and the finishing worker publishes their stretches (or runs one
of them next, in the same process). The last branch of a fan-in readies the join: SQL counts the branches, not a
Celery chord, so no result backend is on the hot path. A worker killed between its finish and its publish loses
nothing: the sweeper republishes the Ready tasks of a run that made no progress.

Every message is the same Celery task, ``cloacina.task``, with keyword arguments (workflow, run_id, tasks) that
read well in Flower: the node consults the SQL state machine for each of its tasks, so rules, skips, retries and
callbacks behave exactly as embedded, and a message delivered twice, or for tasks already finished, does nothing.

>>> from cloacina import WorkflowBuilder, task
>>> with WorkflowBuilder("doc_canvas") as b:
...     for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]), ("e", ["d"])):
...         _ = task(id=name, dependencies=deps)(lambda ctx: ctx)
...         b.add_task(name)
>>> stretches(b.build())
[['a'], ['b'], ['c'], ['d', 'e']]
>>> stretch_from(b.build(), "d"), stretch_from(b.build(), "e"), stretch_from(b.build(), "d", fuse=False)
(['d', 'e'], ['e'], ['d'])
>>> with WorkflowBuilder("doc_routed_canvas") as b:
...     for name, deps, queue in (("a", [], None), ("b", ["a"], "heavy"), ("c", ["b"], "heavy"), ("d", ["c"], None)):
...         _ = task(id=name, dependencies=deps, queue=queue)(lambda ctx: ctx)
...         b.add_task(name)
>>> stretches(b.build()), queue_of_message(b.build(), ["b", "c"], "cloacina")
([['a'], ['b', 'c'], ['d']], 'heavy')
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from typing import Any

from celery import Celery
from celery.canvas import Signature

from cloacina.definitions.workflow import Workflow

TASK_NAME = "cloacina.task"
RUN_STAMP = "cloacina_run"  # the Celery stamp naming the run a message belongs to (what a cancel revokes)


def stretches(workflow: Workflow, finished: Collection[str] = (), *, fuse: bool = True) -> list[list[str]]:
    """The unfinished tasks cut into sequential stretches, in topological (and declaration) order; a stretch is also
    cut where the queue changes (a task that names the deployment's queue and one that names none are cut apart
    too: a stretch does not know the deployment's queue, and a cut costs only a publish)."""
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
        if (
            fuse
            and len(own) == 1
            and successors[own[0]] == 1
            and workflow.queue_of(own[0]) == workflow.queue_of(task_id)  # a message goes to one queue
        ):
            stretch = stretch_of[own[0]]  # the predecessor's only successor, with no other dependency: fuse
            stretch.append(task_id)
        else:
            stretch = [task_id]
            cut.append(stretch)
        stretch_of[task_id] = stretch
    return cut


_tails_cache: dict[tuple[int, bool], tuple[Workflow, dict[str, list[str]]]] = {}
_tails_lock = threading.Lock()
_TAILS_CACHE_SIZE = 256


def _tails(workflow: Workflow, fuse: bool) -> dict[str, list[str]]:
    """Each task's stretch from that task to the stretch's end (cached per workflow object)."""
    key = (id(workflow), fuse)
    cached = _tails_cache.get(key)
    if cached is not None and cached[0] is workflow:
        return cached[1]
    tails = {}
    for stretch in stretches(workflow, fuse=fuse):
        for index, task_id in enumerate(stretch):
            tails[task_id] = stretch[index:]
    with _tails_lock:
        if len(_tails_cache) >= _TAILS_CACHE_SIZE:
            _tails_cache.clear()
        _tails_cache[key] = (workflow, tails)  # holds the workflow, so its id is not reused while cached
    return tails


def stretch_from(workflow: Workflow, task_id: str, *, fuse: bool = True) -> list[str]:
    """The tasks one message runs when ``task_id`` becomes Ready: it and the rest of its stretch."""
    return list(_tails(workflow, fuse).get(task_id, [task_id]))


def queue_of_message(workflow: Workflow, task_ids: Iterable[str], deployment_queue: str) -> str:
    """The queue a message of ``task_ids`` (one stretch, so one queue) goes to: its first task's, else the
    deployment's ``deployment_queue``."""
    head = next(iter(task_ids), None)
    queue = workflow.queue_of(head) if head is not None and head in workflow.tasks else None
    return queue or deployment_queue


def node_signature(app: Celery, run_id: str, workflow_name: str, task_ids: list[str], queue: str) -> Signature[Any]:
    """The message of one stretch to Celery queue ``queue``, stamped with its run. It stores no result (nothing
    waits on one)."""
    # Keyword arguments read well in Flower: {'workflow': 'etl', 'run_id': '...', 'tasks': ['extract', 'load']}.
    kwargs = {"workflow": workflow_name, "run_id": run_id, "tasks": list(task_ids)}
    # Celery would otherwise compute both reprs with its recursion-safe saferepr on every publish (a fifth of
    # a single-node publish's CPU); these arguments are plain strings and lists, so repr() gives the same text.
    signature = app.signature(
        TASK_NAME,
        kwargs=kwargs,
        immutable=True,
        queue=queue,
        ignore_result=True,
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )
    signature.stamp(cloacina_run=run_id)  # RUN_STAMP
    return signature


def publish_stretches(
    app: Celery,
    run_id: str,
    workflow: Workflow,
    heads: Iterable[str],
    queue: str,
    *,
    fuse: bool = True,
    countdowns: dict[str, float] | None = None,
) -> int:
    """Publish one message per stretch headed by each of ``heads`` (after its countdown, if any), each to its
    tasks' queue (``queue``, the deployment's, for tasks routed nowhere else); how many."""
    sent = 0
    for head in heads:
        countdown = (countdowns or {}).get(head, 0.0)
        stretch = stretch_from(workflow, head, fuse=fuse)
        signature = node_signature(app, run_id, workflow.name, stretch, queue_of_message(workflow, stretch, queue))
        if countdown > 0:
            signature.apply_async(countdown=countdown)
        else:
            signature.apply_async()
        sent += 1
    return sent
