"""Embedded dispatcher: concurrency slots, a growable thread pool for task attempts, and a timer thread.

It implements :class:`~cloacina.execution.dispatcher.Dispatcher`: Ready tasks run as slots allow, a retry is
re-submitted after its delay, and a run's deadline is a timer.

Slots, not threads, bound concurrency: :class:`SlotPool` holds ``max_concurrent_tasks`` permits and an attempt
starts only with one. A task that calls ``handle.defer_until(...)`` gives its permit back while it waits (its
thread stays parked), so the next Ready task starts on another thread; when the condition holds it takes a
permit again, ahead of tasks that have not started yet. Threads (:class:`CachedThreads`) are therefore created
on demand, reused when idle, and retired after a minute without work.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloacina.execution.cached_threads import CachedThreads
from cloacina.execution.task_handle import holding_slot
from cloacina.timestamps import utcnow

if TYPE_CHECKING:
    from cloacina.definitions.workflow import Workflow
    from cloacina.execution.dispatcher import RunDriver

log = logging.getLogger("cloacina.dispatch")


class TimerThread:
    """Calls functions at monotonic due times from a single thread (retries, deadlines)."""

    def __init__(self, name: str = "cloacina-timer") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay_s), next(self._seq), fn))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.exception("delayed callback failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        self._thread.join(timeout=2)


class SlotPool:
    """``permits`` concurrency slots. Work takes one with :meth:`try_lease`; a task resuming after a deferral
    waits for one with :meth:`SlotLease.reacquire` and goes first. ``on_free`` is called (outside any lock)
    whenever a permit comes back, so the owner can start waiting work."""

    def __init__(self, permits: int, on_free: Callable[[], None] | None = None) -> None:
        if permits < 1:
            raise ValueError(f"a slot pool needs at least one permit, got {permits}")
        self.permits = permits
        self._free = permits
        self._resuming = 0
        self._cond = threading.Condition()
        self._on_free = on_free

    @property
    def free(self) -> int:
        with self._cond:
            return self._free

    def try_lease(self) -> SlotLease | None:
        """A lease on a free permit, or ``None`` when none is free (or a resuming task is waiting for one)."""
        with self._cond:
            if self._free == 0 or self._resuming:
                return None
            self._free -= 1
        return SlotLease(self)

    def _give_back(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()
        if self._on_free is not None:
            self._on_free()


class SlotLease:
    """One attempt's hold on a permit of a :class:`SlotPool` (a :class:`~cloacina.execution.task_handle.
    ConcurrencySlot`). :meth:`close` ends it: the permit goes back and a pending :meth:`reacquire` fails."""

    def __init__(self, pool: SlotPool) -> None:
        self._pool = pool
        self._held = True
        self._closed = False

    @property
    def is_held(self) -> bool:
        return self._held

    def release(self) -> None:
        with self._pool._cond:
            if not self._held:
                return
            self._held = False
        self._pool._give_back()

    def reacquire(self) -> bool:
        pool = self._pool
        with pool._cond:
            if self._held:
                return True
            pool._resuming += 1
            try:
                while not self._closed and pool._free == 0:
                    pool._cond.wait()
                if self._closed:
                    return False
                pool._free -= 1
                self._held = True
                return True
            finally:
                pool._resuming -= 1

    def close(self) -> None:
        with self._pool._cond:
            self._closed = True
            was_held, self._held = self._held, False
            self._pool._cond.notify_all()
        if was_held:
            self._pool._give_back()


class ThreadDispatcher:
    """Runs task attempts on threads of this process, at most ``max_workers`` of them holding a slot at a time."""

    def __init__(self, max_workers: int) -> None:
        self._slots = SlotPool(max_workers, on_free=self._start_pending)
        self._threads = CachedThreads("cloacina-worker")
        self._pending: deque[tuple[str, str]] = deque()
        self._pending_lock = threading.Lock()
        self._timer = TimerThread()
        self._coordinator: RunDriver | None = None
        self._closed = False
        self._inflight = 0
        self._delayed = 0
        self._idle = threading.Condition()

    # -- the Dispatcher interface ---------------------------------------------------------------------------
    def attach(self, coordinator: RunDriver) -> None:
        self._coordinator = coordinator

    def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
        self.tasks_ready(run_id, ready)

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...], workflow: Workflow | None = None) -> None:
        for task_id in task_ids:
            self.submit(run_id, task_id)

    def resume_run(self, run_id: str) -> None:
        """Plan the run, then submit every Ready task (not only newly Ready ones), each when it is due."""
        coordinator = self._attached()
        coordinator.advance(run_id)
        for task_id, record in coordinator.store.get_tasks(run_id).items():
            if str(record.status) == "Ready":
                delay = 0.0
                if record.next_attempt_at is not None:
                    delay = max(0.0, (record.next_attempt_at - utcnow()).total_seconds())
                self.submit(run_id, task_id, delay)

    def cancel_run(self, run_id: str) -> None:
        """Drop the run's attempts still waiting for a slot (their start would be refused anyway)."""
        with self._pending_lock:
            kept = deque(item for item in self._pending if item[0] != run_id)
            dropped = len(self._pending) - len(kept)
            self._pending = kept
        if dropped:
            self._done(dropped)

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        coordinator = self._attached()
        self._timer.call_later(deadline_s, lambda: coordinator.expire_run(run_id, deadline_s))

    def _attached(self) -> RunDriver:
        if self._coordinator is None:
            raise RuntimeError("ThreadDispatcher is not attached to a coordinator")
        return self._coordinator

    # -- slots and threads --------------------------------------------------------------------------------------
    def submit(self, run_id: str, task_id: str, delay_s: float = 0.0) -> None:
        if delay_s > 0:
            with self._idle:
                self._delayed += 1
            self._timer.call_later(delay_s, lambda: self._submit_delayed(run_id, task_id))
            return
        if self._closed:
            log.warning("dispatcher closed; task %s of run %s not started", task_id, run_id)
            return
        with self._idle:
            self._inflight += 1
        with self._pending_lock:
            self._pending.append((run_id, task_id))
        self._start_pending()

    def _start_pending(self) -> None:
        """Start waiting attempts while slots are free."""
        while True:
            with self._pending_lock:
                if self._closed or not self._pending:
                    return
                lease = self._slots.try_lease()
                if lease is None:
                    return
                run_id, task_id = self._pending.popleft()
            self._threads.submit(functools.partial(self._run, run_id, task_id, lease))

    def _submit_delayed(self, run_id: str, task_id: str) -> None:
        try:
            self.submit(run_id, task_id)
        finally:
            with self._idle:
                self._delayed -= 1
                self._idle.notify_all()

    def _run(self, run_id: str, task_id: str, lease: SlotLease) -> None:
        try:
            with holding_slot(lease):
                outcome = self._attached().run_task(run_id, task_id)
            if outcome.kind == "retry":
                self.submit(run_id, task_id, outcome.delay_s)
        except Exception:
            log.exception("task %s of run %s could not be executed", task_id, run_id)
        finally:
            lease.close()  # frees the slot (and starts the next waiting attempt)
            self._done()

    def _done(self, count: int = 1) -> None:
        with self._idle:
            self._inflight -= count
            self._idle.notify_all()

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Drain: keep running (and accepting) the follow-up tasks of runs in flight for up to ``wait_s``, then
        stop. Whatever is left stays Ready in the store for recovery."""
        deadline = time.monotonic() + wait_s
        with self._idle:
            while (self._inflight > 0 or self._delayed > 0) and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
        with self._pending_lock:
            self._closed = True
            dropped = len(self._pending)
            self._pending.clear()
        with self._idle:
            self._inflight -= dropped
        self._timer.stop()
