"""The poll schedule of one trigger scheduler: when each trigger is next due, which polls are in progress, which
of them timed out. Plain bookkeeping on clock readings (no threads, no I/O); the scheduler holds its lock while
calling it.

A poll is due one interval after the previous one was *due*, not after the pass that started it: a pass starts a
little late (the loop wakes up, then starts every poll due meanwhile), and anchoring on the pass would add that
lateness to every interval and pull triggers that are due close together into one batch for good. A poll that
starts later than half its interval (or ``MAX_KEPT_LATENESS_S``) re-anchors: the next is due a full interval after
it, so a paused process never catches up with a burst.

>>> from cloacina.definitions.trigger import TriggerDefinition
>>> schedule = PollSchedule()
>>> t = schedule.add(TriggerDefinition(name="t", function=bool, workflow="w", poll_interval_ms=1000), True, now=0.0)
>>> [e.definition.name for e in schedule.take_due(1.01, poll_timeout_s=30).started], t.next_due
(['t'], 2.0)
>>> schedule.release(t); [e.definition.name for e in schedule.take_due(2.7, poll_timeout_s=30).started], t.next_due
(['t'], 3.7)
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import timedelta

from cloacina.definitions.trigger import TriggerDefinition

MAX_KEPT_LATENESS_S = 1.0  # a poll later than this (or than half its interval) re-anchors its trigger's schedule


@dataclass(eq=False)
class ScheduledTrigger:
    """One registered trigger: its definition, its next due time and its poll in progress (if any)."""

    definition: TriggerDefinition
    enabled: bool
    interval_s: float
    next_due: float
    in_flight_since: float | None = None
    timed_out: bool = False
    is_async: bool = field(init=False)
    poll_span: timedelta = field(init=False)  # from one poll to the next, for the schedule row's next_poll_at
    kept_lateness_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = self.definition.is_async
        self.poll_span = timedelta(seconds=self.interval_s)
        self.kept_lateness_s = min(self.interval_s / 2, MAX_KEPT_LATENESS_S)

    def due_after(self, due_at: float, now: float) -> float:
        """When the poll after the one due at ``due_at`` (and started at ``now``) is due."""
        if now - due_at < self.kept_lateness_s:
            return due_at + self.interval_s  # on time, give or take the loop's jitter: keep the phase
        return now + self.interval_s  # late: a full interval after this start, no catch-up


@dataclass
class Pass:
    """What one pass found: the polls to start now, the names of polls that just timed out, and when the next
    poll is due and the oldest poll in progress times out (``None``: nothing registered / nothing in progress)."""

    started: list[ScheduledTrigger]
    timed_out: list[str]
    next_due: float | None
    next_timeout: float | None


class PollSchedule:
    """Due times in a heap (stale items are skipped, not removed) and the polls in progress."""

    def __init__(self) -> None:
        self.entries: dict[str, ScheduledTrigger] = {}
        self.in_flight: dict[str, ScheduledTrigger] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def add(self, definition: TriggerDefinition, enabled: bool, now: float) -> ScheduledTrigger:
        """Schedule ``definition``, replacing a trigger of the same name; the first poll is due one interval on,
        as every later one is. A poll of the replaced definition may still be running: it ends on its own entry."""
        interval_s = definition.poll_interval_ms / 1000
        entry = ScheduledTrigger(definition, enabled, interval_s, next_due=now + interval_s)
        self.in_flight.pop(definition.name, None)
        self.entries[definition.name] = entry
        self._push(entry)
        return entry

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    def set_enabled(self, entry: ScheduledTrigger, enabled: bool, now: float) -> bool:
        """Apply a flag; a trigger enabled again is due at once. ``True`` if the flag changed."""
        if entry.enabled == enabled:
            return False
        entry.enabled = enabled
        if enabled:
            entry.next_due = now
            self._push(entry)
        return True

    def _push(self, entry: ScheduledTrigger) -> None:
        heapq.heappush(self._heap, (entry.next_due, next(self._seq), entry.definition.name))

    def take_due(self, now: float, poll_timeout_s: float) -> Pass:
        """Mark the polls in progress for ``poll_timeout_s`` as timed out, reschedule every due trigger and mark
        those that may be polled (enabled, no poll in progress) as started at ``now``."""
        timed_out: list[str] = []
        oldest: float | None = None  # the start of the oldest poll in progress that has not timed out
        for busy in self.in_flight.values():  # only polls in progress, not every trigger: O(busy), not O(all)
            since = busy.in_flight_since
            if since is None or busy.timed_out:
                continue
            if now - since >= poll_timeout_s:
                busy.timed_out = True
                timed_out.append(busy.definition.name)
            elif oldest is None or since < oldest:
                oldest = since
        started: list[ScheduledTrigger] = []
        heap, entries = self._heap, self.entries
        while heap and heap[0][0] <= now:
            due_at, _, name = heapq.heappop(heap)
            entry = entries.get(name)
            if entry is None or entry.next_due != due_at:
                continue  # removed or rescheduled: a stale heap item
            entry.next_due = entry.due_after(due_at, now)
            self._push(entry)
            if entry.enabled and entry.in_flight_since is None:
                entry.in_flight_since = now
                entry.timed_out = False
                self.in_flight[name] = entry
                started.append(entry)
        if started and oldest is None:
            oldest = now
        return Pass(
            started,
            timed_out,
            heap[0][0] if heap else None,
            None if oldest is None else oldest + poll_timeout_s,
        )

    def release(self, entry: ScheduledTrigger) -> None:
        """The poll of ``entry`` returned (or was never started)."""
        entry.in_flight_since = None
        entry.timed_out = False
        if self.in_flight.get(entry.definition.name) is entry:
            del self.in_flight[entry.definition.name]

    def busy(self) -> bool:
        """Whether a poll that has not timed out is still in progress."""
        return any(e.in_flight_since is not None and not e.timed_out for e in self.entries.values())
