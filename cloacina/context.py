"""The data a workflow run carries: a JSON-only mapping, its canonical form and its content hash.

Values are checked and copied **on write** (cloaca's rules): ``NaN`` and ``±inf`` are stored as ``null``, tuples
and sets become lists, and a non-``str`` dict key or a non-JSON object (``datetime``, ``bytes``, ...) is a
``TypeError`` naming the context key. Reads (``get``, ``[]``, ``to_dict``) return fresh copies.

The context hash is the identity used for trigger deduplication, so it must be the same in every process on
every machine: SHA-256 over canonical JSON (sorted keys, compact separators, UTF-8, no NaN/Infinity).

Secrets (``secret``/``secret_field``) are resolved by the secrets scope of the *running task* (see
:mod:`cloacina.secrets`): the framework binds that scope around a task attempt, and the Context it hands to the task
keeps a reference to it; any other Context has none. Secret values are returned to the caller only; they never
enter the context's data.

>>> ctx = Context({"b": 1, "a": (1, 2)})
>>> ctx.to_json()
'{"a":[1,2],"b":1}'
>>> context_hash({"a": [1, 2], "b": 1}) == ctx.content_hash()
True
>>> Context({"x": float("nan")})
Context({"x":null})
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

JSONValue = Any  # None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]

_MISSING = object()
SECRET_REFS_KEY = "__cloacina_secret_refs__"  # {local binding name: concrete secret name}, names only


def canonical_json(data: Any) -> str:
    """Serialize ``data`` to the one canonical JSON text used for hashing and storage."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def context_hash(data: Mapping[str, Any] | None) -> str:
    """SHA-256 hex digest of the canonical JSON of ``data`` (``None`` hashes like ``{}``)."""
    return hashlib.sha256(canonical_json(dict(data or {})).encode("utf-8")).hexdigest()


# -- JSON on write ---------------------------------------------------------------------------------------
class _NotJSON(Exception):
    def __init__(self, path: list[str], value: object, reason: str) -> None:
        super().__init__(reason)
        self.path, self.value, self.reason = path, value, reason


def _normalise(value: Any) -> JSONValue:
    """A fresh JSON-only copy of ``value`` (see the module docstring for the rules)."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict or isinstance(value, Mapping):
        out: dict[str, JSONValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotJSON([], k, f"dict keys must be str, got {type(k).__name__} {k!r}")
            try:
                out[str.__str__(k)] = _normalise(v)
            except _NotJSON as exc:
                exc.path.insert(0, repr(k))
                raise
        return out
    items: Iterable[Any]
    if kind is list or isinstance(value, list | tuple):
        items = value
    elif isinstance(value, set | frozenset):
        try:  # a stable order keeps the context hash stable
            items = sorted(value)
        except TypeError:
            items = list(value)
    elif isinstance(value, int):  # subclasses (IntEnum, ...) are stored as plain numbers and strings
        return int.__int__(value)
    elif isinstance(value, float):
        return float.__float__(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        return str.__str__(value)
    else:
        raise _NotJSON([], value, f"{type(value).__name__} is not a JSON value")
    result: list[JSONValue] = []
    for index, item in enumerate(items):
        try:
            result.append(_normalise(item))
        except _NotJSON as exc:
            exc.path.insert(0, str(index))
            raise
    return result


def _check_json(key: str, value: Any) -> JSONValue:
    """Return a JSON-only copy of ``value``, or raise ``TypeError`` naming ``key`` (and where inside it)."""
    try:
        return _normalise(value)
    except _NotJSON as exc:
        where = "".join(f"[{p}]" for p in exc.path)
        raise TypeError(f"context value for key {key!r}{where} is not JSON-serializable: {exc.reason}") from None
    except RecursionError:
        raise TypeError(f"context value for key {key!r} is nested too deeply (or contains itself)") from None


def _copy(value: JSONValue) -> JSONValue:
    """Deep copy of a JSON value (faster than ``copy.deepcopy`` for this shape)."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"context keys must be str, got {type(key).__name__}: {key!r}")
    return key if type(key) is str else str.__str__(key)


# -- secrets of the running task -----------------------------------------------------------------------------
class SecretResolver(Protocol):
    """What a running task's Context asks for secrets (implemented in :mod:`cloacina.secrets`)."""

    def resolve(self, requested: str, concrete: str) -> dict[str, str]:
        """Fields of secret ``concrete``, asked for by the task as ``requested`` (a binding name or the same)."""
        ...


_TASK_SECRETS: ContextVar[SecretResolver | None] = ContextVar("cloacina_task_secrets", default=None)


@contextmanager
def task_secrets_bound(resolver: SecretResolver) -> Iterator[None]:
    """Bind ``resolver`` as the secrets scope of the task attempt run inside the block (its Context resolves
    through it; see ``Context._for_running_task``)."""
    token = _TASK_SECRETS.set(resolver)
    try:
        yield
    finally:
        _TASK_SECRETS.reset(token)


# -- Context -----------------------------------------------------------------------------------------------
class Context:
    """A mutable mapping of string keys to JSON values, passed from task to task.

    >>> ctx = Context()
    >>> ctx.insert("n", None)
    >>> "n" in ctx, ctx.get("n", 0)
    (True, None)
    >>> ctx.update("n", 2)
    >>> ctx["n"]
    2
    """

    __slots__ = ("_data", "_secrets")

    def __init__(self, data: Mapping[str, Any] | Context | None = None) -> None:
        self._data: dict[str, Any] = {}
        self._secrets: SecretResolver | None = None
        if data is not None:
            # ``object``: callers without type checking (task code, the cloaca API) may pass anything.
            source: object = data._data if isinstance(data, Context) else data
            if not isinstance(source, Mapping):
                raise TypeError(f"Context data must be a dict (or None), got {type(source).__name__}")
            self.update_from_dict(source)

    @classmethod
    def _for_running_task(cls, data: Mapping[str, Any]) -> Context:
        """The Context handed to a task: ``data`` plus the secrets scope its caller bound (:func:`task_secrets_bound`).

        Only this Context resolves secrets; one built in user code, even inside the task, does not (cloaca's rule).
        """
        ctx = cls(data)
        ctx._secrets = _TASK_SECRETS.get()
        return ctx

    # -- cloaca API -------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """A fresh copy of the value under ``key``; ``default`` only if the key is absent (a null gives None)."""
        value = self._data.get(_check_key(key), _MISSING)
        if value is _MISSING:
            return default
        return _copy(value)

    def set(self, key: str, value: Any) -> None:
        """Insert or replace ``key``."""
        key = _check_key(key)
        self._data[key] = _check_json(key, value)

    def insert(self, key: str, value: Any) -> None:
        """Add ``key``; raise ``ValueError`` if it is already present (even with a null value)."""
        if _check_key(key) in self._data:
            raise ValueError(f"context key {key!r} already exists; use set() or update() to change it")
        self.set(key, value)

    def update(self, key: str, value: Any) -> None:
        """Replace the value of an existing ``key``; raise ``KeyError`` if it is absent."""
        if _check_key(key) not in self._data:
            raise KeyError(f"context key {key!r} does not exist; use insert() or set() to add it")
        self.set(key, value)

    def remove(self, key: str) -> Any:
        """Remove ``key`` and return its value, or ``None`` if it was absent."""
        return self._data.pop(_check_key(key), None)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the data as a plain dict."""
        return {k: _copy(v) for k, v in self._data.items()}

    def update_from_dict(self, data: Mapping[str, Any]) -> None:
        """Upsert every item of ``data``; nothing changes if any key or value is not JSON."""
        if not isinstance(data, Mapping):
            raise TypeError(f"update_from_dict() needs a dict, got {type(data).__name__}")
        checked: dict[str, Any] = {}
        for k, v in data.items():
            key = _check_key(k)
            checked[key] = _check_json(key, v)
        self._data.update(checked)

    def to_json(self) -> str:
        """JSON object text of the data (canonical: sorted keys, compact)."""
        return canonical_json(self._data)

    @classmethod
    def from_json(cls, json_str: str) -> Context:
        """Build a context from JSON text; ``ValueError`` unless it is valid JSON whose top level is an object."""
        if not isinstance(json_str, str):
            raise TypeError(f"from_json() needs a str, got {type(json_str).__name__}")
        data = json.loads(json_str)  # json.JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError(f"context JSON must be an object, got {type(data).__name__}")
        return cls(data)

    def content_hash(self) -> str:
        """The SHA-256 identity of this context (see :func:`context_hash`)."""
        return context_hash(self._data)

    # -- secrets ------------------------------------------------------------------------------------------
    def secret(self, name: str) -> dict[str, str]:
        """Field -> value map of secret ``name`` (a binding name or the concrete secret name).

        ``RuntimeError``: no secrets backend for this context (it was not handed to a running task, or none is
        configured) or the backend failed; ``KeyError``: unknown secret; ``PermissionError``: not granted to the
        workflow. The value is returned to the caller only, never stored in the context.
        """
        if not isinstance(name, str):
            raise TypeError(f"secret name must be str, got {type(name).__name__}")
        if self._secrets is None:
            raise RuntimeError(
                f"cannot read secret {name!r}: no secrets backend for this context (secrets resolve only in the "
                "Context a running task receives)"
            )
        return self._secrets.resolve(name, self._secret_binding(name))

    def secret_field(self, name: str, field: str) -> str:
        """One field of secret ``name``; ``KeyError`` if the secret has no such field (else as :meth:`secret`)."""
        if not isinstance(field, str):
            raise TypeError(f"secret field must be str, got {type(field).__name__}")
        fields = self.secret(name)
        if field not in fields:
            raise KeyError(f"secret {name!r} has no field {field!r}")
        return fields[field]

    def _secret_binding(self, name: str) -> str:
        """The concrete secret behind ``name``: an alias in the ``__cloacina_secret_refs__`` map, or a key holding
        exactly ``{"$secret": "<concrete>"}`` (an instance parameter bound to a secret); else ``name`` itself."""
        refs = self._data.get(SECRET_REFS_KEY)
        if isinstance(refs, dict) and isinstance(refs.get(name), str) and refs[name]:
            return str(refs[name])
        bound = self._data.get(name)
        if isinstance(bound, dict) and len(bound) == 1 and isinstance(bound.get("$secret"), str) and bound["$secret"]:
            return str(bound["$secret"])
        return name

    # -- mapping protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return _check_key(key) in self._data

    def __getitem__(self, key: str) -> Any:
        """The value under ``key``; ``KeyError`` if it is missing **or null** (cloaca's rule)."""
        value = self._data.get(_check_key(key))
        if value is None:
            raise KeyError(key)
        return _copy(value)

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if _check_key(key) not in self._data:
            raise KeyError(key)
        del self._data[key]

    # -- extensions (§17): iteration and value equality ----------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def keys(self) -> list[str]:
        return list(self._data)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, _copy(v)) for k, v in self._data.items()]

    def values(self) -> list[Any]:
        return [_copy(v) for v in self._data.values()]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __copy__(self) -> Context:
        return self.__deepcopy__({})

    def __deepcopy__(self, memo: dict[int, Any]) -> Context:
        clone = Context.__new__(Context)
        clone._data = self.to_dict()
        clone._secrets = self._secrets
        return clone

    def __repr__(self) -> str:
        return f"Context({self.to_json()})"


def coerce_context(value: Context | Mapping[str, Any] | None, *, what: str = "context") -> Context:
    """Accept a Context, a mapping or None where the API takes a context, with a clear error otherwise."""
    if value is None:
        return Context()
    if isinstance(value, Context):
        return value
    if isinstance(value, Mapping):
        return Context(value)
    raise TypeError(f"{what} must be a cloacina.Context or a dict, got {type(value).__name__}")
