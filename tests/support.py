"""Helpers every test shares: waiting on a condition (never a fixed sleep), a free TCP port, a fake clock, and a
count of the polls a trigger scheduler finished (to wait for "N more poll intervals went by" without sleeping), and
the SQL statements sent while a block runs.

>>> wait_until(lambda: 42, timeout_s=1, message="the answer")
42
>>> clock = FakeClock(10.0)
>>> clock.advance(2.5)
12.5
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

T = TypeVar("T")
N = TypeVar("N", float, datetime)


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str | Callable[[], str] = "the condition",
    *,
    retry_errors: bool = True,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; ``AssertionError`` after ``timeout_s``.

    ``message`` says what was awaited (a callable is evaluated only on timeout, e.g. to append a log tail).
    With ``retry_errors`` (default), an exception from the predicate (a service briefly unavailable) is retried
    until the deadline and named in the timeout message; an ``AssertionError`` raised by the predicate gives up
    at once (e.g. the process being waited on exited).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:
            if not retry_errors:
                raise
            last_error = exc
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            extra = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}{extra}")
        time.sleep(interval_s)  # the polling step of this helper, not a synchronisation


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock(Generic[N]):
    """A clock the test moves by hand: ``FakeClock(0.0)`` for monotonic seconds, ``FakeClock(datetime)`` for UTC."""

    def __init__(self, start: N) -> None:
        self.now: N = start

    def __call__(self) -> N:
        return self.now

    def advance(self, seconds: float) -> N:
        if isinstance(self.now, datetime):
            self.now = self.now + timedelta(seconds=seconds)
        else:
            self.now = self.now + seconds
        return self.now


class PollCounter:
    """Counts the polls a ``TriggerScheduler`` finished, per trigger (it listens to the scheduler's events).

    A trigger that keeps being polled is the scheduler's own clock: "ten more polls of a 100 ms canary" shows that
    ten poll intervals went by in the scheduler, however loaded the machine is.
    """

    def __init__(self, scheduler: Any) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        scheduler.add_listener(self)

    def __call__(self, event: str, name: str, info: dict[str, Any]) -> None:
        if event == "poll":
            with self._lock:
                self._counts[name] += 1

    def polls(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def wait_for_more(self, name: str, more: int, timeout_s: float = 30.0) -> None:
        """Wait until ``name`` has finished ``more`` polls after this call."""
        target = self.polls(name) + more
        wait_until(lambda: self.polls(name) >= target, timeout_s, message=f"{more} more polls of {name!r}")


def declare_one_task_workflow(name: str = "wf", task_id: str = "only") -> None:
    """Declare workflow ``name`` with one task that returns its context (no retries), for loop tests."""
    import cloacina as cloaca

    with cloaca.WorkflowBuilder(name):
        cloaca.task(id=task_id, retry_attempts=0)(_return_context)


def _return_context(ctx: Any) -> Any:
    return ctx


@contextlib.contextmanager
def sent_statements() -> Iterator[list[str]]:
    """The SQL text of every statement any psycopg connection of this process sends while the block runs
    (SQLAlchemy's and those the hot path sends through psycopg directly), whitespace collapsed."""
    import psycopg

    sent: list[str] = []
    original = psycopg.Cursor.execute

    def counting(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(" ".join(str(query).split()))
        return original(cursor, query, *args, **kwargs)

    psycopg.Cursor.execute = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        psycopg.Cursor.execute = original  # type: ignore[method-assign]
