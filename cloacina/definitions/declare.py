"""The declaration API user code calls at import time: ``WorkflowBuilder``, ``@task`` and ``@trigger``.

Each builds a definition (the data and its validation live in :mod:`~cloacina.definitions.task`,
:mod:`~cloacina.definitions.trigger` and :mod:`~cloacina.definitions.workflow`) and hands it to
:mod:`~cloacina.definitions.registry`. Keeping them above the registry keeps the definition modules plain data:
the engine, the store and the registry import them without importing each other in a circle.

As in cloaca, ``with WorkflowBuilder("wf")`` activates the workflow context ``public/embedded/wf``: a ``@task``
declared inside registers in that namespace, and the block's end builds the workflow from **every** task of the
namespace and registers it. ``builder.add_task(...)`` picks tasks for ``builder.build()``. A ``@task`` declared
with no active context is a standalone task (our extension), usable by ``add_task("id")``. The decorated function
is returned unchanged (so it stays callable and testable) with the definition attached as ``fn.__cloacina_task__``.

>>> from cloacina import WorkflowBuilder, task
>>> with WorkflowBuilder("doc_example") as builder:
...     @task(id="hello", retry_attempts=1)
...     def hello(context):
...         context.set("greeting", "hi")
...         return context
...     builder.add_task("hello")
>>> builder.build().task_ids
('hello',)
"""

from __future__ import annotations

import contextlib
import zoneinfo
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from cloacina.definitions import registry
from cloacina.definitions.duration import parse_duration_ms
from cloacina.definitions.naming import check_name, check_queue
from cloacina.definitions.task import TaskDefinition, TaskFunction, make_task_definition
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow, build_workflow, check_max_active_runs
from cloacina.errors import DefinitionError

_F = TypeVar("_F", bound=Callable[..., Any])


def _optional_str(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None, got {type(value).__name__}")
    return value


class WorkflowBuilder:
    """Collects tasks into a workflow; as a context manager it activates a workflow context, and on exit builds,
    validates and registers the workflow from every task of that context's namespace.

    ``WorkflowBuilder(name, *, tenant=None, package=None, workflow=None)``: the namespace is ``tenant``
    (``"public"``) / ``package`` (``"embedded"``) / ``workflow`` (``name``).
    """

    def __init__(
        self, name: str, *, tenant: str | None = None, package: str | None = None, workflow: str | None = None
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"WorkflowBuilder name must be a str, got {type(name).__name__}")
        self.name = check_name(name, "workflow name")
        self._scope = registry.WorkflowScope(
            check_name(_optional_str(tenant, "tenant") or registry.DEFAULT_TENANT, "tenant"),
            check_name(_optional_str(package, "package") or registry.DEFAULT_PACKAGE, "package name"),
            check_name(_optional_str(workflow, "workflow") or name, "workflow name"),
        )
        self._description = ""
        self._tags: dict[str, str] = {}
        self._tasks: dict[str, TaskDefinition] = {}
        self._max_active_runs: int | None = None
        self._default_queue: str | None = None

    @property
    def tenant(self) -> str:
        return self._scope.tenant

    @property
    def package(self) -> str:
        return self._scope.package

    @property
    def workflow_id(self) -> str:
        return self._scope.workflow

    def description(self, description: str) -> None:
        """Set the workflow's description."""
        if not isinstance(description, str):
            raise TypeError(f"workflow {self.name!r}: description must be a str, got {type(description).__name__}")
        self._description = description

    def tag(self, key: str, value: str) -> None:
        """Add a tag ``key=value`` to the workflow."""
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"workflow {self.name!r}: tag key and value must be strings")
        self._tags[key] = value

    def max_active_runs(self, n: int) -> None:
        """At most ``n`` runs of the workflow are active at once, cluster-wide (our extension); runs started beyond
        that wait (``Pending``, with a waiting reason) and start first in, first out as active ones end.
        ``ValueError`` unless ``n`` is an int of at least 1.

        >>> from cloacina import WorkflowBuilder, task
        >>> from cloacina.definitions.registry import get_workflow
        >>> with WorkflowBuilder("doc_limited") as builder:
        ...     builder.max_active_runs(2)
        ...     @task(id="only")
        ...     def only(context): return context
        >>> get_workflow("doc_limited").max_active_runs
        2
        """
        self._max_active_runs = check_max_active_runs(n, self.name)

    def default_queue(self, queue: str | None) -> None:
        """Route the workflow's tasks that name no ``queue=`` to Celery queue ``queue`` (our extension; ``None``:
        the deployment's ``CLOACINA_QUEUE`` again). A task's own ``queue=`` wins. Embedded mode ignores queues.

        >>> with WorkflowBuilder("doc_routed") as b:
        ...     b.default_queue("heavy")
        ...     _ = task(id="crunch")(lambda ctx: ctx)
        ...     _ = task(id="notify", dependencies=["crunch"], queue="light")(lambda ctx: ctx)
        ...     b.add_task("crunch")
        ...     b.add_task("notify")
        >>> wf = b.build()
        >>> wf.queue_of("crunch"), wf.queue_of("notify")
        ('heavy', 'light')
        """
        self._default_queue = None if queue is None else check_queue(queue, f"workflow {self.name!r}: default_queue")

    def _resolve(self, task: object) -> TaskDefinition:
        if isinstance(task, TaskDefinition):
            return task
        attached: object = None
        if isinstance(task, str):
            task_id = task
        else:
            name = getattr(task, "__name__", None)
            if not isinstance(name, str):
                raise DefinitionError(
                    "Task must be either a string task ID or a function object with __name__ attribute "
                    f"(workflow {self.name!r}, got {type(task).__name__})"
                )
            task_id, attached = name, getattr(task, "__cloacina_task__", None)
        found = registry.find_task(task_id, self._scope)
        if found is None and isinstance(attached, TaskDefinition) and registry.find_task(attached.task_id) is attached:
            found = attached  # a standalone task declared with an id other than its function's name
        if found is None:
            raise DefinitionError(
                f"Task {task_id!r} not found in registry for workflow {self._scope.workflow!r}. "
                "Make sure it was decorated with @task.",
                subject=task_id,
            )
        return found

    def add_task(self, task: str | Callable[..., Any] | TaskDefinition) -> None:
        """Add a task to what :meth:`build` builds: a task id, or a function (the task named by its ``__name__``),
        looked up among the tasks of this builder's namespace (then the standalone tasks); else ``ValueError``.

        Adding a task twice keeps it once.
        """
        definition = self._resolve(task)
        self._tasks[definition.task_id] = definition

    def build(self) -> Workflow:
        """The workflow of exactly the ``add_task``-ed tasks; ``ValueError`` if empty, cyclic or incomplete."""
        return build_workflow(
            self.name,
            self._tasks,
            self._description,
            self._tags,
            tenant=self._scope.tenant,
            package=self._scope.package,
            workflow_id=self._scope.workflow,
            max_active_runs=self._max_active_runs,
            default_queue=self._default_queue,
        )

    def __enter__(self) -> WorkflowBuilder:
        registry.push_scope(self._scope)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        """Build the workflow from every task of the namespace (and the ``add_task``-ed ones), validate it and
        register it under the workflow id, replacing an earlier one. Runs even if the block raised."""
        registry.pop_scope(self._scope)
        workflow = registry.collect_workflow(
            self._scope.workflow,
            tenant=self._scope.tenant,
            package=self._scope.package,
            extra=self._tasks,
            description=self._description,
            tags=self._tags,
            max_active_runs=self._max_active_runs,
            default_queue=self._default_queue,
        )
        registry.register_workflow(workflow)
        return False

    def __repr__(self) -> str:
        return f"WorkflowBuilder(name={self.name!r})"


class TaskDecorator:
    """What ``task(...)`` returns: calling it on a function registers the task and returns the function itself.

    No constructor (as in cloaca): ``task(...)`` makes one.
    """

    __slots__ = ("_options",)
    _options: dict[str, Any]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("No constructor defined for TaskDecorator; use cloacina.task(...)")

    @classmethod
    def _create(cls, options: dict[str, Any]) -> TaskDecorator:
        decorator = object.__new__(cls)
        decorator._options = options
        return decorator

    def __call__(self, obj: _F) -> _F:
        definition = make_task_definition(obj, self._options)
        registry.add_task_to_current_scope(definition)
        with contextlib.suppress(AttributeError, TypeError):  # builtins or callables without a __dict__
            obj.__cloacina_task__ = definition  # type: ignore[attr-defined]
            obj.task_id = definition.task_id  # type: ignore[attr-defined]
        return obj

    def __repr__(self) -> str:
        return "TaskDecorator"


@overload
def task(fn: _F, /, **options: Any) -> _F: ...
@overload
def task(fn: None = None, /, **options: Any) -> TaskDecorator: ...
def task(fn: TaskFunction | None = None, /, **options: Any) -> Any:
    """Declare a task: ``@task(id=..., dependencies=[...], ...)`` (or bare ``@task``, our extension).

    Options (keyword-only): ``id``, ``dependencies``, ``retry`` (a RetryPolicy), ``retry_attempts``,
    ``retry_backoff``, ``retry_delay_ms``, ``retry_max_delay_ms``, ``retry_condition``, ``retry_jitter``,
    ``on_success(task_id, ctx)``, ``on_failure(task_id, error, ctx)``, ``trigger_rules`` (a rule dict), and our
    ``timeout_seconds``, ``description``, ``pool``/``pool_slots`` (task pools) and ``queue`` (the Celery queue of
    the task's messages, consumed by ``cloacina worker --queues <queue>``; default: the workflow's
    ``default_queue``, else ``CLOACINA_QUEUE``; embedded mode ignores it). The task registers in the innermost
    active workflow context (a ``WorkflowBuilder`` block or the package loader's), or as a standalone task when
    none is active.
    """
    decorator = TaskDecorator._create(options)
    if fn is not None:
        return decorator(fn)
    return decorator


_CRON_FIELDS = (5, 6)
MIN_POLL_INTERVAL_MS = 10
"""The shortest interval a trigger is polled at (``poll_interval="0s"`` means as often as that)."""


def _check_cron(expression: object) -> str:
    """A cron expression of 5 fields (optionally a leading seconds field); its values are checked when the
    schedule is registered."""
    if not isinstance(expression, str):
        raise TypeError(f"cron must be a str, got {type(expression).__name__}")
    if len(expression.split()) not in _CRON_FIELDS:
        raise DefinitionError(
            f"Invalid cron expression {expression!r}: use 5 fields (minute hour day month weekday), "
            "optionally preceded by seconds"
        )
    return expression.strip()


def _check_timezone(timezone: str) -> str:
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DefinitionError(f"Invalid timezone {timezone!r}: use an IANA zone such as 'Europe/Paris'") from None
    return timezone


class TriggerDecorator:
    """What ``trigger(...)`` returns: calling it on a function records the trigger and returns the function.

    No constructor (as in cloaca): ``trigger(...)`` makes one.
    """

    __slots__ = ("_settings",)
    _settings: dict[str, Any]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("No constructor defined for TriggerDecorator; use cloacina.trigger(...)")

    @classmethod
    def _create(cls, settings: dict[str, Any]) -> TriggerDecorator:
        decorator = object.__new__(cls)
        decorator._settings = settings
        return decorator

    def __call__(self, obj: _F) -> _F:
        if not callable(obj):
            raise DefinitionError(f"@trigger decorates a function, got {type(obj).__name__}")
        settings = self._settings
        trigger_name = check_name(settings["name"] or getattr(obj, "__name__", None), "trigger name")
        definition = TriggerDefinition(
            name=trigger_name,
            function=obj,
            workflow=settings["workflow"],
            poll_interval_ms=settings["poll_interval_ms"],
            allow_concurrent=settings["allow_concurrent"],
            poll_interval=settings["poll_interval"],
            cron=settings["cron"],
            timezone=settings["timezone"],
        )
        registry.register_trigger(definition)
        with contextlib.suppress(AttributeError, TypeError):  # builtins have no __dict__
            obj.__cloacina_trigger__ = definition  # type: ignore[attr-defined]
        return obj

    def __repr__(self) -> str:
        return "TriggerDecorator"


def trigger(
    workflow: str | Callable[..., Any] | None = None,
    name: str | None = None,
    poll_interval: str | None = None,
    allow_concurrent: bool = False,
    *,
    on: str | None = None,
    cron: str | None = None,
    timezone: str | None = None,
) -> Any:
    """Declare a trigger: ``@trigger(name=None, on=None, poll_interval=None, cron=None, timezone=None,
    allow_concurrent=False)``.

    A poll trigger's function takes no arguments and returns ``TriggerResult.skip()``, ``TriggerResult.fire(ctx)``
    or a bool; it is polled every ``poll_interval`` (``"<int><unit>"``, unit ms/s/m/h, default ``"30s"``) and fires
    workflow ``on``. A cron trigger (``cron="0 2 * * *"``, ``timezone`` IANA, default UTC, ``on`` required, no
    ``poll_interval``) is a cron schedule of ``on``; its function is never called. ``allow_concurrent=False``
    skips a fire while a run fired with the same context is unfinished.

    The older form ``@trigger(workflow="wf", ...)`` / ``@trigger("wf", ...)`` still works: ``workflow`` is ``on``
    with a default interval of ``"5s"``. Bare ``@trigger`` (no parentheses) is our extension.
    """
    if callable(workflow):  # bare @trigger
        return trigger()(workflow)
    workflow = _optional_str(workflow, "workflow")
    on = _optional_str(on, "on")
    if workflow is not None and on is not None and workflow != on:
        raise DefinitionError(f"@trigger: workflow={workflow!r} and on={on!r} name different workflows; use on=")
    target = on if on is not None else workflow
    if target is not None:
        check_name(target, "workflow name")
    if name is not None:
        check_name(name, "trigger name")
    if not isinstance(allow_concurrent, bool):
        raise DefinitionError(f"allow_concurrent must be True or False, got {allow_concurrent!r}")
    if cron is not None:
        if poll_interval is not None:
            raise DefinitionError("@trigger cannot set both 'cron' and 'poll_interval'; pick one")
        if target is None:
            raise DefinitionError("@trigger(cron=...) requires 'on' (the workflow the cron schedule fires)")
        cron = _check_cron(cron)
    zone = _check_timezone(_optional_str(timezone, "timezone") or "UTC")
    poll_interval = _optional_str(poll_interval, "poll_interval")
    if poll_interval is None:
        poll_interval = "5s" if workflow is not None else "30s"
    # "0s" is accepted, as in cloaca; polling never runs tighter than MIN_POLL_INTERVAL_MS
    interval_ms = max(parse_duration_ms(poll_interval, what="poll_interval", allow_zero=True), MIN_POLL_INTERVAL_MS)
    return TriggerDecorator._create(
        {
            "name": name,
            "workflow": target,
            "poll_interval": poll_interval,
            "poll_interval_ms": interval_ms,
            "allow_concurrent": allow_concurrent,
            "cron": cron,
            "timezone": zone,
        }
    )
