"""``TaskDefinition``: a function ``f(context) -> context`` with its id, dependencies, retry policy and rule.

:func:`make_task_definition` validates the options of ``@task`` (in :mod:`cloacina.definitions.declare`,
which also registers the result) and builds the definition.

>>> def hello(context):
...     return context
>>> definition = make_task_definition(hello, {"dependencies": ["extract"], "retry_attempts": 0})
>>> definition.task_id, definition.dependencies, definition.retry.max_retries
('hello', ('extract',), 0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloacina.definitions.naming import check_name
from cloacina.definitions.retry import RetryPolicy
from cloacina.definitions.rules import Rule
from cloacina.errors import DefinitionError

TaskFunction = Callable[..., Any]
SuccessCallback = Callable[[str, Any], None]
FailureCallback = Callable[[str, str, Any], None]

_RETRY_OPTIONS = {
    "retry_attempts": "max_retries",
    "retry_backoff": "backoff",
    "retry_delay_ms": "initial_delay_ms",
    "retry_max_delay_ms": "max_delay_ms",
    "retry_condition": "condition",
    "retry_jitter": "jitter",
}
_OTHER_OPTIONS = {
    "id",
    "dependencies",
    "retry",
    "on_success",
    "on_failure",
    "trigger_rules",
    "timeout_seconds",
    "description",
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

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

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


def _build_retry(options: dict[str, Any], retry: RetryPolicy | None) -> RetryPolicy:
    given = {k: v for k, v in options.items() if v is not None}
    if retry is not None:
        if given:
            raise DefinitionError(f"pass either retry=RetryPolicy(...) or {', '.join(sorted(given))}, not both")
        if not isinstance(retry, RetryPolicy):
            raise DefinitionError(f"retry must be a cloacina.RetryPolicy, got {type(retry).__name__}")
        return retry
    return RetryPolicy(**{_RETRY_OPTIONS[k]: v for k, v in given.items()})


def _build_rule(rules: Any) -> Rule | None:
    if rules is None or isinstance(rules, Rule):
        return rules
    if isinstance(rules, dict):
        try:
            return Rule.from_dict(rules)
        except (KeyError, ValueError, TypeError) as exc:
            raise DefinitionError(f"invalid trigger_rules {rules!r}: {exc}") from None
    raise DefinitionError(f"trigger_rules must be a rule such as all_of(...), got {type(rules).__name__}")


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
    try:
        retry = _build_retry({k: options.get(k) for k in _RETRY_OPTIONS}, options.get("retry"))
    except DefinitionError as exc:
        raise DefinitionError(f"task {task_id!r}: {exc}", subject=task_id) from None
    timeout = options.get("timeout_seconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise DefinitionError(f"task {task_id!r}: timeout_seconds must be a positive number, got {timeout!r}")
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
    )
