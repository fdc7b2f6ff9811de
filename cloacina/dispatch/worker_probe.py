"""What a worker's ``/livez`` and ``/readyz`` know about its own Celery worker, from inside its main process.

A consumer bootstep (:class:`ProbeStep`) runs once the consumer consumes from the broker: it marks the worker
connected and ticks from the worker's event loop every :data:`TICK_INTERVAL_S` (a timer entry of the loop, so a
blocked loop stops ticking). When the broker connection is lost, Celery stops the consumer's steps and retries the
connection; the step marks the worker disconnected meanwhile and starts again once it is back.

- live: the loop ticks (connected), or the consumer is waiting for the broker after having consumed (the loop is
  fine, the broker is not: no reason to restart the process). Before the first start: not live yet (a startup
  probe waits for it).
- ready: connected, and the loop ticks.

No broadcast, no broker round trip: answering costs a lock and a clock read, so a probe takes microseconds.

>>> state = WorkerProbeState(max_tick_age_s=30.0, clock=lambda: 100.0)
>>> state.live()
(False, 'the worker has not started consuming yet')
>>> state.connected(); state.live()[0], state.ready()[0]
(True, True)
>>> state.disconnected(); state.live()[0], state.ready()
(True, (False, 'not consuming: waiting for the broker connection since 0.0s'))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

TICK_INTERVAL_S = 1.0
CheckResult = tuple[bool, str]


class WorkerProbeState:
    """The consumer's state as the probe sees it (thread-safe: the loop writes, the HTTP thread reads)."""

    def __init__(self, max_tick_age_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tick_age_s = max_tick_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._connected = False
        self._last_tick: float | None = None
        self._since: float | None = None  # when the connection state last changed
        self.connections = 0  # how many times the consumer (re)started consuming

    def connected(self) -> None:
        with self._lock:
            now = self._clock()
            self._started = self._connected = True
            self._last_tick = self._since = now
            self.connections += 1

    def disconnected(self) -> None:
        with self._lock:
            if self._connected:
                self._connected = False
                self._since = self._clock()

    def tick(self) -> None:
        with self._lock:
            self._last_tick = self._clock()

    def _tick_age(self) -> float:
        return self._clock() - (self._last_tick or 0.0)

    def live(self) -> CheckResult:
        """Is the worker's own loop alive? (Never asks the broker or the database.)"""
        with self._lock:
            if not self._started:
                return False, "the worker has not started consuming yet"
            if not self._connected:
                waited = self._clock() - (self._since or 0.0)
                return True, f"waiting for the broker connection since {waited:.1f}s"
            age = self._tick_age()
            if age > self.max_tick_age_s:
                return False, f"the event loop's last tick was {age:.1f}s ago (limit {self.max_tick_age_s:g}s): stuck"
            return True, f"consuming; loop ticked {age:.2f}s ago"

    def ready(self) -> CheckResult:
        """Is the worker consuming from the broker, with a ticking loop?"""
        live, detail = self.live()
        with self._lock:
            if self._started and not self._connected:
                waited = self._clock() - (self._since or 0.0)
                return False, f"not consuming: waiting for the broker connection since {waited:.1f}s"
        return live, detail


STATE = WorkerProbeState()  # this process's worker (the Celery main process)


class ProbeStep(bootsteps.StartStopStep):
    """Consumer bootstep feeding :data:`STATE`: started once the consumer consumes, stopped when it restarts."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._entry: Any = None

    def start(self, parent: Any) -> None:
        STATE.connected()
        self._entry = parent.timer.call_repeatedly(TICK_INTERVAL_S, STATE.tick)

    def stop(self, parent: Any) -> None:
        STATE.disconnected()
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)


def install_probe(app: Celery) -> None:
    """Add the probe's bootstep to ``app``'s consumer (before the worker starts)."""
    app.steps["consumer"].add(ProbeStep)
