"""Bookkeeping of trigger polls: counters batched between flushes, and error reports that do not flood the log.

>>> book = PollBook(store=None, clock=lambda: 0.0)
>>> book.count("t", polls=1, skips=1)
>>> book.pending()["t"].polls
1
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

from cloacina.store.triggers import PollStats, TriggerStore

log = logging.getLogger("cloacina.trigger")
ERROR_LOG_INTERVAL_S = 60.0


_FIELDS = [(f.name, f.default) for f in fields(PollStats)]
FLUSH_CHUNK = 200  # triggers per transaction: a flush never holds the database (SQLite: the process) for long


def add_older(newer: PollStats, older: PollStats) -> None:
    """Fold the statistics of an earlier period into ``newer``: counters added, the newer timestamps and error kept.

    >>> st = PollStats(polls=1, last_error="new"); add_older(st, PollStats(polls=2, errors=1, last_error="old"))
    >>> st.polls, st.errors, st.last_error
    (3, 1, 'new')
    """
    for key, _ in _FIELDS:
        value, other = getattr(newer, key), getattr(older, key)
        if isinstance(value, int):
            setattr(newer, key, value + other)
        elif value is None:
            setattr(newer, key, other)


def _reset(stats: Iterable[PollStats]) -> None:
    for st in stats:
        for key, default in _FIELDS:
            setattr(st, key, default)


class PollBook:
    """Per-trigger counters since the last flush; a flush writes them all, ``FLUSH_CHUNK`` triggers a transaction.

    Each trigger has two ``PollStats`` that trade places at each flush (one is written and cleared while the
    other counts): a thousand triggers polled every second then create no object per poll or per flush. Objects
    that each lived about a second would reach the garbage collector's oldest generation by the thousand and bring
    on its full collections, which stop every thread of the process for tens of milliseconds.
    """

    def __init__(self, store: TriggerStore | None, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._pairs: dict[str, tuple[PollStats, PollStats]] = {}
        self._side = 0  # which of each pair is counted into; the other one is being written or is clear
        self._last_logged: dict[str, tuple[str, float, int]] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: the refresher's, stop()'s, a test's

    def _of(self, name: str) -> PollStats:
        """The counters of ``name`` (under ``_lock``)."""
        pair = self._pairs.get(name)
        if pair is None:
            pair = self._pairs[name] = (PollStats(), PollStats())
        return pair[self._side]

    def count(self, name: str, **deltas: Any) -> None:
        """Add integer deltas; set timestamps and texts."""
        with self._lock:
            st = self._of(name)
            for key, value in deltas.items():
                setattr(st, key, getattr(st, key) + value if isinstance(value, int) else value)

    def polled(self, name: str, span: timedelta, *, skipped: bool) -> datetime:
        """Count one poll (and its skip) of ``name`` now, the next one due ``span`` later; returns the time of
        the poll. The per-poll path: no keyword dictionary, one lock, nothing allocated that outlives it."""
        wall = datetime.now(UTC)
        with self._lock:
            st = self._of(name)
            st.polls += 1
            st.skips += skipped
            st.last_poll_at = wall
            st.next_poll_at = wall + span
        return wall

    def pending(self) -> dict[str, PollStats]:
        with self._lock:
            return {name: pair[self._side] for name, pair in self._pairs.items() if not pair[self._side].is_empty()}

    def flush(self) -> None:
        """Write what was gathered; on failure keep what was not written for the next flush (and re-raise)."""
        with self._flushing:
            with self._lock:
                side, self._side = self._side, 1 - self._side  # polls count into the other side from now on
                pairs = list(self._pairs.items())
            items = [(name, pair[side]) for name, pair in pairs if not pair[side].is_empty()]
            done = 0
            try:
                while self.store is not None and done < len(items):
                    self.store.flush_poll_stats(dict(items[done : done + FLUSH_CHUNK]))
                    done += FLUSH_CHUNK
            except Exception:
                with self._lock:
                    for name, st in items[done:]:
                        add_older(self._of(name), st)
                raise
            finally:
                _reset(st for _, st in items)

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
