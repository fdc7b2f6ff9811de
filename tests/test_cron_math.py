"""Cron arithmetic: field conventions, time zones, DST transitions, windows and invalid input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cloacina.errors import DefinitionError
from cloacina.scheduling.cron_math import count_due_times, due_times, next_due, previous_due, validate_cron

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_times(expr: str, tz: str, start: datetime, end: datetime) -> list[str]:
    """Due times in (start, end] shown as local wall times with their offsets."""
    zone = ZoneInfo(tz)
    return [t.astimezone(zone).isoformat() for t in due_times(expr, tz, start, end, limit=1000)]


def walk_forward(expr: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while (t := next_due(expr, tz, t)) <= end:
        out.append(t)
    return out


# -- fields --------------------------------------------------------------------------------------------------
def test_five_fields_are_minute_hour_day_month_weekday() -> None:
    assert next_due("30 14 * * *", "UTC", utc(2024, 1, 1)) == utc(2024, 1, 1, 14, 30)
    assert next_due("0 9 * * 1", "UTC", utc(2024, 1, 1, 10)) == utc(2024, 1, 8, 9)  # 2024-01-01 is a Monday


def test_six_fields_put_seconds_first() -> None:
    assert next_due("15 * * * * *", "UTC", utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 0, 15)
    assert next_due("0 */5 * * * *", "UTC", utc(2024, 1, 1, 0, 0, 1)) == utc(2024, 1, 1, 0, 5, 0)
    every_second = due_times("* * * * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 0, 0, 3), limit=10)
    assert every_second == [utc(2024, 1, 1, 0, 0, s) for s in (1, 2, 3)]


def test_seconds_last_is_rejected_rather_than_misread() -> None:
    with pytest.raises(DefinitionError, match=r"'\* \* \* \* \* 15'"):
        validate_cron("* * * * * 15")  # 15 would be the day of week


def test_aliases_and_whitespace() -> None:
    assert next_due("@hourly", "UTC", utc(2024, 1, 1, 0, 10)) == utc(2024, 1, 1, 1)
    assert next_due("@daily", "UTC", utc(2024, 1, 1, 0, 10)) == utc(2024, 1, 2)
    assert validate_cron("  0  2 * *   * ").expression == "0 2 * * *"


def test_next_due_is_strictly_after() -> None:
    assert next_due("0 * * * *", "UTC", utc(2024, 1, 1, 10)) == utc(2024, 1, 1, 11)
    assert next_due("0 * * * *", "UTC", utc(2024, 1, 1, 10) - timedelta(microseconds=1)) == utc(2024, 1, 1, 10)
    assert previous_due("0 * * * *", "UTC", utc(2024, 1, 1, 10)) == utc(2024, 1, 1, 10)
    assert previous_due("0 * * * *", "UTC", utc(2024, 1, 1, 10, 59)) == utc(2024, 1, 1, 10)


def test_results_are_aware_utc_whatever_the_input_zone() -> None:
    after = datetime(2024, 7, 1, 12, tzinfo=BERLIN)
    result = next_due("0 9 * * *", "Asia/Tokyo", after)
    assert result.tzinfo is UTC
    assert result == utc(2024, 7, 2, 0)  # 09:00 JST


# -- time zones ----------------------------------------------------------------------------------------------
def test_fields_match_the_local_wall_clock() -> None:
    assert next_due("0 9 * * *", "Europe/Berlin", utc(2024, 1, 15)) == utc(2024, 1, 15, 8)  # CET, UTC+1
    assert next_due("0 9 * * *", "Europe/Berlin", utc(2024, 7, 15)) == utc(2024, 7, 15, 7)  # CEST, UTC+2


# -- DST -----------------------------------------------------------------------------------------------------
def test_spring_forward_fixed_hour_in_the_gap_fires_once_at_the_first_time_after_it() -> None:
    # America/New_York 2024-03-10: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    assert local_times("30 2 * * *", "America/New_York", utc(2024, 3, 9, 12), utc(2024, 3, 11, 12)) == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
    ]
    # Europe/Berlin 2024-03-31: 02:00 CET jumps to 03:00 CEST.
    assert local_times("30 2 * * *", "Europe/Berlin", utc(2024, 3, 30, 12), utc(2024, 4, 1, 12)) == [
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]


def test_spring_forward_wildcard_hour_skips_the_missing_times() -> None:
    assert local_times("*/30 * * * *", "America/New_York", utc(2024, 3, 10, 6), utc(2024, 3, 10, 7, 30)) == [
        "2024-03-10T01:30:00-05:00",
        "2024-03-10T03:00:00-04:00",
        "2024-03-10T03:30:00-04:00",
    ]


def test_spring_forward_shift_never_duplicates_an_existing_time() -> None:
    times = local_times("0 2,3 * * *", "America/New_York", utc(2024, 3, 10, 0), utc(2024, 3, 10, 12))
    assert times == ["2024-03-10T03:00:00-04:00"]


def test_fall_back_fixed_hour_fires_once_at_the_first_occurrence() -> None:
    # America/New_York 2024-11-03: 01:00-01:59 happens twice (EDT, then EST).
    assert local_times("30 1 * * *", "America/New_York", utc(2024, 11, 2, 12), utc(2024, 11, 4, 12)) == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
    ]
    # Europe/Berlin 2024-10-27: 02:00-02:59 happens twice (CEST, then CET).
    assert local_times("30 2 * * *", "Europe/Berlin", utc(2024, 10, 26, 12), utc(2024, 10, 28, 12)) == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]


def test_fall_back_wildcard_hour_fires_in_both_real_hours() -> None:
    assert local_times("0 * * * *", "America/New_York", utc(2024, 11, 3, 4, 30), utc(2024, 11, 3, 7, 30)) == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
    ]


@pytest.mark.parametrize(
    ("tz", "start"),
    [
        ("America/New_York", utc(2024, 3, 9)),
        ("America/New_York", utc(2024, 11, 2)),
        ("Europe/Berlin", utc(2024, 3, 30)),
        ("Europe/Berlin", utc(2024, 10, 26)),
        ("Australia/Lord_Howe", utc(2024, 4, 6)),  # a 30-minute DST shift
        ("Europe/Dublin", utc(2024, 10, 26)),  # "negative DST" in tzdata
    ],
)
def test_windows_walked_backwards_equal_next_due_walked_forwards(tz: str, start: datetime) -> None:
    end = start + timedelta(days=3)
    for expr in ("30 2 * * *", "30 1 * * *", "0 2,3 * * *", "*/30 * * * *", "0 * * * *", "15 */20 1-3 * * *"):
        forward = walk_forward(expr, tz, start, end)
        assert due_times(expr, tz, start, end, limit=10_000) == forward, expr
        assert forward == sorted(set(forward)), expr
        assert count_due_times(expr, tz, start, end, cap=10_000) == len(forward), expr


# -- windows -------------------------------------------------------------------------------------------------
def test_due_times_keeps_the_newest_when_limited() -> None:
    times = due_times("0 * * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 10), limit=3)
    assert times == [utc(2024, 1, 1, 8), utc(2024, 1, 1, 9), utc(2024, 1, 1, 10)]
    assert due_times("0 * * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 10), limit=0) == []
    assert due_times("0 * * * *", "UTC", utc(2024, 1, 1, 10), utc(2024, 1, 1, 10), limit=5) == []


def test_long_windows_are_cheap_for_the_newest_times() -> None:
    # A year of per-second due times: only the newest `limit` are computed.
    times = due_times("* * * * * *", "UTC", utc(2023, 1, 1), utc(2024, 1, 1), limit=5)
    assert times[-1] == utc(2024, 1, 1) and len(times) == 5


def test_count_due_times_stops_at_the_cap() -> None:
    assert count_due_times("* * * * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 2), cap=50) == 50
    assert count_due_times("0 0 * * *", "UTC", utc(2024, 1, 1), utc(2024, 1, 11), cap=50) == 10


# -- invalid input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr",
    ["", "* * * *", "* * * * * * *", "61 * * * *", "* 24 * * *", "0 0 30 2 *", "*/0 * * * *", "H * * * *", "@reboot"],
)
def test_invalid_expressions_are_named(expr: str) -> None:
    with pytest.raises(DefinitionError) as info:
        validate_cron(expr, "UTC")
    assert repr(expr) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", "utc+1"])
def test_unknown_time_zones_are_named(tz: str) -> None:
    with pytest.raises(DefinitionError, match="unknown time zone") as info:
        validate_cron("0 * * * *", tz)
    assert repr(tz) in str(info.value)


def test_wrong_types_and_naive_datetimes() -> None:
    with pytest.raises(DefinitionError, match="string"):
        validate_cron(5, "UTC")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        next_due("0 * * * *", "UTC", datetime(2024, 1, 1))
