"""The declaration API user code calls at import time: ``WorkflowBuilder``, ``@task`` and ``@trigger``.

Each builds a definition (the data and its validation live in :mod:`~cloacina.definitions.task`,
:mod:`~cloacina.definitions.trigger` and :mod:`~cloacina.definitions.workflow`) and hands it to
:mod:`~cloacina.definitions.registry`. Keeping them above the registry keeps the definition modules plain data:
the engine, the store and the registry import them without importing each other in a circle.

Inside ``with WorkflowBuilder(...)`` a ``@task`` joins that builder; outside one it joins the global task
registry, from where ``builder.add_task("id")`` can pick it up. The decorated function is returned unchanged (so
it stays callable and testable) with the definition attached as ``fn.__cloacina_task__``.

>>> from cloacina import WorkflowBuilder, task
>>> with WorkflowBuilder("doc_example") as builder:
...     @task(id="hello", retry_attempts=0)
...     def hello(context):
...         context.set("greeting", "hi")
...         return context
>>> builder.build().task_ids
('hello',)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

from cloacina.definitions import registry
from cloacina.definitions.duration import parse_duration_ms
from cloacina.definitions.naming import check_name
from cloacina.definitions.task import TaskDefinition, TaskFunction, make_task_definition
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow, build_workflow
from cloacina.errors import DefinitionError

_F = TypeVar("_F", bound=Callable[..., Any])


class WorkflowBuilder:
    """Collects tasks into a workflow; as a context manager it validates and registers it on exit.

    ``@task`` functions defined inside the ``with`` block join this builder automatically.
    """

    def __init__(self, name: str) -> None:
        self.name = check_name(name, "workflow name")
        self._description = ""
        self._tags: dict[str, str] = {}
        self._tasks: dict[str, TaskDefinition] = {}

    def description(self, text: str) -> WorkflowBuilder:
        if not isinstance(text, str):
            raise DefinitionError(f"workflow {self.name!r}: description must be a string")
        self._description = text
        return self

    def tag(self, key: str, value: str) -> WorkflowBuilder:
        if not isinstance(key, str) or not isinstance(value, str):
            raise DefinitionError(f"workflow {self.name!r}: tag key and value must be strings")
        self._tags[key] = value
        return self

    def add_task(self, task: str | TaskDefinition | Callable[..., Any]) -> WorkflowBuilder:
        """Add a task by definition, by decorated function, or by the id of a task registered globally."""
        if isinstance(task, TaskDefinition):
            definition = task
        elif isinstance(task, str):
            definition = registry.get_task(task)
        else:
            attached = getattr(task, "__cloacina_task__", None)
            if not isinstance(attached, TaskDefinition):
                raise DefinitionError(f"workflow {self.name!r}: add_task() takes a task id or a @task function")
            definition = attached
        if definition.task_id in self._tasks:
            raise DefinitionError(
                f"workflow {self.name!r}: duplicate task id {definition.task_id!r}",
                subject=definition.task_id,
            )
        self._tasks[definition.task_id] = definition
        return self

    def build(self) -> Workflow:
        return build_workflow(self.name, self._tasks, self._description, self._tags)

    def __enter__(self) -> WorkflowBuilder:
        registry.push_builder(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        registry.pop_builder(self)
        if exc_type is None:
            registry.register_workflow(self.build())


@overload
def task(fn: _F, /, **options: Any) -> _F: ...
@overload
def task(fn: None = None, /, **options: Any) -> Callable[[_F], _F]: ...
def task(fn: TaskFunction | None = None, /, **options: Any) -> Any:
    """Declare a task. Options: ``id``, ``dependencies``, ``retry_attempts``, ``retry_backoff``
    (fixed | linear | exponential), ``retry_delay_ms``, ``retry_max_delay_ms``, ``retry_condition``
    (never | transient | all), ``retry_jitter``, ``retry`` (a RetryPolicy), ``on_success(task_id, ctx)``,
    ``on_failure(task_id, error, ctx)``, ``trigger_rules``, ``timeout_seconds``, ``description``.
    """

    def decorate(func: TaskFunction) -> TaskFunction:
        definition = make_task_definition(func, options)
        registry.add_task_to_current_scope(definition)
        try:
            func.__cloacina_task__ = definition  # type: ignore[attr-defined]
            func.task_id = definition.task_id  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # builtins or callables without a __dict__
            pass
        return func

    if fn is not None:
        return decorate(fn)
    return decorate


def trigger(
    workflow: str | None = None,
    name: str | None = None,
    poll_interval: str = "5s",
    allow_concurrent: bool = False,
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register the decorated function as a trigger polled every ``poll_interval`` ("100ms", "5s", "1m", "1h").

    ``workflow`` names the workflow to fire; it may be omitted only in a package whose manifest binds it.
    With ``allow_concurrent=False`` a fire is skipped while a run fired with the same context is active.
    The function is returned unchanged, so it can still be called directly.
    """
    interval_ms = parse_duration_ms(poll_interval, what="poll_interval")
    if workflow is not None:
        check_name(workflow, "workflow name")
    if name is not None:
        check_name(name, "trigger name")
    if not isinstance(allow_concurrent, bool):
        raise DefinitionError(f"allow_concurrent must be True or False, got {allow_concurrent!r}")

    def decorate(fn: Callable[[], Any]) -> Callable[[], Any]:
        if not callable(fn):
            raise DefinitionError(f"@trigger decorates a function, got {type(fn).__name__}")
        trigger_name = check_name(name or getattr(fn, "__name__", None), "trigger name")
        definition = TriggerDefinition(
            name=trigger_name,
            function=fn,
            workflow=workflow,
            poll_interval_ms=interval_ms,
            allow_concurrent=allow_concurrent,
            poll_interval=poll_interval,
        )
        registry.register_trigger(definition)
        with contextlib.suppress(AttributeError, TypeError):  # builtins have no __dict__
            fn.__cloacina_trigger__ = definition  # type: ignore[attr-defined]
        return fn

    return decorate
