"""What ``DefaultRunner.execute`` returns, and the handle ``execute_async`` returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cloacina.context import Context
from cloacina.store.runs import RunRecord


@dataclass(frozen=True)
class WorkflowResult:
    """The outcome of one run. ``status`` is ``"Completed"`` or ``"Failed"`` (a failing task never raises)."""

    status: str
    final_context: Context
    error_message: str | None
    start_time: datetime
    end_time: datetime | None
    run_id: str
    workflow_name: str = ""

    @property
    def is_success(self) -> bool:
        return self.status == "Completed"

    @classmethod
    def from_record(cls, run: RunRecord) -> WorkflowResult:
        return cls(
            status=str(run.status),
            final_context=Context(run.final_context or {}),
            error_message=run.error_message,
            start_time=run.started_at or run.created_at,
            end_time=run.completed_at,
            run_id=run.run_id,
            workflow_name=run.workflow_name,
        )

    def __repr__(self) -> str:
        return f"WorkflowResult(status={self.status!r}, run_id={self.run_id!r}, error_message={self.error_message!r})"


class RunHandle:
    """A started run: ``run_id`` now, its :class:`WorkflowResult` from ``wait()``."""

    def __init__(
        self, run_id: str, waiter: Callable[[str, float | None], WorkflowResult], peek: Callable[[str], str]
    ) -> None:
        self.run_id = run_id
        self._waiter = waiter
        self._peek = peek

    def wait(self, timeout: float | None = None) -> WorkflowResult:
        """Block until the run ends; ``TimeoutError`` if it is still going after ``timeout`` seconds."""
        return self._waiter(self.run_id, timeout)

    def status(self) -> str:
        """The run's current status: Pending, Running, Completed or Failed."""
        return self._peek(self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r})"
