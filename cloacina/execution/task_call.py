"""Call a user's task function safely: sync or async, with a timeout, and with its result checked.

This is the error boundary around user code: whatever the function raises or returns is turned into either an
output context or a ``TaskCallError`` carrying the original exception. Framework errors never come from here.

Timeouts: an ``async def`` task is cancelled at its deadline. A plain function cannot be interrupted in Python,
so it runs on its own daemon thread; at the deadline the attempt is recorded as timed out and the slot is
freed, while the abandoned thread finishes in the background and its result is discarded. (In distributed
mode the Celery hard time limit kills the worker process instead.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from cloacina.context import Context
from cloacina.definitions.task import TaskDefinition
from cloacina.errors import TaskTimeoutError


class TaskCallError(Exception):
    """A task attempt failed; ``cause`` is the user's exception (or our TaskTimeoutError / TypeError)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def describe_error(error: BaseException) -> str:
    """``TypeName: message``, the form stored and passed to ``on_failure``."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _output_of(definition: TaskDefinition, ctx: Context, returned: Any) -> dict[str, Any]:
    if returned is None:
        return ctx.to_dict()
    if isinstance(returned, Context):
        return returned.to_dict()
    if isinstance(returned, Mapping):
        return Context(returned).to_dict()
    raise TypeError(
        f"task {definition.task_id!r} returned {type(returned).__name__}; return the context (or None to keep "
        "the changes made to it)"
    )


def _run_user_code(definition: TaskDefinition, ctx: Context, timeout_s: float | None) -> Any:
    if not definition.is_async:
        return definition.function(ctx)

    async def bounded() -> Any:
        return await asyncio.wait_for(definition.function(ctx), timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise TaskTimeoutError(definition.task_id, timeout_s or 0) from None


def _invoke(definition: TaskDefinition, ctx: Context, timeout_s: float | None) -> Any:
    """Call the task; exceptions the *user's code* raised come back wrapped in ``TaskCallError``.

    The code runs on a thread of its own and this thread only waits. That keeps the two kinds of exception apart:
    a ``SystemExit`` raised in *this* thread (a Celery prefork child told to stop by SIGTERM) is the process
    shutting down, not the task failing, and propagates unwrapped so the attempt is recovered, not failed; a
    ``SystemExit``/``CancelledError`` from the user's code is a task failure like any other.
    """
    if timeout_s is None:
        try:
            return _run_user_code(definition, ctx, timeout_s)
        except (Exception, SystemExit, asyncio.CancelledError) as exc:  # no thread: it can only be the user's
            raise TaskCallError(exc) from exc
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run_user_code(definition, ctx, timeout_s)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"cloacina-task-{definition.task_id}", daemon=True)
    thread.start()
    # An async task cancels itself at the deadline; give it a moment to report that before calling it hung.
    thread.join(timeout_s + (1.0 if definition.is_async else 0.0))
    if thread.is_alive():
        raise TaskCallError(TaskTimeoutError(definition.task_id, timeout_s))
    if "error" in box:
        raise TaskCallError(box["error"]) from box["error"]
    return box.get("value")


def call_task(definition: TaskDefinition, input_context: Mapping[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Run one attempt and return its output context as a dict; raise ``TaskCallError`` on any failure of the
    task (its exception, timeout, bad return value). A shutdown of this process propagates as it is."""
    ctx = Context._for_running_task(input_context)  # with the secrets scope bound around this call
    returned = _invoke(definition, ctx, timeout_s)
    try:
        return _output_of(definition, ctx, returned)
    except Exception as exc:
        raise TaskCallError(exc) from exc
