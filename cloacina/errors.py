"""Every exception cloacina raises on purpose, in one tree.

::

    CloacinaError
    ├── DefinitionError (also ValueError)     a workflow, task, trigger or schedule is malformed
    ├── TaskError                             base for errors a task raises to steer retries
    │   ├── TransientError                    retried under retry_condition "transient" or "all"
    │   └── PermanentError                    never retried
    ├── TaskTimeoutError (also TimeoutError)  a task attempt ran past its timeout (transient)
    ├── TriggerPollError                      a trigger poll raised, timed out or returned a wrong type
    ├── StoreError                            the database is unreachable or not migrated
    │   └── SchemaNotMigratedError            the database needs ``cloacina db upgrade``
    ├── TenantError (also RuntimeError)       a PostgreSQL tenant cannot be created or removed
    └── WorkflowNotFoundError (also ValueError, KeyError-free)  ``execute`` named an unknown workflow

Standard ``ValueError``/``TypeError``/``KeyError`` are kept where the cloaca API promises them
(``Context.insert``/``update``, bad ``poll_interval``), so code written for cloaca catches them as before.
"""

from __future__ import annotations


class CloacinaError(Exception):
    """Base class of every error cloacina raises deliberately."""


class DefinitionError(CloacinaError, ValueError):
    """A workflow, task, trigger or cron schedule definition is invalid."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class TaskError(CloacinaError):
    """Base for exceptions a task may raise to tell the retry policy what kind of failure it is."""


class TransientError(TaskError):
    """A failure worth retrying (a network blip, a busy resource)."""


class PermanentError(TaskError):
    """A failure that retrying cannot fix; never retried whatever the policy says."""


class TaskTimeoutError(CloacinaError, TimeoutError):
    """A task attempt exceeded its timeout."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id!r} timed out after {timeout_s:g}s")
        self.task_id = task_id
        self.timeout_s = timeout_s


class TriggerPollError(CloacinaError):
    """A trigger poll raised, timed out or returned something other than a TriggerResult or bool."""

    def __init__(self, trigger_name: str, reason: str) -> None:
        super().__init__(f"trigger {trigger_name!r}: {reason}")
        self.trigger_name = trigger_name
        self.reason = reason


class StoreError(CloacinaError):
    """The run store cannot be used (unreachable, bad URL, not migrated)."""


class SchemaNotMigratedError(StoreError):
    """The database schema is missing or older than this version of cloacina."""


class TenantError(CloacinaError, RuntimeError):
    """``DatabaseAdmin`` cannot be set up, or a tenant cannot be created or removed (cloaca: ``RuntimeError``)."""


class WorkflowNotFoundError(CloacinaError, ValueError):
    """No workflow is registered under the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = f"; registered: {', '.join(sorted(known))}" if known else "; no workflows are registered"
        super().__init__(f"unknown workflow {name!r}{hint}")
        self.workflow_name = name
