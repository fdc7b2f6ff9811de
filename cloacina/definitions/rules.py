"""Trigger rules: conditions that decide whether a task whose dependencies are finished runs or is Skipped.

As in cloaca, the builders return **plain dicts** and a hand-written dict of the same shape is equivalent::

    context_value(key, operator, value) -> {"type": "ContextValue", "key": ..., "operator": OP, "value": ...}
    task_success(name) / task_failed / task_skipped -> {"type": "TaskSuccess"/"TaskFailed"/"TaskSkipped",
                                                        "task_name": name}
    all_of(*c) / any_of / none_of -> {"type": "All"/"Any"/"None", "conditions": [...]}
    always() -> {"type": "Always"}

``@task(trigger_rules=...)`` takes a rule whose conditions are condition dicts (a combinator nested in a
combinator is invalid), or a bare condition (wrapped in ``All``); :func:`parse_rule` validates it at decoration and
turns it into the immutable :class:`Rule` objects the engine evaluates (:mod:`cloacina.engine.rule_eval`).

Operators are case-insensitive with ``_`` ignored and stored PascalCase: ``Equals`` (``==``, ``eq``),
``NotEquals`` (``!=``, ``ne``), ``GreaterThan`` (``>``, ``gt``), ``LessThan`` (``<``, ``lt``), ``Contains``,
``NotContains``, ``Exists``, ``NotExists``; our extras ``GreaterOrEqual`` (``>=``, ``ge``) and ``LessOrEqual``
(``<=``, ``le``).

>>> context_value("rows", "greater_than", 0)
{'type': 'ContextValue', 'key': 'rows', 'operator': 'GreaterThan', 'value': 0}
>>> parse_rule(task_success("extract")).to_dict()
{'type': 'All', 'conditions': [{'type': 'TaskSuccess', 'task_name': 'extract'}]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPERATORS: dict[str, str] = {
    "equals": "Equals",
    "==": "Equals",
    "eq": "Equals",
    "notequals": "NotEquals",
    "!=": "NotEquals",
    "ne": "NotEquals",
    "greaterthan": "GreaterThan",
    ">": "GreaterThan",
    "gt": "GreaterThan",
    "lessthan": "LessThan",
    "<": "LessThan",
    "lt": "LessThan",
    "contains": "Contains",
    "notcontains": "NotContains",
    "exists": "Exists",
    "notexists": "NotExists",
    # extensions (CLOACA_API §17)
    "greaterorequal": "GreaterOrEqual",
    ">=": "GreaterOrEqual",
    "ge": "GreaterOrEqual",
    "lessorequal": "LessOrEqual",
    "<=": "LessOrEqual",
    "le": "LessOrEqual",
}
#: The canonical (PascalCase) operator names.
OPERATORS: tuple[str, ...] = tuple(dict.fromkeys(_OPERATORS.values()))

_STATUS_OF = {"TaskSuccess": "Completed", "TaskFailed": "Failed", "TaskSkipped": "Skipped"}
_TYPE_OF = {status: kind for kind, status in _STATUS_OF.items()}
_CONDITION_TYPES = frozenset([*_STATUS_OF, "ContextValue"])
_COMBINATOR_TYPES = frozenset(["All", "Any", "None"])


def normalize_operator(operator: object) -> str:
    """The PascalCase name of ``operator``; ``ValueError`` if it is not one (``TypeError`` if not a str)."""
    if not isinstance(operator, str):
        raise TypeError(f"trigger rule operator must be a str, got {type(operator).__name__}")
    canonical = _OPERATORS.get(operator.lower().replace("_", ""))
    if canonical is None:
        raise ValueError(f"trigger rule: unknown operator {operator!r}; use one of: {', '.join(OPERATORS)}")
    return canonical


def _json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples become lists); ``ValueError`` for anything JSON cannot hold."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, list | tuple):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: value not JSON-serializable (dict key {k!r} is not a str)")
            out[k] = _json_value(v, where)
        return out
    raise ValueError(f"{where}: value not JSON-serializable ({type(value).__name__})")


# -- builders (public API: plain dicts) ---------------------------------------------------------------------
def _task_name(task: object, builder: str) -> str:
    if not isinstance(task, str):  # our extension: a @task function stands for its id
        task_id = getattr(task, "task_id", None)
        if not isinstance(task_id, str):
            raise TypeError(f"{builder}() takes a task name (str), got {type(task).__name__}")
        task = task_id
    return task


def context_value(key: str, operator: str, value: Any) -> dict[str, Any]:
    """Compare the task's input-context value under ``key`` with ``value``."""
    if not isinstance(key, str):
        raise TypeError(f"context_value() key must be a str, got {type(key).__name__}")
    op = normalize_operator(operator)
    return {"type": "ContextValue", "key": key, "operator": op, "value": _json_value(value, "context_value")}


def task_success(task_name: str) -> dict[str, Any]:
    """True when ``task_name`` Completed."""
    return {"type": "TaskSuccess", "task_name": _task_name(task_name, "task_success")}


def task_failed(task_name: str) -> dict[str, Any]:
    """True when ``task_name`` Failed."""
    return {"type": "TaskFailed", "task_name": _task_name(task_name, "task_failed")}


def task_skipped(task_name: str) -> dict[str, Any]:
    """True when ``task_name`` was Skipped."""
    return {"type": "TaskSkipped", "task_name": _task_name(task_name, "task_skipped")}


def _combine(kind: str, conditions: tuple[Any, ...]) -> dict[str, Any]:
    return {"type": kind, "conditions": [_json_value(c, "trigger rule condition") for c in conditions]}


def all_of(*conditions: Any) -> dict[str, Any]:
    """True when every condition holds (true when empty)."""
    return _combine("All", conditions)


def any_of(*conditions: Any) -> dict[str, Any]:
    """True when at least one condition holds (false when empty)."""
    return _combine("Any", conditions)


def none_of(*conditions: Any) -> dict[str, Any]:
    """True when no condition holds."""
    return _combine("None", conditions)


def always() -> dict[str, Any]:
    """The default rule: the task runs once its dependencies are finished, whatever their outcome."""
    return {"type": "Always"}


# -- parsed form (what the engine evaluates) ----------------------------------------------------------------
class Rule:
    """Base class of parsed rules and conditions."""

    def referenced_tasks(self) -> set[str]:
        """Task ids whose status this rule reads (checked against the workflow at build time)."""
        return set()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_dict(data: Any) -> Rule:
        """Same as :func:`parse_rule`."""
        return parse_rule(data)


@dataclass(frozen=True)
class Always(Rule):
    """Always true."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Always"}


@dataclass(frozen=True)
class TaskStatusIs(Rule):
    """True when task ``task_id`` of the same run ended with ``status`` (Completed, Failed or Skipped)."""

    task_id: str
    status: str

    def referenced_tasks(self) -> set[str]:
        return {self.task_id}

    def to_dict(self) -> dict[str, Any]:
        return {"type": _TYPE_OF[self.status], "task_name": self.task_id}


@dataclass(frozen=True)
class ContextValue(Rule):
    """Compares the value under ``key`` in the task's input context with ``value`` using ``op`` (PascalCase)."""

    key: str
    op: str
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ContextValue", "key": self.key, "operator": self.op, "value": self.value}


Condition = TaskStatusIs | ContextValue


@dataclass(frozen=True)
class _Combinator(Rule):
    rules: tuple[Condition, ...]
    kind = ""

    def referenced_tasks(self) -> set[str]:
        return set().union(*(r.referenced_tasks() for r in self.rules))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "conditions": [r.to_dict() for r in self.rules]}


@dataclass(frozen=True)
class AllOf(_Combinator):
    """True when every condition holds (true when empty)."""

    kind = "All"


@dataclass(frozen=True)
class AnyOf(_Combinator):
    """True when at least one condition holds (false when empty)."""

    kind = "Any"


@dataclass(frozen=True)
class NoneOf(_Combinator):
    """True when no condition holds."""

    kind = "None"


_COMBINATORS: dict[str, type[_Combinator]] = {"All": AllOf, "Any": AnyOf, "None": NoneOf}


def _plain_task_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"task_name must be a non-empty str, got {name!r}")
    return name.rsplit("::", 1)[-1]  # a qualified "tenant::package::workflow::task" names the task


def parse_condition(data: object) -> Condition:
    """A condition dict as a :class:`TaskStatusIs` or :class:`ContextValue`; ``ValueError`` otherwise."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a trigger rule condition must be a dict, got {type(data).__name__}: {data!r}")
    kind = data.get("type")
    if kind in _STATUS_OF:
        return TaskStatusIs(_plain_task_name(data.get("task_name")), _STATUS_OF[kind])
    if kind == "ContextValue":
        key = data.get("key")
        if not isinstance(key, str):
            raise ValueError(f"ContextValue condition needs a str 'key', got {key!r}")
        try:
            op = normalize_operator(data.get("operator"))
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return ContextValue(key, op, _json_value(data.get("value"), "ContextValue"))
    if kind in _COMBINATOR_TYPES or kind == "Always":
        raise ValueError(f"a rule's conditions cannot contain the rule {kind!r} (combinators do not nest)")
    raise ValueError(f"unknown trigger rule condition type {kind!r}")


def parse_rule(data: object) -> Rule:
    """Validate a ``trigger_rules=`` value (rule or bare condition dict) and return its parsed :class:`Rule`.

    ``ValueError`` for anything else, including a combinator nested in a combinator.
    """
    if isinstance(data, Rule):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"a trigger rule must be a dict such as all_of(...), got {type(data).__name__}")
    kind = data.get("type")
    if kind in _CONDITION_TYPES:
        return AllOf((parse_condition(data),))
    if kind == "Always":
        return Always()
    if kind in _COMBINATORS:
        conditions = data.get("conditions")
        if not isinstance(conditions, list | tuple):
            raise ValueError(f"rule {kind!r} needs a list of 'conditions', got {conditions!r}")
        return _COMBINATORS[kind](tuple(parse_condition(c) for c in conditions))
    raise ValueError(f"unknown trigger rule type {kind!r}; use all_of/any_of/none_of/always or a condition")
