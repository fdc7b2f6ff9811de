"""Retry policy of a task: cloaca's ``RetryPolicy``, ``RetryPolicyBuilder``, ``BackoffStrategy``, ``RetryCondition``.

``max_attempts`` counts **every** attempt, the first included: ``RetryPolicy.builder().max_attempts(3)`` (or
``@task(retry_attempts=3)``) runs a failing task at most three times. The default: 3 attempts, exponential
backoff (base 2, multiplier 1) from 1 s, capped at 60 s, jitter, any error.

The delay after attempt *n* failed: fixed *d*, linear *d·n·multiplier*, exponential *d·multiplier·base^(n-1)*
(whole milliseconds), then capped at ``max_delay``, then multiplied by a uniform factor in [0.75, 1.25] when
jitter is on (so jitter may exceed the cap, as in cloaca).

>>> policy = RetryPolicy.builder().initial_delay(0.1).with_jitter(False).build()
>>> [policy.calculate_delay(n) for n in (1, 2, 3)]
[0.1, 0.2, 0.4]
>>> policy
RetryPolicy(max_attempts=3, initial_delay=0.1s, max_delay=60s, jitter=false)
>>> RetryPolicy.default().should_retry(2, "any"), RetryPolicy.default().should_retry(3, "any")
(True, False)

A failure is **transient** when its lower-cased message (``"Python task execution failed: <Type>: <text>"``)
contains ``timeout``, ``connection``, ``network``, ``temporary`` or ``unavailable``; a task timeout is transient
too. Our own extensions: ``cloacina.TransientError`` is transient, ``cloacina.PermanentError`` is never retried.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from cloacina.errors import PermanentError, TaskTimeoutError, TransientError

TRANSIENT_WORDS: tuple[str, ...] = ("timeout", "connection", "network", "temporary", "unavailable")
JITTER_RANGE: tuple[float, float] = (0.75, 1.25)
_U64_MAX = 2**64 - 1
BackoffKind = Literal["Fixed", "Linear", "Exponential"]
ConditionKind = Literal["Never", "TransientOnly", "AllErrors", "ErrorPattern"]
FailureKind = Literal["transient", "permanent", "error"]


# -- argument checks (cloaca's bindings reject wrong types with TypeError) -------------------------------------
def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _finite(value: object, what: str) -> float:
    number = _number(value, what)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def _seconds(value: object, what: str) -> float:
    seconds = _finite(value, what)
    if seconds < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    return seconds


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def _rust_float(value: float) -> str:
    """A float as Rust's ``Display`` prints it (``1`` not ``1.0``, never an exponent): the reprs follow cloaca."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == int(value):
        return str(int(value))
    return format(Decimal(repr(value)), "f")


# -- value objects -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackoffStrategy:
    """How the delay grows from one retry to the next. Build with :meth:`fixed`, :meth:`linear`, :meth:`exponential`."""

    kind: BackoffKind = "Exponential"
    base: float = 2.0
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("Fixed", "Linear", "Exponential"):
            raise ValueError(f"unknown backoff kind {self.kind!r}")
        object.__setattr__(self, "base", _finite(self.base, "base"))
        object.__setattr__(self, "multiplier", _finite(self.multiplier, "multiplier"))

    @staticmethod
    def fixed() -> BackoffStrategy:
        """The same delay before every retry."""
        return BackoffStrategy("Fixed")

    @staticmethod
    def linear(multiplier: float) -> BackoffStrategy:
        """``initial_delay * attempt * multiplier``."""
        return BackoffStrategy("Linear", multiplier=_finite(multiplier, "multiplier"))

    @staticmethod
    def exponential(base: float, multiplier: float | None = None) -> BackoffStrategy:
        """``initial_delay * multiplier * base ** (attempt - 1)``; ``multiplier`` defaults to 1.0."""
        factor = 1.0 if multiplier is None else _finite(multiplier, "multiplier")
        return BackoffStrategy("Exponential", base=_finite(base, "base"), multiplier=factor)

    @staticmethod
    def named(name: str) -> BackoffStrategy:
        """The strategy of ``@task(retry_backoff=name)``: fixed, linear or exponential; other names mean fixed."""
        if not isinstance(name, str):
            raise TypeError(f"retry_backoff must be a str, got {type(name).__name__}")
        if name == "linear":
            return BackoffStrategy("Linear")
        if name == "exponential":
            return BackoffStrategy("Exponential")
        return BackoffStrategy("Fixed")

    def base_delay_s(self, initial_s: float, attempt: int) -> float:
        """The delay after ``attempt`` failed, before the cap and jitter."""
        if self.kind == "Fixed":
            return initial_s
        initial_ms = _duration_ms(initial_s)
        if self.kind == "Linear":
            return _saturated_ms(initial_ms * attempt * self.multiplier) / 1000
        return _saturated_ms(initial_ms * self.multiplier * _power(self.base, attempt - 1)) / 1000

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "Fixed":
            return {"type": "Fixed"}
        if self.kind == "Linear":
            return {"type": "Linear", "multiplier": self.multiplier}
        return {"type": "Exponential", "base": self.base, "multiplier": self.multiplier}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackoffStrategy:
        return cls(data["type"], base=data.get("base", 2.0), multiplier=data.get("multiplier", 1.0))

    def __repr__(self) -> str:
        if self.kind == "Fixed":
            return "BackoffStrategy.Fixed"
        if self.kind == "Linear":
            return f"BackoffStrategy.Linear(multiplier={_rust_float(self.multiplier)})"
        return f"BackoffStrategy.Exponential(base={_rust_float(self.base)}, multiplier={_rust_float(self.multiplier)})"


@dataclass(frozen=True)
class RetryCondition:
    """Which failures are retried. Build with :meth:`never`, :meth:`transient_only`, :meth:`all_errors`,
    :meth:`error_pattern`."""

    kind: ConditionKind = "AllErrors"
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("Never", "TransientOnly", "AllErrors", "ErrorPattern"):
            raise ValueError(f"unknown retry condition kind {self.kind!r}")
        object.__setattr__(self, "patterns", _patterns(self.patterns))

    @staticmethod
    def never() -> RetryCondition:
        return RetryCondition("Never")

    @staticmethod
    def transient_only() -> RetryCondition:
        return RetryCondition("TransientOnly")

    @staticmethod
    def all_errors() -> RetryCondition:
        return RetryCondition("AllErrors")

    @staticmethod
    def error_pattern(patterns: list[str]) -> RetryCondition:
        """Retry when the failure message contains one of ``patterns`` (case-insensitive)."""
        return RetryCondition("ErrorPattern", _patterns(patterns))

    @staticmethod
    def named(name: str) -> RetryCondition:
        """The condition of ``@task(retry_condition=name)``: never, transient or all; other names mean all."""
        if not isinstance(name, str):
            raise TypeError(f"retry_condition must be a str, got {type(name).__name__}")
        return {"never": RetryCondition("Never"), "transient": RetryCondition("TransientOnly")}.get(
            name, RetryCondition("AllErrors")
        )

    def matches(self, message: str, error: BaseException | None = None) -> bool:
        """Whether a failure with this message (and exception, when the task raised one) may be retried."""
        if self.kind == "Never":
            return False
        if self.kind == "AllErrors":
            return True
        if self.kind == "TransientOnly":
            return is_transient(message, error)
        lowered = message.lower()
        return any(pattern.lower() in lowered for pattern in self.patterns)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "ErrorPattern":
            return {"type": "ErrorPattern", "patterns": list(self.patterns)}
        return {"type": self.kind}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryCondition:
        return cls(data["type"], tuple(data.get("patterns", ())))

    def __repr__(self) -> str:
        if self.kind == "ErrorPattern":
            quoted = ", ".join(json.dumps(p, ensure_ascii=False) for p in self.patterns)
            return f"RetryCondition.ErrorPattern(patterns=[{quoted}])"
        return f"RetryCondition.{self.kind}"


def _patterns(patterns: object) -> tuple[str, ...]:
    if isinstance(patterns, str | bytes) or not isinstance(patterns, list | tuple):
        raise TypeError(f"patterns must be a list of str, got {type(patterns).__name__}")
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"patterns must be a list of str, got an item of type {type(pattern).__name__}")
    return tuple(patterns)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed task attempt is retried. ``RetryPolicy.default()`` / ``RetryPolicy.builder()`` are
    cloaca's way to get one; the keyword constructor is our extension (strings allowed for ``backoff`` and
    ``condition``, with the meaning of the ``@task`` keywords)."""

    max_attempts: int = 3
    backoff: BackoffStrategy = field(default_factory=BackoffStrategy)
    initial_delay: float = 1.0
    max_delay: float = 60.0
    with_jitter: bool = True
    condition: RetryCondition = field(default_factory=RetryCondition)

    def __post_init__(self) -> None:
        _integer(self.max_attempts, "max_attempts")
        object.__setattr__(self, "initial_delay", _seconds(self.initial_delay, "initial_delay"))
        object.__setattr__(self, "max_delay", _seconds(self.max_delay, "max_delay"))
        _flag(self.with_jitter, "with_jitter")
        backoff: object = self.backoff
        if isinstance(backoff, str):
            object.__setattr__(self, "backoff", BackoffStrategy.named(backoff))
        elif not isinstance(backoff, BackoffStrategy):
            raise TypeError(f"backoff must be a BackoffStrategy, got {type(backoff).__name__}")
        condition: object = self.condition
        if isinstance(condition, str):
            object.__setattr__(self, "condition", RetryCondition.named(condition))
        elif not isinstance(condition, RetryCondition):
            raise TypeError(f"condition must be a RetryCondition, got {type(condition).__name__}")

    # -- cloaca's API ---------------------------------------------------------------------------------------
    @staticmethod
    def default() -> RetryPolicy:
        """3 attempts, exponential (base 2, multiplier 1), 1 s initial delay, 60 s cap, jitter, all errors."""
        return RetryPolicy()

    @staticmethod
    def builder() -> RetryPolicyBuilder:
        """A builder starting from the defaults."""
        return RetryPolicyBuilder._start(RetryPolicy())

    def should_retry(self, attempt: int, _error_type: str) -> bool:
        """``attempt < max_attempts`` (the error type is ignored, as in cloaca)."""
        _integer(attempt, "attempt")
        if not isinstance(_error_type, str):
            raise TypeError(f"_error_type must be a str, got {type(_error_type).__name__}")
        return attempt < self.max_attempts

    def calculate_delay(self, attempt: int) -> float:
        """Seconds to wait after ``attempt`` failed, jitter included."""
        return self.retry_delay_s(_integer(attempt, "attempt"))

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, initial_delay={_rust_float(self.initial_delay)}s, "
            f"max_delay={_rust_float(self.max_delay)}s, jitter={'true' if self.with_jitter else 'false'})"
        )

    # -- the engine's view ------------------------------------------------------------------------------------
    @property
    def attempt_limit(self) -> int:
        """Attempts a task really gets: ``max_attempts``, and always at least the first one."""
        return max(1, self.max_attempts)

    def permits_retry(self, attempt: int, message: str, error: BaseException | None = None) -> bool:
        """Whether attempt ``attempt`` (1-based), which failed with ``message`` (and ``error``), earns another."""
        if attempt >= self.max_attempts or isinstance(error, PermanentError):
            return False
        return self.condition.matches(message, error)

    def retry_delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt`` failed: backoff, then the cap, then jitter."""
        delay_s = min(self.backoff.base_delay_s(self.initial_delay, attempt), self.max_delay)
        if not self.with_jitter:
            return delay_s
        factor = (rng or random).uniform(*JITTER_RANGE)
        return _saturated_ms(_duration_ms(delay_s) * factor) / 1000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored and hashed with the workflow)."""
        return {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff.to_dict(),
            "initial_delay_s": self.initial_delay,
            "max_delay_s": self.max_delay,
            "jitter": self.with_jitter,
            "condition": self.condition.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        return cls(
            max_attempts=data["max_attempts"],
            backoff=BackoffStrategy.from_dict(data["backoff"]),
            initial_delay=data["initial_delay_s"],
            max_delay=data["max_delay_s"],
            with_jitter=data["jitter"],
            condition=RetryCondition.from_dict(data["condition"]),
        )


class RetryPolicyBuilder:
    """Builds a :class:`RetryPolicy`; every method returns a **new** builder. Get one from ``RetryPolicy.builder()``.

    >>> base = RetryPolicy.builder()
    >>> five = base.max_attempts(5)
    >>> base.build().max_attempts, five.build().max_attempts
    (3, 5)
    """

    __slots__ = ("_policy",)
    _policy: RetryPolicy

    def __init__(self) -> None:
        raise TypeError("No constructor defined for RetryPolicyBuilder; use RetryPolicy.builder()")

    @classmethod
    def _start(cls, policy: RetryPolicy) -> RetryPolicyBuilder:
        builder = object.__new__(cls)
        object.__setattr__(builder, "_policy", policy)
        return builder

    def _with(self, **changes: Any) -> RetryPolicyBuilder:
        return RetryPolicyBuilder._start(dataclasses.replace(self._policy, **changes))

    def max_attempts(self, attempts: int) -> RetryPolicyBuilder:
        """Total attempts, the first included."""
        return self._with(max_attempts=_integer(attempts, "attempts"))

    def initial_delay(self, delay_seconds: float) -> RetryPolicyBuilder:
        return self._with(initial_delay=_seconds(delay_seconds, "delay_seconds"))

    def max_delay(self, delay_seconds: float) -> RetryPolicyBuilder:
        return self._with(max_delay=_seconds(delay_seconds, "delay_seconds"))

    def backoff_strategy(self, strategy: BackoffStrategy) -> RetryPolicyBuilder:
        if not isinstance(strategy, BackoffStrategy):
            raise TypeError(f"strategy must be a BackoffStrategy, got {type(strategy).__name__}")
        return self._with(backoff=strategy)

    def retry_condition(self, condition: RetryCondition) -> RetryPolicyBuilder:
        """Replaces the condition."""
        if not isinstance(condition, RetryCondition):
            raise TypeError(f"condition must be a RetryCondition, got {type(condition).__name__}")
        return self._with(condition=condition)

    def with_jitter(self, jitter: bool) -> RetryPolicyBuilder:
        return self._with(with_jitter=_flag(jitter, "jitter"))

    def build(self) -> RetryPolicy:
        return self._policy

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RetryPolicyBuilder is immutable; its methods return new builders")

    def __repr__(self) -> str:
        return f"RetryPolicyBuilder({self._policy!r})"


# -- failures ---------------------------------------------------------------------------------------------------
def is_transient(message: str, error: BaseException | None = None) -> bool:
    """Transient: the lower-cased failure message names a timeout, connection, network, temporary or unavailable
    condition, or the attempt timed out (plus our ``TransientError``)."""
    if isinstance(error, TransientError | TaskTimeoutError):
        return True
    lowered = message.lower()
    return any(word in lowered for word in TRANSIENT_WORDS)


def failure_kind(message: str, error: BaseException | None = None) -> FailureKind:
    """The kind stored with a failed attempt: ``permanent``, ``transient`` or ``error``."""
    if isinstance(error, PermanentError):
        return "permanent"
    return "transient" if is_transient(message, error) else "error"


# -- arithmetic as cloaca does it (std::time::Duration in whole milliseconds) ----------------------------------
def _duration_ms(seconds: float) -> int:
    """``Duration::from_secs_f64(seconds).as_millis()``: nanoseconds rounded, then whole milliseconds."""
    return min(round(seconds * 1e9) // 1_000_000, _U64_MAX)


def _saturated_ms(value: float) -> int:
    """A float millisecond count cast to ``u64`` the way Rust's ``as`` does (NaN → 0, saturating)."""
    if math.isnan(value) or value <= 0:
        return 0
    return _U64_MAX if value >= _U64_MAX else int(value)


def _power(base: float, exponent: int) -> float:
    try:
        return float(base**exponent)
    except OverflowError:
        return -math.inf if base < 0 and exponent % 2 else math.inf
    except ZeroDivisionError:
        return math.inf
