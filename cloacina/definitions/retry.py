"""Retry policy of a task: how many retries, how long to wait between them, and which errors qualify.

``max_retries`` counts retries after the first attempt, so ``RetryPolicy(max_retries=3)`` allows 4 attempts.
The default is 3 retries, exponential backoff from 1 s, capped at 60 s, with ±25% jitter, retrying any error.

>>> RetryPolicy(backoff="fixed", initial_delay_ms=200, jitter=False).delay_ms(attempt=3)
200
>>> RetryPolicy(backoff="exponential", initial_delay_ms=100, jitter=False).delay_ms(attempt=3)
400
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cloacina.errors import DefinitionError, PermanentError, TaskTimeoutError, TransientError

Backoff = Literal["fixed", "linear", "exponential"]
RetryCondition = Literal["never", "transient", "all"]

BACKOFFS: tuple[str, ...] = ("fixed", "linear", "exponential")
CONDITIONS: tuple[str, ...] = ("never", "transient", "all")
JITTER_FRACTION = 0.25

#: Errors that "transient" retries: ours, plus the standard library's timeouts and connection failures.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    TaskTimeoutError,
    TimeoutError,
    ConnectionError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed task attempt is retried."""

    max_retries: int = 3
    backoff: Backoff = "exponential"
    initial_delay_ms: int = 1000
    max_delay_ms: int = 60_000
    condition: RetryCondition = "all"
    jitter: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise DefinitionError(f"retry_attempts must be an integer >= 0, got {self.max_retries!r}")
        if self.backoff not in BACKOFFS:
            raise DefinitionError(f"retry_backoff must be one of {BACKOFFS}, got {self.backoff!r}")
        if self.condition not in CONDITIONS:
            raise DefinitionError(f"retry_condition must be one of {CONDITIONS}, got {self.condition!r}")
        for name, option in (("initial_delay_ms", "retry_delay_ms"), ("max_delay_ms", "retry_max_delay_ms")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DefinitionError(f"{option} must be an integer >= 0, got {value!r}")
        if self.max_delay_ms < self.initial_delay_ms:
            raise DefinitionError(
                f"retry_max_delay_ms ({self.max_delay_ms}) is below retry_delay_ms ({self.initial_delay_ms})"
            )
        if not isinstance(self.jitter, bool):
            raise DefinitionError(f"retry_jitter must be a bool, got {self.jitter!r}")

    @property
    def max_attempts(self) -> int:
        """Total attempts allowed, the first one included."""
        return 1 + (0 if self.condition == "never" else self.max_retries)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether the failure of attempt number ``attempt`` (1-based) earns another attempt."""
        if attempt >= self.max_attempts or self.condition == "never" or isinstance(error, PermanentError):
            return False
        if self.condition == "transient":
            return isinstance(error, TRANSIENT_ERRORS)
        return True

    def should_retry_kind(self, error_kind: str, attempt: int) -> bool:
        """Like :meth:`should_retry` for a recorded failure kind: ``transient``, ``permanent`` or ``error``."""
        if attempt >= self.max_attempts or self.condition == "never" or error_kind == "permanent":
            return False
        if self.condition == "transient":
            return error_kind == "transient"
        return True

    def delay_ms(self, attempt: int, rng: random.Random | None = None) -> int:
        """Milliseconds to wait before the attempt after ``attempt`` (1-based), jitter included."""
        n = max(1, attempt)
        if self.backoff == "fixed":
            base = self.initial_delay_ms
        elif self.backoff == "linear":
            base = self.initial_delay_ms * n
        else:
            base = self.initial_delay_ms * (2 ** min(n - 1, 62))
        base = min(base, self.max_delay_ms)
        if self.jitter and base > 0:
            spread = base * JITTER_FRACTION
            base = round(base + (rng or random).uniform(-spread, spread))
            base = min(max(base, 0), self.max_delay_ms)
        return int(base)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(**data)


def classify_error(error: BaseException) -> str:
    """Reduce an exception to the failure kind stored with an attempt: transient, permanent or error."""
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TRANSIENT_ERRORS):
        return "transient"
    return "error"
