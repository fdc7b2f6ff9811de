"""Embedded dispatcher: a bounded thread pool for task attempts plus one timer thread for delayed work.

It implements :class:`~cloacina.execution.dispatcher.Dispatcher`: Ready tasks run on the pool, a retry is
re-submitted after its delay, and a run's deadline is a timer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

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


class ThreadDispatcher:
    """Runs task attempts on at most ``max_workers`` threads of this process."""

    def __init__(self, max_workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cloacina-worker")
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

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...]) -> None:
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

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        coordinator = self._attached()
        self._timer.call_later(deadline_s, lambda: coordinator.expire_run(run_id, deadline_s))

    def _attached(self) -> RunDriver:
        if self._coordinator is None:
            raise RuntimeError("ThreadDispatcher is not attached to a coordinator")
        return self._coordinator

    # -- the pool ---------------------------------------------------------------------------------------------
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
        try:
            self._pool.submit(self._run, run_id, task_id)
        except RuntimeError:  # pool shut down between the check and the submit
            self._done()
            log.warning("dispatcher closed; task %s of run %s not started", task_id, run_id)

    def _submit_delayed(self, run_id: str, task_id: str) -> None:
        try:
            self.submit(run_id, task_id)
        finally:
            with self._idle:
                self._delayed -= 1
                self._idle.notify_all()

    def _run(self, run_id: str, task_id: str) -> None:
        try:
            outcome = self._attached().run_task(run_id, task_id)
            if outcome.kind == "retry":
                self.submit(run_id, task_id, outcome.delay_s)
        except Exception:
            log.exception("task %s of run %s could not be executed", task_id, run_id)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Drain: keep running (and accepting) the follow-up tasks of runs in flight for up to ``wait_s``, then
        stop. Whatever is left stays Ready in the store for recovery."""
        deadline = time.monotonic() + wait_s
        with self._idle:
            while (self._inflight > 0 or self._delayed > 0) and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
        self._closed = True
        self._timer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
