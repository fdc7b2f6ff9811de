"""Process-wide registries of workflows, tasks and triggers, filled by the decorators.

Registration happens at import time (``with WorkflowBuilder(...)``, ``@task``, ``@trigger``, all in
:mod:`cloacina.definitions.declare`), which is how the cloaca API works. Runners read the registries; listeners
let a running scheduler pick up triggers that are declared after it started. Re-registering a name replaces the
old entry (module reloads, package upgrades).

Tasks live in namespaces, as in cloaca: a ``@task`` declared while a workflow context is active (a
``WorkflowBuilder`` block, or :func:`workflow_context` used by the package loader) registers under that
context's ``(tenant, package, workflow)``; re-declaring an id there replaces the task. A ``@task`` declared with no
active context is a *standalone* task (our extension), usable by ``builder.add_task("id")``.

The registry imports the definition modules, never the other way round.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cloacina.definitions.naming import check_name
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow, build_workflow, renamed
from cloacina.errors import DefinitionError, WorkflowNotFoundError

DEFAULT_TENANT = "public"
DEFAULT_PACKAGE = "embedded"


@dataclass(frozen=True)
class WorkflowScope:
    """An active workflow context: where a ``@task`` declared now registers."""

    tenant: str
    package: str
    workflow: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.package, self.workflow)


TriggerListener = Callable[[TriggerDefinition], object]
"""Called with every trigger registered after it was added (its return value is ignored)."""

_lock = threading.RLock()
_workflows: dict[str, Workflow] = {}
_tasks: dict[str, TaskDefinition] = {}
_namespaces: dict[tuple[str, str, str], dict[str, TaskDefinition]] = {}
_triggers: dict[str, TriggerDefinition] = {}
_trigger_listeners: list[TriggerListener] = []
_scope = threading.local()


# -- workflow contexts (where @task registers) -------------------------------------------------------------
def push_scope(scope: WorkflowScope) -> None:
    """Make ``scope`` the innermost workflow context of this thread."""
    stack = getattr(_scope, "stack", None)
    if stack is None:
        stack = _scope.stack = []
    stack.append(scope)


def pop_scope(scope: WorkflowScope) -> None:
    """Leave ``scope`` (a no-op if it is not the innermost context of this thread)."""
    stack = getattr(_scope, "stack", [])
    if stack and stack[-1] is scope:
        stack.pop()


def current_scope() -> WorkflowScope | None:
    """The innermost workflow context of this thread, or ``None``."""
    stack = getattr(_scope, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def workflow_context(
    workflow: str, *, tenant: str = DEFAULT_TENANT, package: str = DEFAULT_PACKAGE
) -> Iterator[WorkflowScope]:
    """Activate the workflow context ``tenant/package/workflow`` on this thread for the ``with`` block.

    Bare module-level ``@task`` decorators run inside the block register into that namespace (a
    ``WorkflowBuilder`` block opened inside it takes over for its own body). Nothing is built or registered as a
    workflow: call :func:`collect_workflow` afterwards. This is what the package loader does for a cloaca package::

        with registry.workflow_context(workflow_name):
            importlib.import_module(entry_module)
        workflow = registry.collect_workflow(workflow_name)   # ValueError if no task / invalid
        registry.register_workflow(workflow)
    """
    scope = WorkflowScope(
        check_name(tenant, "tenant"), check_name(package, "package name"), check_name(workflow, "workflow name")
    )
    push_scope(scope)
    try:
        yield scope
    finally:
        pop_scope(scope)


def add_task_to_current_scope(definition: TaskDefinition) -> None:
    """Register a task in the innermost workflow context, or as a standalone task if none is active."""
    scope = current_scope()
    with _lock:
        if scope is None:
            _tasks[definition.task_id] = definition
        else:
            _namespaces.setdefault(scope.key, {})[definition.task_id] = definition


def namespace_tasks(
    workflow: str, *, tenant: str = DEFAULT_TENANT, package: str = DEFAULT_PACKAGE
) -> dict[str, TaskDefinition]:
    """The tasks registered under ``tenant/package/workflow``, in declaration order (a copy)."""
    with _lock:
        return dict(_namespaces.get((tenant, package, workflow), {}))


def find_task(task_id: str, scope: WorkflowScope | None = None) -> TaskDefinition | None:
    """Task ``task_id`` of ``scope``'s namespace, else the standalone one, else ``None``."""
    with _lock:
        if scope is not None:
            found = _namespaces.get(scope.key, {}).get(task_id)
            if found is not None:
                return found
        return _tasks.get(task_id)


def get_task(task_id: str) -> TaskDefinition:
    """The standalone task ``task_id``; ``DefinitionError`` (a ``ValueError``) if there is none."""
    found = find_task(task_id)
    if found is None:
        raise DefinitionError(f"no task {task_id!r} is registered outside a workflow", subject=task_id)
    return found


def collect_workflow(
    workflow: str,
    *,
    tenant: str = DEFAULT_TENANT,
    package: str = DEFAULT_PACKAGE,
    name: str | None = None,
    extra: Mapping[str, TaskDefinition] | None = None,
    description: str = "",
    tags: Mapping[str, str] | None = None,
    max_active_runs: int | None = None,
    default_queue: str | None = None,
) -> Workflow:
    """Build (and validate) a workflow from every task of namespace ``tenant/package/workflow`` plus ``extra``,
    plus the standalone tasks they depend on.

    ``name`` defaults to ``workflow``; ``max_active_runs``: see ``WorkflowBuilder.max_active_runs``;
    ``default_queue``: the queue of its tasks that name none. ``ValueError`` if it has no task, a cycle or an
    unresolvable dependency.
    """
    tasks = namespace_tasks(workflow, tenant=tenant, package=package)
    for task_id, definition in (extra or {}).items():
        tasks.setdefault(task_id, definition)
    with _lock:  # a dependency on a standalone task brings that task in (our extension), transitively
        pending = [dep for t in tasks.values() for dep in t.dependencies]
        while pending:
            dep = pending.pop()
            if dep not in tasks and dep in _tasks:
                tasks[dep] = _tasks[dep]
                pending.extend(_tasks[dep].dependencies)
    return build_workflow(
        name or workflow,
        tasks,
        description,
        tags,
        tenant=tenant,
        package=package,
        workflow_id=workflow,
        max_active_runs=max_active_runs,
        default_queue=default_queue,
    )


# -- workflows -------------------------------------------------------------------------------------------
def register_workflow(workflow: Workflow, name: str | None = None) -> None:
    """Register ``workflow`` under ``name`` (default: its own name), replacing an earlier one."""
    key = workflow.name if name is None else name
    if key != workflow.name:
        workflow = renamed(workflow, key)
    with _lock:
        _workflows[key] = workflow


def register_workflow_constructor(name: str, constructor: Callable[[], Workflow]) -> None:
    """Call ``constructor()`` now and register the ``Workflow`` it returns under ``name`` (whatever its own name).

    A constructor that raises, or returns anything but a ``Workflow``, is a ``ValueError`` at once.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_workflow_constructor() name must be a str, got {type(name).__name__}")
    check_name(name, "workflow name")
    if not callable(constructor):
        raise DefinitionError(f"constructor for workflow {name!r} must be callable, got {type(constructor).__name__}")
    try:
        built = constructor()
    except Exception as exc:
        raise DefinitionError(
            f"Failed to call workflow constructor for {name!r}: {type(exc).__name__}: {exc}", subject=name
        ) from exc
    if not isinstance(built, Workflow):
        raise DefinitionError(
            f"constructor for workflow {name!r} returned {type(built).__name__}, not a Workflow", subject=name
        )
    register_workflow(built, name)


def get_workflow(name: str) -> Workflow:
    """The workflow registered as ``name``; ``WorkflowNotFoundError`` (a ``ValueError``) if there is none."""
    with _lock:
        found = _workflows.get(name)
        known = sorted(_workflows)
    if found is None:
        raise WorkflowNotFoundError(name, known)
    return found


def workflow_names() -> list[str]:
    with _lock:
        return sorted(_workflows)


def unregister_workflow(name: str) -> None:
    with _lock:
        _workflows.pop(name, None)


# -- triggers --------------------------------------------------------------------------------------------
def register_trigger(definition: TriggerDefinition) -> None:
    """Register (or replace) a trigger; listeners hear of poll triggers only (a cron trigger is not polled)."""
    with _lock:
        _triggers[definition.name] = definition
        listeners = list(_trigger_listeners) if definition.cron is None else []
    for listener in listeners:
        listener(definition)


def unregister_trigger(name: str) -> None:
    with _lock:
        _triggers.pop(name, None)


def get_trigger(name: str) -> TriggerDefinition | None:
    with _lock:
        return _triggers.get(name)


def all_triggers() -> list[TriggerDefinition]:
    """Every registered trigger: poll triggers and cron triggers (``definition.cron`` set)."""
    with _lock:
        return list(_triggers.values())


def triggers() -> list[TriggerDefinition]:
    """The registered triggers that are **polled**: cron triggers are left out (see :func:`cron_triggers`)."""
    return [t for t in all_triggers() if t.cron is None]


def cron_triggers() -> list[TriggerDefinition]:
    """The registered ``@trigger(cron=..., on=...)`` definitions: each is a cron schedule of its workflow, which
    the runner and the pollers register at start (:mod:`cloacina.scheduling.cron_triggers`)."""
    return [t for t in all_triggers() if t.cron is not None]


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
    """Copy of all registries (tests use it with :func:`restore` to isolate global state).

    ``"constructors"`` is always empty: constructors are called when registered (kept for older readers).
    """
    with _lock:
        return {
            "workflows": dict(_workflows),
            "constructors": {},
            "tasks": dict(_tasks),
            "namespaces": {key: dict(tasks) for key, tasks in _namespaces.items()},
            "triggers": dict(_triggers),
        }


def restore(saved: dict[str, Any]) -> None:
    with _lock:
        for target, key in ((_workflows, "workflows"), (_tasks, "tasks"), (_triggers, "triggers")):
            target.clear()
            target.update(saved[key])
        _namespaces.clear()
        _namespaces.update({key: dict(tasks) for key, tasks in saved.get("namespaces", {}).items()})
