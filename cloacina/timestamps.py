"""UTC timestamps: the one way every layer reads the clock and writes a time as text.

Times are aware UTC datetimes inside cloacina and ISO 8601 / RFC 3339 strings at its edges (management API
dicts, ``--json`` output, HTTP). SQLite hands back naive datetimes for columns the store wrote in UTC; they are
read as UTC.

>>> from datetime import datetime
>>> iso(datetime(2024, 7, 6, 2, 0))
'2024-07-06T02:00:00+00:00'
>>> iso(None) is None
True
>>> iso_values({"at": datetime(2024, 7, 6, tzinfo=UTC), "n": 1})
{'at': '2024-07-06T00:00:00+00:00', 'n': 1}
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware datetime; a naive one is taken to be UTC already."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 text of ``value`` (naive means UTC), or ``None``."""
    return None if value is None else as_utc(value).isoformat()


def iso_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with every datetime value turned into ISO 8601 text."""
    return {key: iso(value) if isinstance(value, datetime) else value for key, value in record.items()}
