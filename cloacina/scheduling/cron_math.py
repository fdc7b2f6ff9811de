"""Cron arithmetic: validate an expression and a time zone, and list due times as aware UTC datetimes.

Pure functions, no I/O; ``croniter`` does the calendar work (never hand-rolled).

Expressions
    5 fields ``minute hour day-of-month month day-of-week`` (standard cron), or 6 fields with **seconds
    first**: ``second minute hour day-of-month month day-of-week``, the Quartz / Cloacina convention
    (croniter's ``second_at_beginning=True``). So ``0 */5 * * * *`` is "second 0 of every fifth minute" and
    ``* * * * * *`` is "every second". croniter's own default puts seconds *last*; we do not use it, so
    ``* * * * * 15`` is rejected (15 is not a day of the week) rather than read as "second 15".
    The aliases ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly`` and
    ``@annually`` are accepted. Impossible dates such as ``0 0 30 2 *`` are rejected.

Time zones
    Any IANA name known to :mod:`zoneinfo` (``"UTC"``, ``"Europe/Berlin"``). Fields are matched against the
    local wall clock of that zone; every result is converted to UTC.

Daylight saving time (what croniter does, plus one rule of ours)
    - Spring forward (a local hour does not exist): an expression whose hour field lists specific hours fires
      at the first wall time after the gap instead (``30 2 * * *`` in America/New_York on 2024-03-10 fires at
      03:00 EDT); an expression with ``*`` in the hour field simply has no due times inside the gap
      (``*/30 * * * *`` goes 01:30 EST -> 03:00 EDT). Two due times that land on the same instant fire once.
    - Fall back (a local hour happens twice): croniter yields both instants. We keep both when the hour field
      is ``*`` (an hourly job runs every real hour), but an expression with specific hours fires only at the
      first occurrence, so ``30 1 * * *`` still runs once that day (as in Vixie cron).
    - Known croniter limit: in a zone whose DST shift is not a whole hour (only Australia/Lord_Howe, 30 min),
      the second pass through the repeated half hour is not yielded, even for ``*`` hours.

Example::

    >>> from datetime import UTC, datetime
    >>> next_due("0 9 * * 1-5", "Europe/Berlin", datetime(2024, 7, 5, 12, 0, tzinfo=UTC)).isoformat()
    '2024-07-08T07:00:00+00:00'
    >>> [t.second for t in due_times("*/20 * * * * *", "UTC", datetime(2024, 1, 1, tzinfo=UTC),
    ...                              datetime(2024, 1, 1, 0, 1, tzinfo=UTC), limit=10)]
    [20, 40, 0]
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from cloacina.errors import DefinitionError

ALIASES = frozenset({"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"})
_HOUR_FIELD = 1  # index of the hour field in croniter's expanded form (seconds are moved to the end)
_TICK = timedelta(microseconds=1)
_BACKWARD_MARGIN = 2  # extra backward steps before walking forwards (see _newest)


@dataclass(frozen=True)
class CronSpec:
    """A validated expression in its zone. ``has_fixed_hours``: the hour field is not ``*`` (see DST rules)."""

    expression: str
    timezone: str
    zone: ZoneInfo
    has_fixed_hours: bool


def validate_cron(expression: str, timezone: str = "UTC") -> CronSpec:
    """Check ``expression`` and ``timezone``; raise :class:`DefinitionError` (a ``ValueError``) naming the bad one.

    >>> validate_cron("0 */5 * * * *", "Europe/Berlin").has_fixed_hours
    False
    >>> validate_cron("0 0 * *")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cloacina.errors.DefinitionError: invalid cron expression '0 0 * *': it has 4 fields; ...
    """
    if not isinstance(expression, str):
        raise DefinitionError(f"cron expression must be a string, got {type(expression).__name__}")
    if not isinstance(timezone, str):
        raise DefinitionError(f"time zone must be a string, got {type(timezone).__name__}")
    return _parse(" ".join(expression.split()), timezone)


@functools.lru_cache(maxsize=256)
def _parse(expression: str, timezone: str) -> CronSpec:
    fields = expression.split()
    if not (len(fields) == 1 and fields[0].lower() in ALIASES) and len(fields) not in (5, 6):
        raise DefinitionError(
            f"invalid cron expression {expression!r}: it has {len(fields)} fields; use 5 "
            "(minute hour day month weekday), 6 with seconds first (second minute hour day month weekday), "
            "or an alias such as @daily",
            subject=expression,
        )
    try:
        expanded, _ = croniter.expand(expression, second_at_beginning=True, strict=True)
    except (CroniterError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DefinitionError(f"invalid cron expression {expression!r}: {reason}", subject=expression) from None
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise DefinitionError(
            f"unknown time zone {timezone!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'", subject=timezone
        ) from None
    return CronSpec(expression, timezone, zone, has_fixed_hours=expanded[_HOUR_FIELD] != ["*"])


def _check_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value!r}")


def _is_repeated_wall_time(local: datetime) -> bool:
    """True for the second instant of a wall time that happens twice (the fall-back hour)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _iterate(spec: CronSpec, start_utc: datetime, *, backwards: bool = False) -> Iterator[datetime]:
    """Due times strictly after (or strictly before, ``backwards``) ``start_utc``, as UTC, in order."""
    it = croniter(spec.expression, start_utc.astimezone(spec.zone), second_at_beginning=True)
    step = it.get_prev if backwards else it.get_next
    previous: datetime | None = None
    while True:
        try:
            local = step(datetime)
        except CroniterBadDateError:  # no match within croniter's search horizon (decades)
            return
        if spec.has_fixed_hours and _is_repeated_wall_time(local):
            continue
        instant = local.astimezone(UTC)
        if instant == previous:
            continue
        previous = instant
        yield instant


def next_due(expression: str, timezone: str, after_utc: datetime) -> datetime:
    """The first due time strictly after ``after_utc``, as an aware UTC datetime."""
    _check_aware(after_utc, "after_utc")
    spec = validate_cron(expression, timezone)
    for instant in _iterate(spec, after_utc):
        return instant
    raise DefinitionError(f"cron expression {expression!r} has no due time after {after_utc.isoformat()}")


def previous_due(expression: str, timezone: str, at_or_before_utc: datetime) -> datetime | None:
    """The latest due time at or before ``at_or_before_utc`` (``None`` if there is none)."""
    _check_aware(at_or_before_utc, "at_or_before_utc")
    newest = _newest(validate_cron(expression, timezone), None, at_or_before_utc, 1)
    return newest[0] if newest else None


def due_times(expression: str, timezone: str, after_utc: datetime, until_utc: datetime, limit: int) -> list[datetime]:
    """The newest ``limit`` due times ``t`` with ``after_utc < t <= until_utc``, oldest first.

    Costs about ``limit`` steps however long the window is (a year of a per-second schedule is fine).
    """
    _check_aware(after_utc, "after_utc")
    _check_aware(until_utc, "until_utc")
    spec = validate_cron(expression, timezone)
    if limit <= 0 or until_utc <= after_utc:
        return []
    return _newest(spec, after_utc, until_utc, limit)


def _newest(spec: CronSpec, after_utc: datetime | None, until_utc: datetime, limit: int) -> list[datetime]:
    """The newest ``limit`` due times in ``(after_utc, until_utc]``, as :func:`next_due` walks them.

    Walking forwards is the definition. croniter's backward walk is only used to find where to start: around
    some DST transitions (e.g. Lord Howe's 30-minute fall-back) it misses an instant the forward walk yields,
    so it starts a few steps early and the forward walk decides what is in the window.
    """
    start = after_utc  # exclusive, like next_due's argument
    oldest_seen: datetime | None = None
    for steps, instant in enumerate(_iterate(spec, until_utc + _TICK, backwards=True)):
        if after_utc is not None and instant <= after_utc:
            break
        if steps >= limit + _BACKWARD_MARGIN:
            start = instant  # far enough back: everything newer is walked forwards below
            break
        oldest_seen = instant
    else:  # croniter found nothing earlier: start just before the oldest instant it did find
        if after_utc is None:
            if oldest_seen is None:
                return []
            start = oldest_seen - _TICK
    assert start is not None
    newest: deque[datetime] = deque(maxlen=limit)
    for instant in _iterate(spec, start):
        if instant > until_utc:
            break
        newest.append(instant)
    return list(newest)


def count_due_times(expression: str, timezone: str, after_utc: datetime, until_utc: datetime, cap: int) -> int:
    """How many due times lie in ``(after_utc, until_utc]``, counting at most ``cap`` (for log messages)."""
    _check_aware(after_utc, "after_utc")
    _check_aware(until_utc, "until_utc")
    spec = validate_cron(expression, timezone)
    count = 0
    for instant in _iterate(spec, after_utc):
        if instant > until_utc or count >= cap:
            break
        count += 1
    return count
