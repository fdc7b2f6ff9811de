"""``limit``/``offset`` arguments of the management APIs (triggers, cron): ``None`` means 100 and 0, as in cloaca.

>>> paging(None, None)
(100, 0)
>>> paging(10, 20)
(10, 20)
>>> paging(-1, 0)
Traceback (most recent call last):
...
ValueError: limit must be >= 0, got -1
"""

from __future__ import annotations

DEFAULT_LIMIT = 100


def _count(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def paging(limit: object, offset: object) -> tuple[int, int]:
    """``(limit, offset)`` with ``None`` replaced by the defaults; ``TypeError`` for a non-integer, ``ValueError``
    for a negative one. A limit of 0 is allowed (an empty page)."""
    return _count("limit", limit, DEFAULT_LIMIT), _count("offset", offset, 0)
