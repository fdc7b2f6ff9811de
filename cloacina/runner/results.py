"""What ``DefaultRunner.execute`` returns, and the handle ``execute_async`` returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cloacina.context import Context
from cloacina.store.runs import RunRecord
from cloacina.timestamps import as_utc


def rfc3339(value: datetime) -> str:
    """``value`` as RFC 3339 text in UTC, ``+00:00``, with a fraction only when it is not zero.

    >>> from datetime import UTC
    >>> rfc3339(datetime(2025, 3, 1, 2, tzinfo=UTC))
    '2025-03-01T02:00:00+00:00'
    """
    return as_utc(value).astimezone(UTC).isoformat()


@dataclass(frozen=True)
class WorkflowResult:
    """The outcome of one run. ``status`` is ``"Completed"`` or ``"Failed"`` (a failing task never raises), as in
    cloaca; a run cancelled with ``DefaultRunner.cancel_run`` (our extension) ends ``"Cancelled"``, with
    ``error_message == "run cancelled"`` and an empty ``final_context``.

    ``start_time`` and ``end_time`` are RFC 3339 strings in UTC (``end_time`` ``None`` while unfinished), as in
    cloaca; ``started_at``/``completed_at`` are the same instants as datetimes, ``run_id`` names the run.
    """

    status: str
    final_context: Context
    error_message: str | None
    started_at: datetime
    completed_at: datetime | None
    run_id: str
    workflow_name: str = ""

    @property
    def start_time(self) -> str:
        return rfc3339(self.started_at)

    @property
    def end_time(self) -> str | None:
        return None if self.completed_at is None else rfc3339(self.completed_at)

    @property
    def is_success(self) -> bool:
        return self.status == "Completed"

    @classmethod
    def from_record(cls, run: RunRecord) -> WorkflowResult:
        return cls(
            status=str(run.status),
            final_context=Context(run.final_context or {}),
            error_message=run.error_message,
            started_at=run.started_at or run.created_at,
            completed_at=run.completed_at,
            run_id=run.run_id,
            workflow_name=run.workflow_name,
        )

    def __repr__(self) -> str:
        error = "None" if self.error_message is None else self.error_message
        return f"WorkflowResult(status={self.status}, error={error})"


class RunHandle:
    """A started run: ``run_id`` now, its :class:`WorkflowResult` from ``wait()``."""

    def __init__(
        self, run_id: str, waiter: Callable[[str, float | None], WorkflowResult], peek: Callable[[str], str]
    ) -> None:
        self.run_id = run_id
        self._waiter = waiter
        self._peek = peek

    def wait(self, timeout: float | None = None) -> WorkflowResult:
        """Block until the run ends; :class:`~cloacina.runner.errors.WorkflowTimeoutError` (a ``TimeoutError``
        and a ``ValueError``) if it is still going after ``timeout`` seconds."""
        return self._waiter(self.run_id, timeout)

    def status(self) -> str:
        """The run's current status: Pending, Running, Completed, Failed or Cancelled."""
        return self._peek(self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r})"
