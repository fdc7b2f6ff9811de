"""Secrets for running tasks: a pluggable backend, the workflow's grants, and the scope bound around an attempt.

A task reads a secret through the Context it receives: ``context.secret("db_prod")`` returns the secret's
``{field: value}`` map, ``context.secret_field("db_prod", "password")`` one field. Values go to the caller only:
they never enter context data, stored contexts or logs.

**Backend.** Anything with ``get_secret(name) -> Mapping[str, str] | None`` (:class:`SecretsBackend`): return the
fields, ``None`` for an unknown secret, or raise ``PermissionError`` to deny; any other exception is a backend
failure. The default, :class:`EnvSecretsBackend`, reads the environment variable ``CLOACINA_SECRET_<name>`` (name
verbatim, like ``CLOACINA_VAR_<name>``) holding a JSON object of string fields, on every read::

    export CLOACINA_SECRET_db_prod='{"host": "db.internal", "password": "s3cret"}'

Choose another with :func:`set_secrets_backend` (process-wide; in distributed mode call it in a module every worker
imports, e.g. the app module). ``set_secrets_backend(None)`` turns secrets off.

**Grants.** A workflow's grants are the names declared by ``@workflow_secrets(...)`` on any of its tasks (package
modules declare them the same way). A workflow that declares none may read every secret of the backend, as
cloaca's trusted embedded host may. Otherwise another name is a ``PermissionError``. Grants keep workflows honest;
they are not a sandbox (task code runs in the worker's process and can read its environment).

**Binding names.** ``name`` may be a binding name: a context key holding exactly ``{"$secret": "<secret>"}`` (an
instance parameter bound to a secret) or an entry of the ``__cloacina_secret_refs__`` map of names. The task reads
the bound secret; a grant of either name allows it.

**Errors.** No backend for this Context (one built in user code, or secrets turned off) or a backend failure:
``RuntimeError``; unknown secret or field: ``KeyError``; not granted: ``PermissionError``. Messages name secrets and
fields, never values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from cloacina.context import task_secrets_bound
from cloacina.definitions.authoring import declared_secrets
from cloacina.definitions.workflow import Workflow

ENV_PREFIX = "CLOACINA_SECRET_"


@runtime_checkable
class SecretsBackend(Protocol):
    """Where secrets come from. ``None`` means the secret does not exist; ``PermissionError`` denies it."""

    def get_secret(self, name: str) -> Mapping[str, str] | None: ...


class EnvSecretsBackend:
    """Secrets from environment variables: ``CLOACINA_SECRET_<name>`` = a JSON object of string fields.

    ``environ`` defaults to ``os.environ`` (read on every call, so rotating a variable takes effect at once).

    >>> backend = EnvSecretsBackend({"CLOACINA_SECRET_db": '{"user": "app"}'})
    >>> backend.get_secret("db"), backend.get_secret("other")
    ({'user': 'app'}, None)
    """

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX) -> None:
        self._environ = environ
        self.prefix = prefix

    def get_secret(self, name: str) -> dict[str, str] | None:
        variable = self.prefix + name
        try:
            raw = (os.environ if self._environ is None else self._environ).get(variable)
        except ValueError:  # a name the environment cannot hold (NUL byte, ...): no such secret
            return None
        if raw is None:
            return None
        try:
            fields = json.loads(raw)
        except ValueError:
            raise ValueError(f"{variable} is not valid JSON (expected an object of string fields)") from None
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise ValueError(f"{variable} must hold a JSON object whose values are strings")
        return fields

    def __repr__(self) -> str:
        return f"EnvSecretsBackend(prefix={self.prefix!r})"


_backend: SecretsBackend | None = EnvSecretsBackend()


def set_secrets_backend(backend: SecretsBackend | None) -> None:
    """Use ``backend`` for the secrets of tasks started from now on in this process (``None``: no secrets)."""
    global _backend
    if backend is not None and not callable(getattr(backend, "get_secret", None)):
        raise TypeError(f"a secrets backend needs a get_secret(name) method; got {type(backend).__name__}")
    _backend = backend


def get_secrets_backend() -> SecretsBackend | None:
    """The backend tasks of this process read secrets from (``None`` if secrets are turned off)."""
    return _backend


def granted_secrets(workflow: Workflow) -> frozenset[str] | None:
    """The secret names ``workflow`` may read: those its tasks declare, or ``None`` (all) if none declares any."""
    names: frozenset[str] = frozenset()
    for definition in workflow.tasks.values():
        names |= declared_secrets(definition.function)
    return names or None


class WorkflowSecrets:
    """The secrets scope of a running task: its workflow's grants over a backend (a ``SecretResolver``)."""

    __slots__ = ("backend", "workflow")

    def __init__(self, workflow: Workflow, backend: SecretsBackend | None) -> None:
        self.workflow = workflow
        self.backend = backend

    def resolve(self, requested: str, concrete: str) -> dict[str, str]:
        backend = self.backend
        if backend is None:
            raise RuntimeError(f"cannot read secret {requested!r}: no secrets backend is configured")
        granted = granted_secrets(self.workflow)
        if granted is not None and requested not in granted and concrete not in granted:
            raise PermissionError(
                f"secret {requested!r} is not granted to workflow {self.workflow.name!r} "
                f"(granted: {', '.join(sorted(granted))}); declare it with @workflow_secrets(...)"
            )
        shown = repr(requested) if concrete == requested else f"{requested!r} (bound to {concrete!r})"
        try:
            fields = backend.get_secret(concrete)
        except PermissionError:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"secrets backend {type(backend).__name__} failed to read secret {shown}: {type(exc).__name__}: {exc}"
            ) from exc
        if fields is None:
            raise KeyError(f"secret {shown} not found")
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise RuntimeError(
                f"secrets backend {type(backend).__name__} returned a malformed secret {shown}: "
                "expected a mapping of str fields to str values"
            )
        return dict(fields)

    def __repr__(self) -> str:
        return f"WorkflowSecrets(workflow={self.workflow.name!r}, backend={self.backend!r})"


@contextmanager
def task_secrets(workflow: Workflow) -> Iterator[None]:
    """Bind the secrets scope of a task of ``workflow`` around its attempt (the Context it receives uses it)."""
    with task_secrets_bound(WorkflowSecrets(workflow, _backend)):
        yield
