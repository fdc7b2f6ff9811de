"""Bookkeeping of trigger polls: counters batched between flushes, and error reports that do not flood the log.

>>> from datetime import UTC, datetime
>>> book = PollBook(store=None, clock=lambda: 0.0)
>>> book.count("t", polls=1, skips=1)
>>> book.pending()["t"].polls
1
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cloacina.store.triggers import PollStats, TriggerStore

log = logging.getLogger("cloacina.trigger")
ERROR_LOG_INTERVAL_S = 60.0


def combined(older: PollStats, newer: PollStats) -> PollStats:
    """Statistics of two periods as one: counters added, the newer timestamps and error kept."""
    out = PollStats()
    for key, value in older.__dict__.items():
        other = getattr(newer, key)
        if isinstance(value, int):
            setattr(out, key, value + other)
        else:
            setattr(out, key, other if other is not None else value)
    return out


class PollBook:
    """Per-trigger counters since the last flush; one flush writes them all in one transaction."""

    def __init__(self, store: TriggerStore | None, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._stats: dict[str, PollStats] = {}
        self._last_logged: dict[str, tuple[str, float, int]] = {}
        self._lock = threading.Lock()

    def count(self, name: str, **deltas: Any) -> None:
        """Add integer deltas; set timestamps and texts."""
        with self._lock:
            st = self._stats.setdefault(name, PollStats())
            for key, value in deltas.items():
                setattr(st, key, getattr(st, key) + value if isinstance(value, int) else value)

    def pending(self) -> dict[str, PollStats]:
        with self._lock:
            return dict(self._stats)

    def flush(self) -> None:
        """Write what was gathered; on failure keep it for the next flush (and re-raise)."""
        with self._lock:
            stats, self._stats = self._stats, {}
        if self.store is None:
            return
        try:
            self.store.flush_poll_stats(stats)
        except Exception:
            with self._lock:
                for name, st in stats.items():
                    newer = self._stats.get(name)
                    self._stats[name] = st if newer is None else combined(st, newer)
            raise

    def record_error(self, name: str, reason: str) -> None:
        """Count a failed poll and log it; the same reason for one trigger is logged at most once a minute (a
        trigger failing every 100 ms must not flood the log), with how often it recurred meanwhile."""
        now = self.clock()
        with self._lock:
            last = self._last_logged.get(name)
            repeated = last is not None and last[0] == reason and now - last[1] < ERROR_LOG_INTERVAL_S
            suppressed = 0
            if repeated and last is not None:
                self._last_logged[name] = (last[0], last[1], last[2] + 1)
            else:
                suppressed = last[2] if last is not None and last[0] == reason else 0
                self._last_logged[name] = (reason, now, 0)
        if not repeated:
            more = f" (and {suppressed} more times since the last report)" if suppressed else ""
            log.warning("trigger %r poll failed: %s%s", name, reason, more, extra={"trigger": name})
        self.count(name, errors=1, last_error=reason[:2000], last_error_at=datetime.now(UTC))
