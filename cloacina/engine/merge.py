"""Context merge used at fan-in and for a run's ``final_context``.

Objects merge recursively, lists concatenate without duplicates (first occurrence order kept), any other value:
the later one wins.

>>> merge_values({"a": {"x": 1}, "l": [1, 2]}, {"a": {"y": 2}, "l": [2, 3], "n": 5})
{'a': {'x': 1, 'y': 2}, 'l': [1, 2, 3], 'n': 5}
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values: ``==`` except that a boolean never equals a number (``True != 1``)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def _concat_unique(left: list[Any], right: list[Any]) -> list[Any]:
    out = list(left)
    for item in right:
        if not any(json_equal(item, seen) for seen in out):
            out.append(item)
    return out


def merge_values(left: Any, right: Any) -> Any:
    """Merge ``right`` into ``left`` without mutating either."""
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        out = {k: copy.deepcopy(v) for k, v in left.items()}
        for key, value in right.items():
            out[key] = merge_values(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(left, list) and isinstance(right, list):
        return _concat_unique(copy.deepcopy(left), copy.deepcopy(right))
    return copy.deepcopy(right)


def merge_contexts(contexts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold :func:`merge_values` over ``contexts`` in order, starting from ``{}``."""
    out: dict[str, Any] = {}
    for ctx in contexts:
        out = merge_values(out, ctx)
    return out
