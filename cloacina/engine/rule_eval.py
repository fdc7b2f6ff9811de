"""Evaluate trigger rules against the statuses of a run's tasks and a task's input context. Pure.

Semantics are cloaca's:

- ``All`` holds when every condition does (so when empty), ``Any`` when one does, ``None`` when none does.
- ``TaskSuccess``/``TaskFailed``/``TaskSkipped`` hold when the named task is Completed/Failed/Skipped.
- ``ContextValue`` reads the task's input context. ``Equals``/``NotEquals`` compare JSON values (a missing key
  equals nothing; ``true`` is not ``1``, and, as JSON numbers in cloaca, an integer is not a float: ``1 != 1.0``).
  ``GreaterThan``/``LessThan`` (and our ``GreaterOrEqual``/``LessOrEqual``) compare two numbers as floats and are
  false otherwise. ``Contains`` is substring for two strings, membership for an array, false otherwise;
  ``NotContains`` is its negation. ``Exists``/``NotExists`` ignore the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cloacina.definitions.rules import AllOf, Always, AnyOf, ContextValue, NoneOf, Rule, TaskStatusIs
from cloacina.engine.states import TaskStatus

_MISSING = object()


def evaluate_rule(rule: Rule, statuses: Mapping[str, TaskStatus], context: Mapping[str, Any]) -> bool:
    """Whether ``rule`` holds for a task whose input context is ``context``."""
    if isinstance(rule, Always):
        return True
    if isinstance(rule, AllOf):
        return all(evaluate_rule(r, statuses, context) for r in rule.rules)
    if isinstance(rule, AnyOf):
        return any(evaluate_rule(r, statuses, context) for r in rule.rules)
    if isinstance(rule, NoneOf):
        return not any(evaluate_rule(r, statuses, context) for r in rule.rules)
    if isinstance(rule, TaskStatusIs):
        return str(statuses.get(rule.task_id, "")) == rule.status
    if isinstance(rule, ContextValue):
        return compare(context.get(rule.key, _MISSING), rule.op, rule.value)
    raise TypeError(f"unknown rule type {type(rule).__name__}")


def strict_json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values as cloaca has it: same JSON type and value (``True != 1``, ``1 != 1.0``)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int) and isinstance(right, int):
        return left == right
    if isinstance(left, float) and isinstance(right, float):
        return left == right
    if isinstance(left, int | float) or isinstance(right, int | float):
        return False
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(strict_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(strict_json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and bool(left == right)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str) and isinstance(expected, str):
        return expected in actual
    if isinstance(actual, list):
        return any(strict_json_equal(item, expected) for item in actual)
    return False


_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    "GreaterThan": lambda a, b: a > b,
    "LessThan": lambda a, b: a < b,
    "GreaterOrEqual": lambda a, b: a >= b,
    "LessOrEqual": lambda a, b: a <= b,
}


def compare(actual: Any, op: str, expected: Any) -> bool:
    """``actual op expected``; ``actual`` is ``_MISSING`` when the key is absent."""
    if op == "Exists":
        return actual is not _MISSING
    if op == "NotExists":
        return actual is _MISSING
    if op == "Equals":
        return actual is not _MISSING and strict_json_equal(actual, expected)
    if op == "NotEquals":
        return actual is _MISSING or not strict_json_equal(actual, expected)
    if op in _NUMERIC:
        if actual is _MISSING or not _is_number(actual) or not _is_number(expected):
            return False
        return _NUMERIC[op](float(actual), float(expected))
    if op == "Contains":
        return actual is not _MISSING and _contains(actual, expected)
    if op == "NotContains":
        return actual is _MISSING or not _contains(actual, expected)
    raise ValueError(f"unknown operator {op!r}")
