"""Process-wide registries of workflows, loose tasks and triggers, filled by the decorators.

Registration happens at import time (``with WorkflowBuilder(...)``, ``@task``, ``@trigger``, all in
:mod:`cloacina.definitions.declare`), which is how the cloaca API works. Runners read the registries; listeners
let a running scheduler pick up triggers that are declared after it started. Re-registering a name replaces the
old entry (module reloads, package upgrades).

The registry imports the definition modules, never the other way round: the builder scope knows an open builder
only as a :class:`TaskCollector`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from cloacina.definitions.naming import check_name
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow
from cloacina.errors import DefinitionError, WorkflowNotFoundError


class TaskCollector(Protocol):
    """What an open ``WorkflowBuilder`` is to the registry: something a ``@task`` declared inside it joins."""

    def add_task(self, task: TaskDefinition, /) -> object: ...


TriggerListener = Callable[[TriggerDefinition], object]
"""Called with every trigger registered after it was added (its return value is ignored)."""

_lock = threading.RLock()
_workflows: dict[str, Workflow] = {}
_constructors: dict[str, Callable[[], Workflow]] = {}
_tasks: dict[str, TaskDefinition] = {}
_triggers: dict[str, TriggerDefinition] = {}
_trigger_listeners: list[TriggerListener] = []
_scope = threading.local()


# -- builder scope (where @task registers) ---------------------------------------------------------------
def push_builder(builder: TaskCollector) -> None:
    stack = getattr(_scope, "stack", None)
    if stack is None:
        stack = _scope.stack = []
    stack.append(builder)


def pop_builder(builder: TaskCollector) -> None:
    stack = getattr(_scope, "stack", [])
    if stack and stack[-1] is builder:
        stack.pop()


def current_builder() -> TaskCollector | None:
    stack = getattr(_scope, "stack", None)
    return stack[-1] if stack else None


def add_task_to_current_scope(definition: TaskDefinition) -> None:
    """Add a task to the innermost open builder, or to the global task registry if none is open."""
    builder = current_builder()
    if builder is not None:
        builder.add_task(definition)
        return
    with _lock:
        _tasks[definition.task_id] = definition


def get_task(task_id: str) -> TaskDefinition:
    with _lock:
        found = _tasks.get(task_id)
    if found is None:
        raise DefinitionError(f"no task {task_id!r} is registered outside a workflow", subject=task_id)
    return found


# -- workflows -------------------------------------------------------------------------------------------
def register_workflow(workflow: Workflow) -> None:
    with _lock:
        _workflows[workflow.name] = workflow


def register_workflow_constructor(name: str, constructor: Callable[[], Workflow]) -> None:
    """Register a zero-argument function that builds the workflow ``name`` when it is first needed."""
    check_name(name, "workflow name")
    if not callable(constructor):
        raise DefinitionError(f"constructor for workflow {name!r} must be callable")
    with _lock:
        _constructors[name] = constructor
        _workflows.pop(name, None)


def get_workflow(name: str) -> Workflow:
    """The workflow registered as ``name``; ``WorkflowNotFoundError`` (a ``ValueError``) if there is none."""
    with _lock:
        found = _workflows.get(name)
        constructor = _constructors.get(name)
        known = sorted(set(_workflows) | set(_constructors))
    if found is not None:
        return found
    if constructor is None:
        raise WorkflowNotFoundError(name, known)
    built = constructor()
    if not isinstance(built, Workflow):
        raise DefinitionError(f"constructor for workflow {name!r} returned {type(built).__name__}, not a Workflow")
    if built.name != name:
        raise DefinitionError(f"constructor registered as {name!r} built a workflow named {built.name!r}")
    register_workflow(built)
    return built


def workflow_names() -> list[str]:
    with _lock:
        return sorted(set(_workflows) | set(_constructors))


def unregister_workflow(name: str) -> None:
    with _lock:
        _workflows.pop(name, None)
        _constructors.pop(name, None)


# -- triggers --------------------------------------------------------------------------------------------
def register_trigger(definition: TriggerDefinition) -> None:
    with _lock:
        _triggers[definition.name] = definition
        listeners = list(_trigger_listeners)
    for listener in listeners:
        listener(definition)


def unregister_trigger(name: str) -> None:
    with _lock:
        _triggers.pop(name, None)


def get_trigger(name: str) -> TriggerDefinition | None:
    with _lock:
        return _triggers.get(name)


def triggers() -> list[TriggerDefinition]:
    with _lock:
        return list(_triggers.values())


def add_trigger_listener(listener: TriggerListener) -> None:
    with _lock:
        _trigger_listeners.append(listener)


def remove_trigger_listener(listener: TriggerListener) -> None:
    with _lock:
        if listener in _trigger_listeners:
            _trigger_listeners.remove(listener)


@contextlib.contextmanager
def capture() -> Iterator[dict[str, Any]]:
    """Let code register into the registry privately; yield the state from before; put it back afterwards.

    The lock is held for the whole block, so no other thread sees or adds entries meanwhile, and trigger
    listeners are detached, so a running scheduler is never handed what the block registers. Package loading
    uses it to import a package's code and keep what it declared out of the global registry.
    """
    with _lock:
        before = snapshot()
        listeners = list(_trigger_listeners)
        _trigger_listeners.clear()
        try:
            yield before
        finally:
            restore(before)
            _trigger_listeners[:] = listeners


def snapshot() -> dict[str, Any]:
    """Copy of all registries (tests use it with :func:`restore` to isolate global state)."""
    with _lock:
        return {
            "workflows": dict(_workflows),
            "constructors": dict(_constructors),
            "tasks": dict(_tasks),
            "triggers": dict(_triggers),
        }


def restore(saved: dict[str, Any]) -> None:
    with _lock:
        for target, key in (
            (_workflows, "workflows"),
            (_constructors, "constructors"),
            (_tasks, "tasks"),
            (_triggers, "triggers"),
        ):
            target.clear()
            target.update(saved[key])
