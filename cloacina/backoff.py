"""Exponential backoff: the delays between tries of anything that waits for a dependency to come back.

>>> [Backoff(initial_s=0.5, max_s=10.0).delay(n) for n in range(7)]
[0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
>>> list(Backoff(initial_s=0.05, max_s=0.2).delays(4))
[0.05, 0.1, 0.2, 0.2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay ``initial_s * factor**attempt`` seconds before try ``attempt + 1``, never more than ``max_s``."""

    initial_s: float
    max_s: float
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """The delay after ``attempt`` failed tries (0 for the first wait)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # Cap the exponent so a long outage never overflows a float.
        return float(min(self.max_s, self.initial_s * self.factor ** min(attempt, 64)))

    def delays(self, count: int | None = None) -> Iterator[float]:
        """The successive delays, ``count`` of them (or without end)."""
        attempt = 0
        while count is None or attempt < count:
            yield self.delay(attempt)
            attempt += 1
