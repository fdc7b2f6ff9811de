"""Run and task states, and which of them are final.

A run ends ``Completed`` or ``Failed`` by itself (the planner decides), or ``Cancelled`` when someone cancels it
(``DefaultRunner.cancel_run``): no task of it starts afterwards and the result of a task still running is
discarded when it returns.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    @property
    def is_retryable(self) -> bool:
        """A run that may be re-executed from its failure (``DefaultRunner.retry_run``)."""
        return self in (RunStatus.FAILED, RunStatus.CANCELLED)


class TaskStatus(StrEnum):
    NOT_STARTED = "NotStarted"
    READY = "Ready"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    SKIPPED = "Skipped"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED)


class SkipReason(StrEnum):
    RULE_FALSE = "rule_false"
    UPSTREAM_FAILED = "upstream_failed"  # no longer decided (the default rule is Always); kept for older rows
    RUN_ENDED = "run_ended"  # the run ended from outside the planner (its deadline) before the task started
    RUN_CANCELLED = "run_cancelled"  # the run was cancelled before the task started
