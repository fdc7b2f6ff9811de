"""The data a workflow run carries: a JSON-only mapping, its canonical form and its content hash.

The context hash is the identity used for trigger deduplication, so it must be the same in every process on
every machine: SHA-256 over canonical JSON (sorted keys, compact separators, UTF-8, no NaN/Infinity).

>>> ctx = Context({"b": 1, "a": [1, 2]})
>>> ctx.to_json()
'{"a":[1,2],"b":1}'
>>> context_hash({"a": [1, 2], "b": 1}) == ctx.content_hash()
True
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

JSONValue = Any  # None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]

_MISSING = object()


def canonical_json(data: Any) -> str:
    """Serialize ``data`` to the one canonical JSON text used for hashing and storage."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def context_hash(data: Mapping[str, Any] | None) -> str:
    """SHA-256 hex digest of the canonical JSON of ``data`` (``None`` hashes like ``{}``)."""
    return hashlib.sha256(canonical_json(dict(data or {})).encode("utf-8")).hexdigest()


def _check_json(key: str, value: Any) -> Any:
    """Return a deep copy of ``value`` if it is JSON-representable, else raise ``TypeError`` naming ``key``."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"context value for key {key!r} is not JSON-serializable ({type(value).__name__}): {exc}"
        ) from None
    # Round-tripping normalises tuples to lists and non-str dict keys, exactly as storage would.
    return json.loads(text)


class Context:
    """A mutable mapping of string keys to JSON values, passed from task to task.

    >>> ctx = Context()
    >>> ctx.insert("n", 1)
    >>> ctx.update("n", 2)
    >>> ctx.get("n")
    2
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | Context | None = None) -> None:
        self._data: dict[str, Any] = {}
        if data is not None:
            # ``object``: callers without type checking (task code, the cloaca API) may pass anything.
            source: object = data._data if isinstance(data, Context) else data
            if not isinstance(source, Mapping):
                raise TypeError(f"Context data must be a mapping, got {type(source).__name__}")
            for key, value in source.items():
                self.set(key, value)

    # -- cloaca API -------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Return a copy of the value under ``key`` (``default`` if absent); mutating it changes nothing."""
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        return copy.deepcopy(value)

    def set(self, key: str, value: Any) -> None:
        """Insert or replace ``key``."""
        self._data[self._check_key(key)] = _check_json(key, value)

    def insert(self, key: str, value: Any) -> None:
        """Add ``key``; raise ``ValueError`` if it is already present."""
        if key in self._data:
            raise ValueError(f"context key {key!r} already exists; use set() or update() to change it")
        self.set(key, value)

    def update(self, key: str, value: Any) -> None:
        """Replace the value of an existing ``key``; raise ``KeyError`` if it is absent."""
        if key not in self._data:
            raise KeyError(f"context key {key!r} does not exist; use insert() or set() to add it")
        self.set(key, value)

    def remove(self, key: str) -> Any:
        """Remove ``key`` and return its value, or ``None`` if it was absent."""
        return self._data.pop(key, None)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the data as a plain dict."""
        return copy.deepcopy(self._data)

    def update_from_dict(self, data: Mapping[str, Any]) -> None:
        """Upsert every item of ``data``; nothing changes if any value is not JSON."""
        checked = {self._check_key(k): _check_json(k, v) for k, v in data.items()}
        self._data.update(checked)

    def to_json(self) -> str:
        """Canonical JSON text of the data."""
        return canonical_json(self._data)

    @classmethod
    def from_json(cls, text: str) -> Context:
        """Build a context from JSON text whose top level is an object."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"context JSON must be an object, got {type(data).__name__}")
        return cls(data)

    def content_hash(self) -> str:
        """The SHA-256 identity of this context (see :func:`context_hash`)."""
        return context_hash(self._data)

    # -- mapping protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        if key not in self._data:
            raise KeyError(key)
        return copy.deepcopy(self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def keys(self) -> list[str]:
        return list(self._data)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, copy.deepcopy(v)) for k, v in self._data.items()]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Context({self._data!r})"

    @staticmethod
    def _check_key(key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f"context keys must be str, got {type(key).__name__}: {key!r}")
        return key


def coerce_context(value: Context | Mapping[str, Any] | None, *, what: str = "context") -> Context:
    """Accept a Context, a mapping or None where the API takes a context, with a clear error otherwise."""
    if value is None:
        return Context()
    if isinstance(value, Context):
        return value
    if isinstance(value, Mapping):
        return Context(value)
    raise TypeError(f"{what} must be a cloacina.Context or a dict, got {type(value).__name__}")
