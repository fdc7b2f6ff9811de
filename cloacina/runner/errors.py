"""Errors of the ``DefaultRunner`` facade, each an instance of the builtin cloaca raises in its place.

::

    CloacinaError
    ├── RunnerStartError (also RuntimeError)                 "Failed to create DefaultRunner: <cause>"
    ├── RunnerShutDownError (also ValueError, RuntimeError)  the runner was shut down
    ├── WorkflowTimeoutError (also ValueError, TimeoutError) execute() waited past its limit
    └── CronDisabledError (also ValueError)                  the cron API of a runner without cron scheduling

``RunnerShutDownError`` is a ``RuntimeError`` too, and ``WorkflowTimeoutError`` a ``TimeoutError``, as they were
before cloaca's ``ValueError`` became the contract, so code catching either keeps working.
"""

from __future__ import annotations

from cloacina.errors import CloacinaError


class RunnerStartError(CloacinaError, RuntimeError):
    """The runner could not start (bad URL, database unreachable, migration failed)."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(f"Failed to create DefaultRunner: {cause}")


class RunnerShutDownError(CloacinaError, ValueError, RuntimeError):
    """An operation on a runner that has been shut down."""


class WorkflowTimeoutError(CloacinaError, ValueError, TimeoutError):
    """``execute()`` gave up waiting: the run passed ``workflow_timeout_seconds`` (or the ``timeout`` given)."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class CronDisabledError(CloacinaError, ValueError):
    """A cron management method of a runner whose config has ``enable_cron_scheduling=False``."""
