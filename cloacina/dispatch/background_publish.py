"""Publishing new runs off the caller's thread, so a submitting client overlaps one run's publish with the next
run's creation.

``start_run`` returns once the run is committed in SQL (that is what makes it accepted); its messages go out from
one background thread, in submission order. A process that dies before they are sent loses nothing: the run is in
SQL with its roots Ready, and the sweeper republishes a run that made no progress (``stale_run_s``). A clean
shutdown sends everything still queued first.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cloacina.publish")
_STOP = object()


class BackgroundPublisher:
    """Runs ``send(*args)`` calls on one daemon thread, in order; a call that raises is logged and dropped (the
    sweeper republishes its run)."""

    def __init__(self, send: Callable[..., None], name: str = "cloacina-publish") -> None:
        self._send = send
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, *args: Any) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(args)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted so far was sent (or failed); ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def _loop(self) -> None:
        while True:
            args = self._queue.get()
            if args is _STOP:
                return
            try:
                self._send(*args)
            except Exception:  # the run stays in SQL; the sweeper republishes it
                log.exception("publishing a new run failed (the sweeper will retry)")
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to ``timeout_s``), then stop the thread."""
        self.drain(timeout_s)
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout_s)
