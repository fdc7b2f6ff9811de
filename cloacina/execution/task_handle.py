"""``TaskHandle``: what a task declared as ``fn(context, handle)`` receives, and the concurrency slot it controls.

A task attempt runs holding one **concurrency slot** of the process executing it (embedded: one of the
``max_concurrent_tasks`` slots of the runner's thread pool; distributed: the Celery worker slot of the prefork
child). ``handle.defer_until(condition)`` gives the slot back while it waits for ``condition()`` to return
``True``, so other ready tasks run meanwhile, then takes a slot again and returns::

    @cloaca.task(id="wait_for_file")
    def wait_for_file(context, handle):
        handle.defer_until(lambda: os.path.exists("/data/in.csv"), poll_interval_ms=500)
        context.set("ready", True)
        return context

Whoever runs attempts binds the attempt's slot with :func:`holding_slot`; :func:`call_task
<cloacina.execution.task_call.call_task>` builds the handle from it. Without a binding (an attempt driven by
hand) the slot is a plain flag. The handle is consumed when the call it was given to returns, or when the
attempt is given up (it timed out): from then on both methods raise ``ValueError``, and a ``defer_until`` still
waiting raises at once instead of taking a slot for an attempt whose result no longer counts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol


class ConcurrencySlot(Protocol):
    """The slot an attempt holds while it runs."""

    @property
    def is_held(self) -> bool: ...

    def release(self) -> None:
        """Give the slot back (no-op when it is not held)."""

    def reacquire(self) -> bool:
        """Wait for a slot and take it; ``False`` if the attempt was given up meanwhile (no slot taken)."""


class UnmanagedSlot:
    """The slot of an attempt nobody schedules (a test or a tool calling the coordinator directly): a flag."""

    def __init__(self) -> None:
        self._held = True

    @property
    def is_held(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False

    def reacquire(self) -> bool:
        self._held = True
        return True


_current_slot: ContextVar[ConcurrencySlot | None] = ContextVar("cloacina_concurrency_slot", default=None)


@contextlib.contextmanager
def holding_slot(slot: ConcurrencySlot) -> Iterator[ConcurrencySlot]:
    """Attempts started in this block (in this thread or context) hold ``slot``."""
    token = _current_slot.set(slot)
    try:
        yield slot
    finally:
        _current_slot.reset(token)


def current_slot() -> ConcurrencySlot:
    """The slot bound by :func:`holding_slot`, else a fresh :class:`UnmanagedSlot`."""
    return _current_slot.get() or UnmanagedSlot()


class TaskHandle:
    """Lets a running task give its concurrency slot back while it waits. No public constructor: a task declared
    as ``fn(context, handle)`` receives one."""

    __slots__ = ("_ended", "_lock", "_slot", "_task_id", "_usable")
    _ended: threading.Event
    _lock: threading.Lock
    _slot: ConcurrencySlot
    _task_id: str
    _usable: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("No constructor defined for TaskHandle; a task declared as fn(context, handle) receives one")

    @classmethod
    def _for_attempt(cls, task_id: str, slot: ConcurrencySlot) -> TaskHandle:
        handle = object.__new__(cls)
        handle._task_id = task_id
        handle._slot = slot
        handle._usable = True
        handle._lock = threading.Lock()
        handle._ended = threading.Event()
        return handle

    def defer_until(self, condition: Callable[[], object], poll_interval_ms: int = 1000) -> None:
        """Release the slot, call ``condition()`` every ``poll_interval_ms`` (the first call after one interval)
        until it returns ``True`` (a raise or a non-bool counts as ``False``), take a slot again, return."""
        self._check_usable()
        if not callable(condition):
            raise TypeError(f"condition must be callable, got {type(condition).__name__}")
        if isinstance(poll_interval_ms, bool) or not isinstance(poll_interval_ms, int):
            raise TypeError(f"poll_interval_ms must be an int, got {type(poll_interval_ms).__name__}")
        if poll_interval_ms < 0:
            raise ValueError(f"poll_interval_ms must be >= 0, got {poll_interval_ms}")
        interval_s = poll_interval_ms / 1000
        self._slot.release()
        while True:
            if self._ended.wait(interval_s):
                raise ValueError(f"defer_until failed: the attempt of task {self._task_id!r} has ended")
            if self._holds(condition):
                break
        if not self._slot.reacquire():
            raise ValueError(f"defer_until failed: the attempt of task {self._task_id!r} has ended")

    def is_slot_held(self) -> bool:
        """Whether the task holds a concurrency slot now (``False`` while it defers)."""
        self._check_usable()
        return self._slot.is_held

    def _holds(self, condition: Callable[[], object]) -> bool:
        try:
            return condition() is True
        except Exception as exc:  # a condition that raises is a condition not met yet (cloaca prints it)
            print(f"[cloaca] defer_until condition error: {type(exc).__qualname__}: {exc}", file=sys.stderr)
            return False

    def _check_usable(self) -> None:
        with self._lock:
            if not self._usable:
                raise ValueError("TaskHandle has already been consumed")

    def _consume(self) -> None:
        """The receiving call returned, or its attempt was given up: the handle is spent."""
        with self._lock:
            self._usable = False
        self._ended.set()
