"""Validation of ``limit``/``offset`` arguments shared by the management APIs (triggers, cron).

>>> check_paging(100, 0)
>>> check_paging(0, 0)
Traceback (most recent call last):
...
ValueError: limit must be a positive integer, got 0
"""

from __future__ import annotations


def check_paging(limit: int, offset: int) -> None:
    """``ValueError`` unless ``limit`` is a positive integer and ``offset`` a non-negative one."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
