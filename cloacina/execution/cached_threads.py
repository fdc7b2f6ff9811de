"""A growable pool of daemon threads: an idle thread takes the next function, else a new thread starts.

Used where a bounded executor would be wrong because some functions may block for a long time or for ever (a
task whose code hangs past its timeout keeps its thread; the pool simply starts another): the task attempts of the
embedded dispatcher, the stretches of a Celery worker process, and the user code of every attempt
(:mod:`cloacina.execution.task_call`), which runs on a thread of its own so that a timeout can be enforced.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("cloacina.threads")


class CachedThreads:
    """Runs functions on daemon threads: an idle thread if there is one, else a new one. Threads retire after
    ``idle_s`` without work. Nothing bounds the count: callers bound the work they submit (with slots)."""

    def __init__(self, name: str, idle_s: float = 60.0) -> None:
        self._name = name
        self._idle_s = idle_s
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = itertools.count(1)

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._work.put(fn)
            if self._idle:
                self._idle -= 1  # that idle thread takes it (or another one does: the count only errs low)
                return
        threading.Thread(target=self._loop, name=f"{self._name}-{next(self._count)}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                fn = self._work.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if not self._work.empty():
                        continue
                    self._idle = max(0, self._idle - 1)
                    return
            try:
                fn()
            except Exception:
                log.exception("pooled function failed")
            with self._lock:
                self._idle += 1
