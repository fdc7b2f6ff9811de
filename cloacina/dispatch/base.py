"""The seam between the engine and whatever executes tasks (threads here, Celery in distributed mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

TaskHandler = Callable[[str, str], None]


class Dispatcher(Protocol):
    """Runs ``handler(run_id, task_id)`` somewhere, now or after a delay."""

    def bind(self, handler: TaskHandler) -> None:
        """Set the function that executes one task attempt."""

    def submit(self, run_id: str, task_id: str, delay_s: float = 0.0) -> None:
        """Execute the task, after ``delay_s`` seconds if given."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` once after ``delay_s`` seconds (used for run deadlines)."""

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Stop accepting work; wait up to ``wait_s`` for running tasks."""
