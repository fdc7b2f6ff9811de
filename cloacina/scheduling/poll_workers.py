"""Where trigger polls run: a small pool of threads for sync polls, one event loop for async ones.

:class:`PollWorkers` is what ``ThreadPoolExecutor`` would be for polls, minus what a poll does not need: no
``Future`` (and its condition, lock and bound methods) per poll, just the item put on one C-level queue. A
thousand polls a second then allocate almost nothing that outlives them, which keeps the garbage collector's
full collections (which stop every thread for tens of milliseconds) rare. Any idle thread takes the next item,
so a poll that blocks holds up one thread, never the polls queued behind it.

>>> seen = threading.Event()
>>> workers = PollWorkers(2, lambda item: seen.set(), "doc-poll")
>>> workers.submit("a"), seen.wait(5)
(True, True)
>>> workers.shutdown(), workers.submit("b")
([], False)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger("cloacina.trigger")
T = TypeVar("T")
_STOP: Any = object()  # the item that tells one thread to exit


class PollWorkers(Generic[T]):
    """At most ``max_workers`` daemon threads calling ``handle(item)`` for each submitted item (taken in order).

    A thread is started when an item is submitted and no thread is waiting for work (up to the maximum), as
    ``ThreadPoolExecutor`` does. ``handle`` should not raise (an exception is logged and the thread goes on).
    """

    def __init__(self, max_workers: int, handle: Callable[[T], None], name_prefix: str) -> None:
        self.max_workers = max(1, max_workers)
        self._handle = handle
        self._name_prefix = name_prefix
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._waiting = 0  # threads blocked on an empty queue
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, item: T) -> bool:
        """Queue ``item``; ``False`` (and not queued) after :meth:`shutdown`."""
        with self._lock:  # (uncontended: workers take it only when they run out of work)
            if self._closed:
                return False
            self._queue.put(item)
            if self._waiting == 0 and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name_prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return True

    def _work(self) -> None:
        get_nowait, handle = self._queue.get_nowait, self._handle
        while True:
            try:
                item = get_nowait()  # the busy path: no bookkeeping while there is work
            except queue.Empty:
                with self._lock:
                    self._waiting += 1
                try:
                    item = self._queue.get()
                finally:
                    with self._lock:
                        self._waiting -= 1
            if item is _STOP:
                return
            try:
                handle(item)
            except BaseException:  # as ThreadPoolExecutor: whatever a poll raised, the thread goes on
                log.exception("a poll worker failed")

    def shutdown(self) -> list[T]:
        """Refuse new items, let every thread exit after its current item, and return the items never started.

        A thread stuck in a hung call is not waited for (the threads are daemons)."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        pending: list[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item)
        for _ in range(threads):
            self._queue.put(_STOP)
        return pending


class AsyncPolls:
    """One event loop on a daemon thread (started at the first async poll) running the async triggers' polls."""

    def __init__(self, name: str = "cloacina-async-polls") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(
        self, poll: Callable[[], Coroutine[Any, Any, Any]], timeout_s: float, done: Callable[[Future[Any]], None]
    ) -> None:
        """Start ``poll()`` on the loop, cancelled after ``timeout_s``; ``done(future)`` runs on the loop's thread."""
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(poll(), timeout_s), self._event_loop())
        future.add_done_callback(done)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=self._name, daemon=True).start()
                self._loop = loop
            return self._loop

    def stop(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
