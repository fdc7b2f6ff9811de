"""Errors of the ``DefaultRunner`` facade, each an instance of the builtin cloaca raises in its place.

::

    CloacinaError
    ├── RunnerStartError (also RuntimeError)                 "Failed to create DefaultRunner: <cause>"
    │   └── SchemaSetupError                                 with_schema(): "Failed to set up schema '<s>': <cause>"
    ├── RunnerShutDownError (also ValueError, RuntimeError)  the runner was shut down
    ├── WorkflowTimeoutError (also ValueError, TimeoutError) execute() waited past its limit
    ├── CronDisabledError (also ValueError)                  the cron API of a runner without cron scheduling
    └── RunnerOperationError (also ValueError)               any other failure of a runner operation:
                                                             "<operation>: <cause>" (e.g. the database is down)

``RunnerShutDownError`` is a ``RuntimeError`` too, and ``WorkflowTimeoutError`` a ``TimeoutError``, as they were
before cloaca's ``ValueError`` became the contract, so code catching either keeps working.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from cloacina.errors import CloacinaError

P = ParamSpec("P")
R = TypeVar("R")


class RunnerStartError(CloacinaError, RuntimeError):
    """The runner could not start (bad URL, database unreachable, migration failed)."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(f"Failed to create DefaultRunner: {cause}")


class SchemaSetupError(RunnerStartError):
    """``DefaultRunner.with_schema`` could not reach the database, log in, or create and migrate the schema.

    The message is cloaca's, ``Failed to set up schema '<schema>': <cause>``, with every string of ``secrets``
    (the URL's password) masked in the cause.
    """

    def __init__(self, schema: str, cause: BaseException | str, *, secrets: tuple[str, ...] = ()) -> None:
        text = str(cause)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        CloacinaError.__init__(self, f"Failed to set up schema '{schema}': {text}")
        self.schema = schema


class RunnerShutDownError(CloacinaError, ValueError, RuntimeError):
    """An operation on a runner that has been shut down."""


class WorkflowTimeoutError(CloacinaError, ValueError, TimeoutError):
    """``execute()`` gave up waiting: the run passed ``workflow_timeout_seconds`` (or the ``timeout`` given)."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class CronDisabledError(CloacinaError, ValueError):
    """A cron management method of a runner whose config has ``enable_cron_scheduling=False``."""


class RunnerOperationError(CloacinaError, ValueError):
    """A runner operation failed for a reason that is not the caller's input (cloaca: ``ValueError``)."""


def operation(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Report failures of the decorated runner method as cloaca does: ``ValueError("<name>: <cause>")``.

    ``ValueError``, ``TypeError`` and ``KeyError`` (bad input, already the documented builtins) pass unchanged.
    """

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except (ValueError, TypeError, KeyError):
                raise
            except Exception as exc:
                raise RunnerOperationError(f"{name}: {exc}") from exc

        return wrapper

    return decorate
