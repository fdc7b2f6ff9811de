"""Trigger rules: conditions that decide whether a task whose dependencies are finished runs or is Skipped.

Rules are immutable data that serialize to JSON, so the same rule is evaluated identically by the embedded
runner and by Celery workers (evaluation lives in :mod:`cloacina.engine.rule_eval`).

>>> rule = all_of(task_success("extract"), context_value("rows", ">", 0))
>>> Rule.from_dict(rule.to_dict()) == rule
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloacina.context import _check_json

#: Operator spellings accepted by :func:`context_value`, mapped to their canonical name.
OPERATORS: dict[str, str] = {
    "equals": "equals",
    "==": "equals",
    "eq": "equals",
    "not_equals": "not_equals",
    "!=": "not_equals",
    "ne": "not_equals",
    "greater_than": "greater_than",
    ">": "greater_than",
    "gt": "greater_than",
    "greater_or_equal": "greater_or_equal",
    ">=": "greater_or_equal",
    "ge": "greater_or_equal",
    "less_than": "less_than",
    "<": "less_than",
    "lt": "less_than",
    "less_or_equal": "less_or_equal",
    "<=": "less_or_equal",
    "le": "less_or_equal",
    "contains": "contains",
    "not_contains": "not_contains",
    "exists": "exists",
    "not_exists": "not_exists",
}
_UNARY = {"exists", "not_exists"}


class Rule:
    """Base class of trigger rules."""

    kind: str = ""

    def referenced_tasks(self) -> set[str]:
        """Task ids whose status this rule reads (checked against the workflow at build time)."""
        return set()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Rule:
        kind = data.get("kind")
        if kind == "always":
            return Always()
        if kind in ("all_of", "any_of", "none_of"):
            rules = tuple(Rule.from_dict(r) for r in data["rules"])
            return {"all_of": AllOf, "any_of": AnyOf, "none_of": NoneOf}[kind](rules)
        if kind == "task_status":
            return TaskStatusIs(data["task_id"], data["status"])
        if kind == "context_value":
            return ContextValue(data["key"], data["op"], data.get("value"))
        raise ValueError(f"unknown trigger rule kind {kind!r}")


@dataclass(frozen=True)
class Always(Rule):
    """Always true: the task runs once its dependencies are finished, whatever their outcome."""

    kind = "always"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "always"}


@dataclass(frozen=True)
class _Combinator(Rule):
    rules: tuple[Rule, ...]

    def referenced_tasks(self) -> set[str]:
        return set().union(*(r.referenced_tasks() for r in self.rules)) if self.rules else set()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rules": [r.to_dict() for r in self.rules]}


@dataclass(frozen=True)
class AllOf(_Combinator):
    """True when every inner rule is true (true when empty)."""

    kind = "all_of"


@dataclass(frozen=True)
class AnyOf(_Combinator):
    """True when at least one inner rule is true (false when empty)."""

    kind = "any_of"


@dataclass(frozen=True)
class NoneOf(_Combinator):
    """True when no inner rule is true."""

    kind = "none_of"


@dataclass(frozen=True)
class TaskStatusIs(Rule):
    """True when task ``task_id`` of the same run ended with ``status`` (Completed, Failed or Skipped)."""

    task_id: str
    status: str
    kind = "task_status"

    def referenced_tasks(self) -> set[str]:
        return {self.task_id}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "task_status", "task_id": self.task_id, "status": self.status}


@dataclass(frozen=True)
class ContextValue(Rule):
    """Compares the value under ``key`` in the task's input context with ``value`` using ``op``."""

    key: str
    op: str
    value: Any = None
    kind = "context_value"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "context_value", "key": self.key, "op": self.op, "value": self.value}


def _rules(args: tuple[Any, ...], name: str) -> tuple[Rule, ...]:
    flat: list[Any] = []
    for arg in args:
        flat.extend(arg if isinstance(arg, list | tuple) else [arg])
    for arg in flat:
        if not isinstance(arg, Rule):
            raise ValueError(f"{name}() takes trigger rules, got {type(arg).__name__}: {arg!r}")
    return tuple(flat)


def always() -> Rule:
    """A rule that is always true."""
    return Always()


def all_of(*rules: Rule) -> Rule:
    """True when all ``rules`` are true."""
    return AllOf(_rules(rules, "all_of"))


def any_of(*rules: Rule) -> Rule:
    """True when any of ``rules`` is true."""
    return AnyOf(_rules(rules, "any_of"))


def none_of(*rules: Rule) -> Rule:
    """True when none of ``rules`` is true."""
    return NoneOf(_rules(rules, "none_of"))


def _task_id(task: Any, name: str) -> str:
    task_id = getattr(task, "task_id", task)
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"{name}() needs a task id, got {task!r}")
    return task_id


def task_success(task: Any) -> Rule:
    """True when ``task`` Completed."""
    return TaskStatusIs(_task_id(task, "task_success"), "Completed")


def task_failed(task: Any) -> Rule:
    """True when ``task`` Failed."""
    return TaskStatusIs(_task_id(task, "task_failed"), "Failed")


def task_skipped(task: Any) -> Rule:
    """True when ``task`` was Skipped."""
    return TaskStatusIs(_task_id(task, "task_skipped"), "Skipped")


def context_value(key: str, op: str, value: Any = None) -> Rule:
    """Compare the task's input-context value under ``key`` with ``value``.

    ``op`` is one of equals (==), not_equals (!=), greater_than (>), greater_or_equal (>=), less_than (<),
    less_or_equal (<=), contains, not_contains, exists, not_exists.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"context_value() key must be a non-empty string, got {key!r}")
    canonical = OPERATORS.get(op) if isinstance(op, str) else None
    if canonical is None:
        raise ValueError(f"context_value() unknown operator {op!r}; use one of {sorted(set(OPERATORS))}")
    if canonical not in _UNARY:
        value = _check_json(key, value)
    return ContextValue(key, canonical, value if canonical not in _UNARY else None)
