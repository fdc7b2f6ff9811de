"""Parse the duration strings the cloaca API accepts: ``"100ms"``, ``"5s"``, ``"1m"``, ``"1h"``.

>>> parse_duration_ms("100ms"), parse_duration_ms("5s"), parse_duration_ms("1m"), parse_duration_ms("1h")
(100, 5000, 60000, 3600000)
"""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_PATTERN = re.compile(r"^\s*([0-9]+)\s*(ms|s|m|h)\s*$")  # ASCII digits: \d would accept "\u0665s"


def parse_duration_ms(text: object, *, what: str = "duration", allow_zero: bool = False) -> int:
    """Return the duration in milliseconds; ``ValueError`` for anything but a positive ``<int><unit>``
    (surrounding spaces trimmed; zero accepted with ``allow_zero``, as a trigger's ``poll_interval="0s"``)."""
    if not isinstance(text, str):
        raise ValueError(f"Invalid {what}: expected a string like '5s', got {type(text).__name__} {text!r}")
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"Invalid {what}: {text!r} (use a whole number with ms, s, m or h, e.g. '100ms', '5s')")
    value = int(match.group(1)) * _UNITS_MS[match.group(2)]
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"Invalid {what}: {text!r} must be greater than zero")
    return value


def format_duration_ms(ms: int) -> str:
    """The shortest exact duration string for ``ms`` (inverse of :func:`parse_duration_ms`)."""
    for unit in ("h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
