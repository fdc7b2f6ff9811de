"""Call a user's task function safely: sync or async, with a timeout, and with its result checked.

This is the error boundary around user code: whatever the function raises or returns is turned into either an
output context or a ``TaskCallError``. Framework errors never come from here.

What cloaca specifies (and this module does):

- the function is called as ``fn(context)``, or ``fn(context, handle)`` with a
  :class:`~cloacina.execution.task_handle.TaskHandle` when its second positional parameter is named ``handle``
  or ``task_handle``; the handle is consumed when the call returns;
- it returns a ``Context`` (or, our extension, a dict) or ``None``; ``None`` means the output is the input
  context **as received**: changes made in place are discarded;
- a raise fails the attempt with the message ``"Python task execution failed: <Type>: <text>"`` (``Type`` the
  exception class's qualified name); the error keeps the Context object the function received, changes included,
  for ``on_failure``; a return of another type fails the attempt too, but is not a raise (no ``on_failure``).

Timeouts: an ``async def`` task is cancelled at its deadline. A plain function cannot be interrupted in Python,
so it runs on a daemon thread of its own (taken from a pool: thread-local state a task leaves behind can be seen
by a later task of the same process, as in any Celery worker); at the deadline the attempt is recorded as timed
out and the slot is freed, while the abandoned thread finishes in the background and its result is discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Mapping
from typing import Any

from cloacina.context import Context
from cloacina.definitions.task import TaskDefinition
from cloacina.errors import TaskTimeoutError
from cloacina.execution.cached_threads import CachedThreads
from cloacina.execution.task_handle import TaskHandle, current_slot

FAILURE_PREFIX = "Python task execution failed: "
# The threads user code runs on (see _invoke). One that hangs past its timeout stays busy; the pool starts another.
_USER_CODE_THREADS = CachedThreads("cloacina-task")


class TaskCallError(Exception):
    """A task attempt failed.

    ``cause``: the user's exception (or our ``TaskTimeoutError`` / ``TypeError`` for a bad return value);
    ``message``: the failure message stored and passed to ``on_failure``; ``raised``: the function itself raised
    (only then does ``on_failure`` run); ``context``: the Context object the function received.
    """

    def __init__(self, cause: BaseException, *, raised: bool, context: Context | None) -> None:
        self.message = failure_message(cause)
        super().__init__(self.message)
        self.cause = cause
        self.raised = raised
        self.context = context


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "<exception str() failed>"


def failure_message(error: BaseException) -> str:
    """``Python task execution failed: <qualified type name>: <str(error)>``, cloaca's failure message."""
    return f"{FAILURE_PREFIX}{type(error).__qualname__}: {_text(error)}"


def describe_error(error: BaseException) -> str:
    """``TypeName: message`` (just ``TypeName`` when the message is empty), for log lines."""
    text = _text(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _UserRaised(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _run_user_code(definition: TaskDefinition, args: tuple[Any, ...], timeout_s: float | None) -> Any:
    if not definition.is_async:
        return definition.function(*args)

    async def bounded() -> Any:
        return await asyncio.wait_for(definition.function(*args), timeout_s)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        raise TaskTimeoutError(definition.task_id, timeout_s or 0) from None


def _invoke(definition: TaskDefinition, args: tuple[Any, ...], timeout_s: float | None) -> Any:
    """Call the task. Exceptions of the *user's code* come back as ``_UserRaised``; a timeout as
    ``TaskTimeoutError``.

    The code runs on another thread (a pooled one: starting a thread per attempt cost ~60 µs of CPU) and this
    thread only waits. That keeps the two kinds of exception apart:
    a ``SystemExit`` raised in *this* thread (a process told to stop) is the process shutting down, not the task
    failing, and propagates unwrapped so the attempt is recovered, not failed; a ``SystemExit``/``CancelledError``
    from the user's code is a task failure like any other. The thread runs in a copy of this thread's
    ``contextvars`` context, so what the caller bound around the call (e.g. the task's secrets) is visible there.
    """
    if timeout_s is None:
        try:
            return _run_user_code(definition, args, timeout_s)
        except TaskTimeoutError:
            raise
        except (Exception, SystemExit, asyncio.CancelledError) as exc:  # no thread: it can only be the user's
            raise _UserRaised(exc) from exc
    box: dict[str, Any] = {}
    variables = contextvars.copy_context()
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = variables.run(_run_user_code, definition, args, timeout_s)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    _USER_CODE_THREADS.submit(target)
    # An async task cancels itself at the deadline; give it a moment to report that before calling it hung.
    if not done.wait(timeout_s + (1.0 if definition.is_async else 0.0)):
        raise TaskTimeoutError(definition.task_id, timeout_s)
    if "error" in box:
        error = box["error"]
        if isinstance(error, TaskTimeoutError):
            raise error
        raise _UserRaised(error) from error
    return box.get("value")


def call_task(definition: TaskDefinition, input_context: Mapping[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Run one attempt and return its output context as a dict; raise ``TaskCallError`` on any failure of the
    task (its exception, timeout, bad return value). A shutdown of this process propagates as it is."""
    ctx = Context._for_running_task(input_context)  # with the secrets scope bound around this call
    handle = TaskHandle._for_attempt(definition.task_id, current_slot()) if definition.wants_handle else None
    try:
        returned = _invoke(definition, (ctx, handle) if handle is not None else (ctx,), timeout_s)
    except _UserRaised as raised:
        raise TaskCallError(raised.error, raised=True, context=ctx) from raised.error
    except TaskTimeoutError as timeout:
        raise TaskCallError(timeout, raised=False, context=ctx) from None
    finally:
        if handle is not None:
            handle._consume()
    if returned is None:
        return dict(input_context)  # the input as received: Context() copied it, so in-place changes are not here
    if isinstance(returned, Context):
        return returned.to_dict()
    if isinstance(returned, Mapping):  # our extension: a dict is as good as a Context
        try:
            return Context(returned).to_dict()
        except Exception as exc:
            raise TaskCallError(exc, raised=False, context=ctx) from exc
    bad = TypeError(
        f"task {definition.task_id!r} returned {type(returned).__name__}; return the context (a Context, or None "
        "to pass the input on unchanged)"
    )
    raise TaskCallError(bad, raised=False, context=ctx)
