"""Handle app: ``TaskHandle.defer_until`` and retries with callbacks, on real worker processes.

- ``defer_wait``: ``waiter -> after -> (left, right) -> join``. ``waiter(context, handle)`` defers (polling every
  100 ms) until a note of kind ``context["flag"]`` exists, and notes what ``is_slot_held()`` said before, during
  and after the deferral. ``waiter`` and ``after`` form one stretch (one message), so ``after`` runs on the thread
  that resumed; ``left``/``right``/``join`` are published when the deferring message is acknowledged and wait.
- ``defer_signal``: ``signal`` writes the note ``context["flag"]`` (what a waiter waits for).
- ``dist_flaky``: ``flaky`` raises ``ConnectionError`` on its first two calls in a run (``retry_attempts=3``),
  with ``on_failure``/``on_success`` callbacks that write notes.

Notes go to ``ev_notes`` (the test creates it with :data:`NOTES_DDL`); task executions to ``ev_executions``
(:mod:`tests.dist_apps.evidence`), keyed by ``context["key"]``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import cloacina as cloaca
from tests.dist_apps import evidence

NOTES_DDL = (
    "CREATE TABLE ev_notes (id bigserial PRIMARY KEY, key text NOT NULL, kind text NOT NULL, payload text,"
    " pid integer NOT NULL, pgid integer NOT NULL, at double precision NOT NULL)"
)


def note(key: str, kind: str, payload: Any = None) -> None:
    evidence._execute(
        "INSERT INTO ev_notes (key, kind, payload, pid, pgid, at) VALUES (%s, %s, %s, %s, %s, %s)",
        (key, kind, json.dumps(payload), os.getpid(), os.getpgid(0), time.time()),
    )


def noted(kind: str) -> bool:
    rows = evidence._execute("SELECT count(*) FROM ev_notes WHERE kind = %s", (kind,))
    return int(rows[0][0]) > 0


def _step(name: str, context: cloaca.Context) -> cloaca.Context:
    execution = evidence.execution_started(None, context.get("key"), name)
    evidence.execution_ended(execution)
    context.set(name, True)
    return context


with cloaca.WorkflowBuilder("defer_wait"):

    @cloaca.task(id="waiter", retry_attempts=1)
    def waiter(context: cloaca.Context, handle: cloaca.TaskHandle) -> cloaca.Context:
        key = context.get("key")
        execution = evidence.execution_started(None, key, "waiter")
        held_during: list[bool] = []

        def flag_is_set() -> bool:
            held_during.append(handle.is_slot_held())
            return noted(context.get("flag"))

        note(key, "held_before", handle.is_slot_held())
        note(key, "deferring")
        handle.defer_until(flag_is_set, poll_interval_ms=100)
        note(key, "held_during", held_during)
        note(key, "held_after", handle.is_slot_held())
        evidence.execution_ended(execution)
        context.set("waited", True)
        return context

    @cloaca.task(id="after", dependencies=["waiter"], retry_attempts=1)
    def after(context: cloaca.Context) -> cloaca.Context:
        return _step("after", context)

    @cloaca.task(id="left", dependencies=["after"], retry_attempts=1)
    def left(context: cloaca.Context) -> cloaca.Context:
        return _step("left", context)

    @cloaca.task(id="right", dependencies=["after"], retry_attempts=1)
    def right(context: cloaca.Context) -> cloaca.Context:
        return _step("right", context)

    @cloaca.task(id="join", dependencies=["left", "right"], retry_attempts=1)
    def join(context: cloaca.Context) -> cloaca.Context:
        return _step("join", context)


with cloaca.WorkflowBuilder("defer_signal"):

    @cloaca.task(id="signal", retry_attempts=1)
    def signal(context: cloaca.Context) -> cloaca.Context:
        execution = evidence.execution_started(None, context.get("key"), "signal")
        note(context.get("key"), context.get("flag"))
        evidence.execution_ended(execution)
        return context


def _on_failure(task_id: str, message: str, context: cloaca.Context) -> None:
    note(context.get("key"), "on_failure", {"task": task_id, "message": message, "context": context.to_dict()})


def _on_success(task_id: str, context: cloaca.Context) -> None:
    note(context.get("key"), "on_success", {"task": task_id, "context": context.to_dict()})


with cloaca.WorkflowBuilder("dist_flaky"):

    @cloaca.task(
        id="flaky",
        retry_attempts=3,
        retry_delay_ms=200,
        retry_jitter=False,
        on_failure=_on_failure,
        on_success=_on_success,
    )
    def flaky(context: cloaca.Context) -> cloaca.Context:
        key = context.get("key")
        rows = evidence._execute("SELECT count(*) FROM ev_notes WHERE key = %s AND kind = 'call'", (key,))
        call = int(rows[0][0]) + 1
        note(key, "call", call)
        context.set("before_raise", call)
        if call <= 2:
            raise ConnectionError(f"call {call} lost its connection")
        return context
