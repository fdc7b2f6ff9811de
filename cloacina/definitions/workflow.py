"""``Workflow``: a named DAG of tasks, validated once by :func:`build_workflow` (``WorkflowBuilder``, in
:mod:`cloacina.definitions.declare`, calls it when its ``with`` block closes).

Inside, task ids are plain (``"load"``): the engine and the store use them. The cloaca methods
(``topological_sort``, ``get_execution_levels``, ``get_roots``, ``get_leaves``) return qualified ids
``"tenant::package::workflow::task"``, as cloaca does.

Validation rejects, with a ``ValueError`` naming the culprit: an empty workflow, a dependency on an unknown
task, a cycle (the message shows it), and a trigger rule that reads a task which is not upstream of the rule's
task (its status could not be known when the rule is evaluated).

>>> from cloacina import WorkflowBuilder, task
>>> from cloacina.definitions.registry import get_workflow
>>> with WorkflowBuilder("doc_diamond") as b:
...     @task(id="a")
...     def a(ctx): return ctx
...     @task(id="b", dependencies=["a"])
...     def b_(ctx): return ctx
...     @task(id="c", dependencies=["a"])
...     def c(ctx): return ctx
...     @task(id="d", dependencies=["b", "c"])
...     def d(ctx): return ctx
>>> wf = get_workflow("doc_diamond")  # registered when the block closed
>>> wf.topological_order, wf.roots, wf.leaves
(('a', 'b', 'c', 'd'), ('a',), ('d',))
>>> wf.get_execution_levels()[1]
['public::embedded::doc_diamond::b', 'public::embedded::doc_diamond::c']
>>> wf
Workflow(name='doc_diamond', tasks=4)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cloacina.context import canonical_json
from cloacina.definitions.naming import check_queue
from cloacina.definitions.task import TaskDefinition
from cloacina.errors import DefinitionError


@dataclass(frozen=True)
class Workflow:
    """An immutable, validated DAG of tasks. Build it with :class:`WorkflowBuilder`.

    ``tenant``/``package``/``workflow_id`` are the namespace of its tasks (``workflow_id`` defaults to ``name``).
    ``default_queue``: the Celery queue of the tasks that name none (``builder.default_queue(...)``; see
    :meth:`queue_of`).
    """

    name: str
    tasks: Mapping[str, TaskDefinition]
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    topological_order: tuple[str, ...] = ()
    version: str = ""
    tenant: str = "public"
    package: str = "embedded"
    workflow_id: str | None = None
    # Runs of this workflow active at once (``builder.max_active_runs(n)``); more wait, first in first out
    # (:mod:`cloacina.store.run_limits`). ``None``: no limit.
    max_active_runs: int | None = None
    default_queue: str | None = None

    # -- cloaca methods (qualified ids) --------------------------------------------------------------------
    def qualified_id(self, task_id: str) -> str:
        """``"tenant::package::workflow::task"`` for ``task_id``."""
        return f"{self.tenant}::{self.package}::{self.workflow_id or self.name}::{task_id}"

    def topological_sort(self) -> list[str]:
        """Qualified task ids, every task after its dependencies."""
        return [self.qualified_id(t) for t in self.topological_order]

    def get_execution_levels(self) -> list[list[str]]:
        """Qualified task ids grouped by level: a level's tasks depend only on earlier levels."""
        level: dict[str, int] = {}
        for t in self.topological_order:
            level[t] = 1 + max((level[d] for d in self.tasks[t].dependencies), default=-1)
        levels: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for t in self.topological_order:
            levels[level[t]].append(self.qualified_id(t))
        return levels

    def get_roots(self) -> list[str]:
        """Qualified ids of the tasks without dependencies."""
        return [self.qualified_id(t) for t in self.roots]

    def get_leaves(self) -> list[str]:
        """Qualified ids of the tasks nothing depends on."""
        return [self.qualified_id(t) for t in self.leaves]

    def validate(self) -> None:
        """``ValueError`` if the workflow is empty, cyclic or has an unresolvable dependency or rule."""
        _validate(self.name, self.tasks)

    def queue_of(self, task_id: str) -> str | None:
        """The Celery queue of ``task_id``'s messages: its own ``queue=``, else the workflow's ``default_queue``;
        ``None`` means the deployment's queue (``CLOACINA_QUEUE``). Embedded mode runs every task in-process and
        ignores queues."""
        return self.tasks[task_id].queue or self.default_queue

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(t for t in self.topological_order if not self.tasks[t].dependencies)

    @property
    def leaves(self) -> tuple[str, ...]:
        has_dependents = {d for t in self.tasks.values() for d in t.dependencies}
        return tuple(t for t in self.topological_order if t not in has_dependents)

    def dependents(self, task_id: str) -> tuple[str, ...]:
        return tuple(t for t in self.topological_order if task_id in self.tasks[t].dependencies)

    def ancestors(self, task_id: str) -> set[str]:
        return _ancestors(self.tasks, task_id)

    def get_task(self, task_id: str) -> TaskDefinition:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise DefinitionError(f"workflow {self.name!r} has no task {task_id!r}", subject=task_id) from None

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, tasks={len(self.tasks)})"


def _topological_order(tasks: Mapping[str, TaskDefinition], workflow: str) -> tuple[str, ...]:
    """Kahn's algorithm, stable in declaration order; raises with the cycle spelled out."""
    for t in tasks.values():
        for dep in t.dependencies:
            if dep not in tasks:
                raise DefinitionError(
                    f"workflow {workflow!r}: task {t.task_id!r} depends on unknown task {dep!r}",
                    subject=t.task_id,
                )
    remaining = {tid: set(t.dependencies) for tid, t in tasks.items()}
    order: list[str] = []
    while remaining:
        ready = [tid for tid, deps in remaining.items() if not deps]
        if not ready:
            raise DefinitionError(
                f"workflow {workflow!r} has a dependency cycle: {' -> '.join(_find_cycle(remaining))}",
                subject=workflow,
            )
        for tid in ready:
            order.append(tid)
            del remaining[tid]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = sorted(graph[node])[0]
    cycle = [*path[seen[node] :], node]
    return list(reversed(cycle))  # read as "a -> b" meaning a is needed by b


def check_max_active_runs(value: object, workflow: str) -> int:
    """``value`` as a workflow's ``max_active_runs``: an int of at least 1 (not a bool), else ``ValueError``.

    >>> check_max_active_runs(2, "etl")
    2
    >>> check_max_active_runs(0, "etl")
    Traceback (most recent call last):
    ...
    cloacina.errors.DefinitionError: workflow 'etl': max_active_runs must be an int of at least 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(
            f"workflow {workflow!r}: max_active_runs must be an int of at least 1, got {value!r}", subject=workflow
        )
    return value


def _content_version(
    name: str, tasks: Mapping[str, TaskDefinition], max_active_runs: int | None = None, default_queue: str | None = None
) -> str:
    parts = [
        {
            "id": t.task_id,
            "deps": list(t.dependencies),
            "rule": t.trigger_rule.to_dict() if t.trigger_rule else None,
            "retry": t.retry.to_dict(),
            "timeout_s": t.timeout_s,
            "code": hashlib.sha256(t.code_fingerprint().encode()).hexdigest(),
            **({"pool": [t.pool, t.pool_slots]} if t.pool else {}),  # absent without a pool: versions unchanged
            # A routed task's queue is part of its version (the catalog records it); an unrouted one adds nothing,
            # so the versions of workflows without queues stay what they were.
            **({"queue": queue} if (queue := t.queue or default_queue) is not None else {}),
        }
        for t in tasks.values()
    ]
    content: dict[str, object] = {"name": name, "tasks": parts}
    if max_active_runs is not None:  # part of what a version means, so a catalog entry's limit is its version's
        content["max_active_runs"] = max_active_runs
    digest = hashlib.sha256(canonical_json(content).encode()).hexdigest()
    return digest[:16]


def _ancestors(tasks: Mapping[str, TaskDefinition], task_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(tasks[task_id].dependencies)
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(tasks[dep].dependencies)
    return seen


def _validate(name: str, tasks: Mapping[str, TaskDefinition]) -> tuple[str, ...]:
    """The topological order of ``tasks``; ``DefinitionError`` (a ``ValueError``) if they do not form a workflow."""
    if not tasks:
        raise DefinitionError(
            f"Workflow cannot be empty: workflow {name!r} has no tasks; add at least one @task", subject=name
        )
    order = _topological_order(tasks, name)
    for t in tasks.values():
        if t.trigger_rule is None:
            continue
        upstream = _ancestors(tasks, t.task_id)
        for ref in sorted(t.trigger_rule.referenced_tasks()):
            if ref not in tasks:
                raise DefinitionError(
                    f"workflow {name!r}: trigger rule of task {t.task_id!r} refers to unknown task {ref!r}",
                    subject=t.task_id,
                )
            if ref not in upstream:
                raise DefinitionError(
                    f"workflow {name!r}: trigger rule of task {t.task_id!r} refers to {ref!r}, which is not "
                    f"upstream of it; add {ref!r} to its dependencies",
                    subject=t.task_id,
                )
    return order


def build_workflow(
    name: str,
    tasks: Mapping[str, TaskDefinition],
    description: str = "",
    tags: Mapping[str, str] | None = None,
    *,
    tenant: str = "public",
    package: str = "embedded",
    workflow_id: str | None = None,
    max_active_runs: int | None = None,
    default_queue: str | None = None,
) -> Workflow:
    """Validate and freeze a workflow (``ValueError`` naming the culprit if it is not one)."""
    order = _validate(name, tasks)
    if max_active_runs is not None:
        check_max_active_runs(max_active_runs, name)
    if default_queue is not None:
        default_queue = check_queue(default_queue, f"workflow {name!r}: default_queue")
    return Workflow(
        name=name,
        tasks=MappingProxyType(dict(tasks)),
        description=description,
        tags=MappingProxyType(dict(tags or {})),
        topological_order=order,
        version=_content_version(name, tasks, max_active_runs, default_queue),
        tenant=tenant,
        package=package,
        workflow_id=None if workflow_id == name else workflow_id,
        max_active_runs=max_active_runs,
        default_queue=default_queue,
    )


def renamed(workflow: Workflow, name: str) -> Workflow:
    """``workflow`` under another name (its task namespace unchanged), with the version that name gives."""
    if name == workflow.name:
        return workflow
    return dataclasses.replace(
        workflow,
        name=name,
        version=_content_version(name, workflow.tasks, workflow.max_active_runs, workflow.default_queue),
        workflow_id=workflow.workflow_id or workflow.name,
    )
