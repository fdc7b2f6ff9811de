"""Evaluate trigger rules against the statuses of a run's tasks and a task's input context. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloacina.definitions.rules import AllOf, Always, AnyOf, ContextValue, NoneOf, Rule, TaskStatusIs
from cloacina.engine.merge import json_equal
from cloacina.engine.states import TaskStatus

_MISSING = object()


def evaluate_rule(rule: Rule, statuses: Mapping[str, TaskStatus], context: Mapping[str, Any]) -> bool:
    """Whether ``rule`` holds. A comparison between incomparable values is simply false."""
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
        return _compare(context.get(rule.key, _MISSING), rule.op, rule.value)
    raise TypeError(f"unknown rule type {type(rule).__name__}")


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "exists":
        return actual is not _MISSING
    if op == "not_exists":
        return actual is _MISSING
    if actual is _MISSING:
        return op in ("not_equals", "not_contains")
    try:
        if op == "equals":
            return json_equal(actual, expected)
        if op == "not_equals":
            return not json_equal(actual, expected)
        if op == "greater_than":
            return bool(actual > expected)
        if op == "greater_or_equal":
            return bool(actual >= expected)
        if op == "less_than":
            return bool(actual < expected)
        if op == "less_or_equal":
            return bool(actual <= expected)
        if op in ("contains", "not_contains"):
            if isinstance(actual, list):
                found = any(json_equal(item, expected) for item in actual)
            else:
                found = expected in actual  # substring of a str, key of an object
            return found if op == "contains" else not found
    except TypeError:
        return False
    raise ValueError(f"unknown operator {op!r}")
