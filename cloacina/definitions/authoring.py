"""Package-authoring declarations and runtime variables of the ``cloaca`` API.

``workflow_params(**kwargs)``, ``workflow_secrets(*names)`` and ``boundary_schema(**kwargs)`` return decorators
that hand back the decorated object unchanged: packaging reads these declarations from source, so at run time they
only have to import cleanly. One thing is remembered on the side (the object itself is never touched): the secret
names a ``@workflow_secrets`` declares, which :mod:`cloacina.secrets` uses as the workflow's grants.

``var(name)`` reads the environment variable ``CLOACINA_VAR_<name>`` (name verbatim) on every call.

>>> @workflow_secrets("db_prod")
... @workflow_params(region=str)
... def extract(context):
...     return context
>>> sorted(declared_secrets(extract))
['db_prod']
>>> var_or("SURELY_UNSET_IN_DOCTESTS", "fallback")
'fallback'
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, NoReturn, TypeVar

VAR_PREFIX = "CLOACINA_VAR_"

T = TypeVar("T")

# Declared secret names per decorated object (weak: a declaration never keeps a function alive).
_DECLARED_SECRETS: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def _no_constructor(cls: type, factory: str) -> NoReturn:
    raise TypeError(f"{cls.__name__} has no constructor; use cloacina.{factory}(...) to get one")


class WorkflowParamsDecorator:
    """What ``workflow_params(...)`` returns; calling it returns the decorated object itself."""

    __slots__ = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        _no_constructor(type(self), "workflow_params")

    def __call__(self, obj: T) -> T:
        return obj


class WorkflowSecretsDecorator:
    """What ``workflow_secrets(...)`` returns; calling it records the names and returns the object itself."""

    __slots__ = ("_names",)
    _names: frozenset[str]

    def __init__(self, *args: object, **kwargs: object) -> None:
        _no_constructor(type(self), "workflow_secrets")

    def __call__(self, obj: T) -> T:
        with contextlib.suppress(TypeError):  # not weak-referenceable or unhashable: nothing to remember it by
            _DECLARED_SECRETS[obj] = _DECLARED_SECRETS.get(obj, frozenset()) | self._names
        return obj


class BoundarySchemaDecorator:
    """What ``boundary_schema(...)`` returns; calling it returns the decorated object itself."""

    __slots__ = ()

    def __init__(self, *args: object, **kwargs: object) -> None:
        _no_constructor(type(self), "boundary_schema")

    def __call__(self, obj: T) -> T:
        return obj


def workflow_params(**kwargs: Any) -> WorkflowParamsDecorator:
    """Declare a packaged workflow's typed input parameters (``name=type`` or ``name=(type, default)``).

    No run-time effect: the package build reads the declaration from source.
    """
    return object.__new__(WorkflowParamsDecorator)


def workflow_secrets(*names: str) -> WorkflowSecretsDecorator:
    """Declare the secrets a workflow needs, stacked on one of its ``@task`` functions.

    The object is returned unchanged. The names become the workflow's secret grants: a task of a workflow that
    declares any may read only those (``PermissionError`` for others); see :mod:`cloacina.secrets`.
    """
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"workflow_secrets() names must be str, got {type(name).__name__}: {name!r}")
        if not name:
            raise ValueError("workflow_secrets() names must be non-empty")
    decorator = object.__new__(WorkflowSecretsDecorator)
    decorator._names = frozenset(names)
    return decorator


def boundary_schema(**kwargs: Any) -> BoundarySchemaDecorator:
    """Declare the typed shape of an accumulator's boundary. No run-time effect (read from source)."""
    return object.__new__(BoundarySchemaDecorator)


def declared_secrets(obj: object) -> frozenset[str]:
    """The secret names ``@workflow_secrets`` declared on ``obj`` (empty if none)."""
    try:
        return _DECLARED_SECRETS.get(obj, frozenset())
    except TypeError:
        return frozenset()


def var(name: str) -> str:
    """The value of environment variable ``CLOACINA_VAR_<name>`` (read now); ``KeyError`` if it is unset."""
    if not isinstance(name, str):
        raise TypeError(f"var() name must be str, got {type(name).__name__}")
    value = os.environ.get(VAR_PREFIX + name)
    if value is None:
        raise KeyError(f"variable {name!r} is not set (environment variable {VAR_PREFIX}{name})")
    return value


def var_or(name: str, default: str) -> str:
    """``var(name)``, or ``default`` when ``CLOACINA_VAR_<name>`` is unset."""
    if not isinstance(default, str):
        raise TypeError(f"var_or() default must be str, got {type(default).__name__}")
    try:
        return var(name)
    except KeyError:
        return default
