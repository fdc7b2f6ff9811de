"""``TaskDefinition``: a function ``f(context) -> context`` with its id, dependencies, retry policy and rule.

:func:`make_task_definition` validates the options of ``@task`` (in :mod:`cloacina.definitions.declare`,
which also registers the result) and builds the definition.

>>> def hello(context):
...     return context
>>> definition = make_task_definition(hello, {"dependencies": ["extract"], "retry_attempts": 1})
>>> definition.task_id, definition.dependencies, definition.retry.max_attempts, definition.wants_handle
('hello', ('extract',), 1, False)

A function whose second positional parameter is named ``handle`` or ``task_handle`` is called as
``fn(context, handle)`` with a :class:`~cloacina.execution.task_handle.TaskHandle`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloacina.definitions.naming import check_name, check_queue
from cloacina.definitions.retry import BackoffStrategy, RetryCondition, RetryPolicy
from cloacina.definitions.rules import Rule
from cloacina.errors import DefinitionError

TaskFunction = Callable[..., Any]
SuccessCallback = Callable[[str, Any], None]
FailureCallback = Callable[[str, str, Any], None]

_RETRY_OPTIONS = (
    "retry_attempts",
    "retry_backoff",
    "retry_delay_ms",
    "retry_max_delay_ms",
    "retry_condition",
    "retry_jitter",
)
HANDLE_PARAMETERS = ("handle", "task_handle")
_OUT_OF_SCOPE = ("invokes", "post_invocation")  # computation graphs: accepted as None only
_OTHER_OPTIONS = {
    "id",
    "dependencies",
    "retry",
    "on_success",
    "on_failure",
    "trigger_rules",
    "timeout_seconds",
    "description",
    "pool",  # task pools (our extension): see _build_pool
    "pool_slots",
    "queue",  # routing (DESIGN §4b): the Celery queue of the task's messages
    *_OUT_OF_SCOPE,
}


@dataclass(frozen=True)
class TaskDefinition:
    """Everything the engine needs to know about one task."""

    task_id: str
    function: TaskFunction = field(compare=False)
    dependencies: tuple[str, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    trigger_rule: Rule | None = None
    on_success: SuccessCallback | None = field(default=None, compare=False)
    on_failure: FailureCallback | None = field(default=None, compare=False)
    timeout_s: float | None = None
    description: str = ""
    # Task pools (our extension): the cluster-wide pool whose ``pool_slots`` slots the task takes while it runs.
    pool: str | None = None
    pool_slots: int = 1
    queue: str | None = None  # its messages' Celery queue; None: the workflow's default_queue, else CLOACINA_QUEUE

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    @property
    def wants_handle(self) -> bool:
        """Called as ``fn(context, handle)``: two or more positional parameters, the second named ``handle`` or
        ``task_handle`` (cloaca reads the function's code object the same way)."""
        return _second_parameter(self.function) in HANDLE_PARAMETERS

    def code_fingerprint(self) -> str:
        """Text that changes when the function's code changes (used in the workflow's content hash)."""
        fn = self.function
        try:
            return inspect.getsource(fn)
        except (OSError, TypeError):
            code = getattr(fn, "__code__", None)
            return repr(code.co_code) if code is not None else getattr(fn, "__qualname__", repr(fn))


def _dependency_id(dep: Any) -> str:
    definition = getattr(dep, "__cloacina_task__", None)
    if isinstance(definition, TaskDefinition):
        return definition.task_id
    if isinstance(dep, TaskDefinition):
        return dep.task_id
    if isinstance(dep, str) and dep:
        return dep
    raise DefinitionError(f"task dependency must be a task id or a @task function, got {dep!r}")


def _second_parameter(fn: TaskFunction) -> str | None:
    code = getattr(fn, "__code__", None)
    if code is not None:
        return str(code.co_varnames[1]) if code.co_argcount >= 2 else None
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[1].name if len(positional) >= 2 else None


def _count(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int, got {type(value).__name__}")
    if value < 0:
        raise DefinitionError(f"{option} must be >= 0, got {value}")
    return value


def _build_retry(options: dict[str, Any], retry: RetryPolicy | None) -> RetryPolicy:
    """The policy of ``retry=`` or of the ``retry_*`` keywords (``None`` meaning the default), never both."""
    given = {k: v for k, v in options.items() if v is not None}
    if retry is not None:
        if given:
            raise DefinitionError(
                "@task(retry=RetryPolicy(...)) cannot be combined with the retry_* keyword arguments "
                f"(got: {', '.join(sorted(given))}). Use the RetryPolicy object OR the keywords, not both."
            )
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        return retry
    changes: dict[str, Any] = {}
    if "retry_attempts" in given:
        changes["max_attempts"] = _count(given["retry_attempts"], "retry_attempts")
    if "retry_backoff" in given:
        changes["backoff"] = BackoffStrategy.named(given["retry_backoff"])
    if "retry_delay_ms" in given:
        changes["initial_delay"] = _count(given["retry_delay_ms"], "retry_delay_ms") / 1000
    if "retry_max_delay_ms" in given:
        changes["max_delay"] = _count(given["retry_max_delay_ms"], "retry_max_delay_ms") / 1000
    if "retry_condition" in given:
        changes["condition"] = RetryCondition.named(given["retry_condition"])
    if "retry_jitter" in given:
        jitter = given["retry_jitter"]
        if not isinstance(jitter, bool):
            raise TypeError(f"retry_jitter must be a bool, got {type(jitter).__name__}")
        changes["with_jitter"] = jitter
    return RetryPolicy(**changes)


def _build_rule(rules: Any) -> Rule | None:
    if rules is None or isinstance(rules, Rule):
        return rules
    if isinstance(rules, dict):
        try:
            return Rule.from_dict(rules)
        except (KeyError, ValueError, TypeError) as exc:
            raise DefinitionError(f"invalid trigger_rules {rules!r}: {exc}") from None
    raise DefinitionError(f"trigger_rules must be a rule such as all_of(...), got {type(rules).__name__}")


def _build_pool(task_id: str, pool: object, slots: object) -> tuple[str | None, int]:
    """``pool=``/``pool_slots=`` checked: a pool name (as ``cloacina pools set`` takes it) and an int >= 1."""
    if pool is None:
        if slots is not None:
            raise DefinitionError(f"task {task_id!r}: pool_slots={slots!r} needs pool=<name>", subject=task_id)
        return None, 1
    if not isinstance(pool, str) or not pool:
        raise DefinitionError(f"task {task_id!r}: pool must be a non-empty pool name, got {pool!r}", subject=task_id)
    check_name(pool, "pool name")
    if slots is None:
        return pool, 1
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise DefinitionError(f"task {task_id!r}: pool_slots must be an int >= 1, got {slots!r}", subject=task_id)
    return pool, slots


def make_task_definition(fn: TaskFunction, options: dict[str, Any]) -> TaskDefinition:
    """Validate ``@task`` options for ``fn`` and build its definition."""
    unknown = set(options) - set(_RETRY_OPTIONS) - _OTHER_OPTIONS
    if unknown:
        raise DefinitionError(
            f"@task got unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(set(_RETRY_OPTIONS) | _OTHER_OPTIONS))}"
        )
    if not callable(fn):
        raise DefinitionError(f"@task decorates a function, got {type(fn).__name__}")
    task_id = check_name(options["id"] if options.get("id") is not None else getattr(fn, "__name__", None), "task id")
    deps_in = options.get("dependencies") or ()
    if isinstance(deps_in, str) or not isinstance(deps_in, Sequence):
        raise DefinitionError(f"task {task_id!r}: dependencies must be a list, got {deps_in!r}")
    deps = tuple(_dependency_id(d) for d in deps_in)
    if len(set(deps)) != len(deps):
        raise DefinitionError(f"task {task_id!r} lists a dependency twice: {list(deps)}")
    if task_id in deps:
        raise DefinitionError(f"task {task_id!r} depends on itself")
    for name in _OUT_OF_SCOPE:
        if options.get(name) is not None:
            raise DefinitionError(f"task {task_id!r}: {name}= (computation graphs) is not supported by cloacina")
    try:
        retry = _build_retry({k: options.get(k) for k in _RETRY_OPTIONS}, options.get("retry"))
    except DefinitionError as exc:
        raise DefinitionError(f"task {task_id!r}: {exc}", subject=task_id) from None
    except TypeError as exc:
        raise TypeError(f"task {task_id!r}: {exc}") from None
    timeout = options.get("timeout_seconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise DefinitionError(f"task {task_id!r}: timeout_seconds must be a positive number, got {timeout!r}")
    pool, pool_slots = _build_pool(task_id, options.get("pool"), options.get("pool_slots"))
    for name in ("on_success", "on_failure"):
        cb = options.get(name)
        if cb is not None and not callable(cb):
            raise DefinitionError(f"task {task_id!r}: {name} must be callable, got {type(cb).__name__}")
    return TaskDefinition(
        task_id=task_id,
        function=fn,
        dependencies=deps,
        retry=retry,
        trigger_rule=_build_rule(options.get("trigger_rules")),
        on_success=options.get("on_success"),
        on_failure=options.get("on_failure"),
        timeout_s=float(timeout) if timeout is not None else None,
        description=options.get("description") or inspect.getdoc(fn) or "",
        pool=pool,
        pool_slots=pool_slots,
        queue=_queue(task_id, options.get("queue")),
    )


def _queue(task_id: str, queue: object) -> str | None:
    """The task's ``queue=`` (``None``: not routed by the task itself), checked."""
    return None if queue is None else check_queue(queue, f"task {task_id!r}: queue")
