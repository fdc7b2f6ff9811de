"""Heartbeats of running task attempts, written to SQL so a sweeper can tell a live task from a dead worker::

beats = AttemptHeartbeats(store=None, interval_s=5.0)
with beats.track("run-id", "task-id", 1):
    run_the_task()
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloacina.store.runs import RunStore

log = logging.getLogger("cloacina.heartbeat")


class AttemptHeartbeats:
    """One background thread that marks every attempt running in this process as alive, every ``interval_s``."""

    def __init__(self, store: RunStore, interval_s: float = 5.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self._running: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def track(self, run_id: str, task_id: str, attempt: int) -> Iterator[None]:
        key = (run_id, task_id, attempt)
        with self._lock:
            self._running[key] = self._running.get(key, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cloacina-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._running[key] -= 1
                if self._running[key] <= 0:
                    del self._running[key]

    def beat_once(self) -> int:
        with self._lock:
            keys = list(self._running)
        if not keys:
            return 0
        return self.store.heartbeat(keys)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_once()
            except Exception as exc:  # the database may be briefly down; the next beat will do
                log.warning("task heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
