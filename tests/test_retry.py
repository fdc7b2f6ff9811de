"""The engine's view of a RetryPolicy: our keyword constructor, retry decisions on failure messages, failure kinds,
delays with a seeded random source, and the JSON form stored with a workflow.

The cloaca surface (``RetryPolicy.default()``, the builder, ``BackoffStrategy``, ``RetryCondition``) is tested in
``test_compat_retry.py``.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloacina import PermanentError, RetryPolicy, TaskTimeoutError, TransientError
from cloacina.definitions.retry import JITTER_RANGE, BackoffStrategy, RetryCondition, failure_kind, is_transient

PREFIX = "Python task execution failed: "


# -- the keyword constructor (our extension) ---------------------------------------------------------------
def test_constructor_defaults_equal_the_cloaca_default() -> None:
    assert RetryPolicy() == RetryPolicy.default()
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay, policy.with_jitter) == (3, 1.0, 60.0, True)
    assert policy.backoff == BackoffStrategy.exponential(2.0) and policy.condition == RetryCondition.all_errors()
    assert JITTER_RANGE == (0.75, 1.25)


def test_constructor_takes_the_task_keyword_names_for_backoff_and_condition() -> None:
    policy = RetryPolicy(backoff="linear", condition="transient")
    assert policy.backoff == BackoffStrategy("Linear") and policy.condition == RetryCondition.transient_only()
    assert RetryPolicy(backoff="quadratic").backoff == BackoffStrategy.fixed()  # other names mean fixed
    assert RetryPolicy(condition="sometimes").condition == RetryCondition.all_errors()  # other names mean all


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 1.5}, TypeError),
        ({"max_attempts": "3"}, TypeError),
        ({"max_attempts": True}, TypeError),
        ({"initial_delay": -1}, ValueError),
        ({"initial_delay": math.nan}, ValueError),
        ({"max_delay": "60"}, TypeError),
        ({"with_jitter": 1}, TypeError),
        ({"backoff": 2}, TypeError),
        ({"condition": None}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)


def test_policy_is_immutable_and_a_value() -> None:
    policy = RetryPolicy(max_attempts=5)
    with pytest.raises(AttributeError):
        policy.max_attempts = 1  # type: ignore[misc]
    assert policy == RetryPolicy(max_attempts=5) and hash(policy) == hash(RetryPolicy(max_attempts=5))


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(),
        RetryPolicy(max_attempts=7, backoff="linear", initial_delay=0.005, max_delay=0.05, condition="transient"),
        RetryPolicy(backoff=BackoffStrategy.exponential(3.0, 0.5), condition=RetryCondition.error_pattern(["x"])),
        RetryPolicy(backoff=BackoffStrategy.linear(2.5), with_jitter=False, condition=RetryCondition.never()),
    ],
    ids=repr,
)
def test_json_round_trip(policy: RetryPolicy) -> None:
    data = json.loads(json.dumps(policy.to_dict(), allow_nan=False))
    assert RetryPolicy.from_dict(data) == policy


@pytest.mark.parametrize(("max_attempts", "limit"), [(3, 3), (1, 1), (0, 1), (-2, 1)])
def test_attempt_limit_is_at_least_the_first_attempt(max_attempts: int, limit: int) -> None:
    assert RetryPolicy(max_attempts=max_attempts).attempt_limit == limit


# -- decisions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        "TimeoutError: read timed out after 5s (timeout)",
        "ConnectionResetError: [Errno 104] Connection reset by peer",
        "URLError: <urlopen error [Errno 111] Connection refused>",
        "RuntimeError: NETWORK is down",
        "OSError: temporary failure in name resolution",
        "RuntimeError: service Unavailable",
    ],
)
def test_transient_by_the_words_of_the_message(message: str) -> None:
    assert is_transient(PREFIX + message)
    assert failure_kind(PREFIX + message) == "transient"
    assert RetryPolicy(condition="transient").permits_retry(1, PREFIX + message)


@pytest.mark.parametrize("message", ["ValueError: bad input", "RuntimeError: busy", "KeyError: 'rate limit'"])
def test_other_messages_are_not_transient(message: str) -> None:
    assert not is_transient(PREFIX + message)
    assert failure_kind(PREFIX + message) == "error"
    assert not RetryPolicy(condition="transient").permits_retry(1, PREFIX + message)
    assert RetryPolicy(condition="all").permits_retry(1, PREFIX + message)


def test_our_own_error_classes_are_extras() -> None:
    transient, timeout, permanent = TransientError("x"), TaskTimeoutError("t", 1.0), PermanentError("x")
    assert is_transient(PREFIX + "TransientError: x", transient)
    assert is_transient("task 't' ran too long", timeout)  # a timed-out attempt is transient whatever its text
    assert failure_kind(PREFIX + "PermanentError: x", permanent) == "permanent"
    for condition in ("all", "transient", "never"):
        assert not RetryPolicy(condition=condition).permits_retry(1, PREFIX + "PermanentError: timeout", permanent)


def test_retries_stop_at_max_attempts_and_under_never() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.permits_retry(a, "x") for a in (1, 2, 3, 4)] == [True, True, False, False]
    assert not RetryPolicy(max_attempts=0).permits_retry(1, "x")
    assert not RetryPolicy(max_attempts=5, condition="never").permits_retry(1, PREFIX + "TimeoutError: timeout")


def test_error_pattern_matches_the_message_case_insensitively() -> None:
    policy = RetryPolicy(condition=RetryCondition.error_pattern(["Deadlock", "quota"]))
    assert policy.permits_retry(1, PREFIX + "OperationalError: deadlock detected")
    assert policy.permits_retry(1, PREFIX + "RuntimeError: QUOTA exceeded")
    assert not policy.permits_retry(1, PREFIX + "RuntimeError: timeout")


# -- delays ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (BackoffStrategy.fixed(), [0.1, 0.1, 0.1, 0.1, 0.1]),
        (BackoffStrategy.linear(1.0), [0.1, 0.2, 0.3, 0.4, 0.5]),
        (BackoffStrategy.linear(2.0), [0.2, 0.4, 0.6, 0.8, 1.0]),
        (BackoffStrategy.exponential(2.0), [0.1, 0.2, 0.4, 0.8, 1.6]),
        (BackoffStrategy.exponential(3.0, 0.5), [0.05, 0.15, 0.45, 1.35, 4.05]),
    ],
    ids=repr,
)
def test_delay_without_jitter(backoff: BackoffStrategy, expected: list[float]) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=0.1, max_delay=10.0, with_jitter=False)
    assert [policy.retry_delay_s(n) for n in range(1, 6)] == pytest.approx(expected)


def test_delays_are_whole_milliseconds_except_a_fixed_delay() -> None:
    assert RetryPolicy(backoff="linear", initial_delay=0.0015, with_jitter=False).retry_delay_s(1) == 0.001
    assert RetryPolicy(backoff="fixed", initial_delay=0.0015, with_jitter=False).retry_delay_s(1) == 0.0015


@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
def test_delay_is_capped_before_jitter(backoff: str) -> None:
    plain = RetryPolicy(backoff=backoff, initial_delay=0.3, max_delay=1.0, with_jitter=False)
    delays = [plain.retry_delay_s(a) for a in range(1, 200)]
    assert max(delays) <= 1.0
    if backoff == "fixed":
        return
    assert delays[-1] == 1.0
    jittered = RetryPolicy(backoff=backoff, initial_delay=0.3, max_delay=1.0)
    # Jitter comes after the cap: a capped delay may come out up to 25% above the cap.
    assert any(jittered.retry_delay_s(199, random.Random(seed)) > 1.0 for seed in range(50))


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0, with_jitter=False)
    assert policy.retry_delay_s(100_000) == 60.0
    assert RetryPolicy(backoff=BackoffStrategy.exponential(0.5), with_jitter=False).retry_delay_s(100_000) == 0.0


def test_zero_delay_stays_zero_with_jitter() -> None:
    policy = RetryPolicy(initial_delay=0, max_delay=0)
    assert {policy.retry_delay_s(a, random.Random(a)) for a in range(1, 20)} == {0.0}


def test_jitter_is_deterministic_with_a_seeded_rng_and_varies() -> None:
    policy = RetryPolicy(backoff="fixed", initial_delay=10.0, max_delay=20.0)
    assert len({policy.retry_delay_s(1, random.Random(42)) for _ in range(3)}) == 1
    rng = random.Random(7)
    assert len({policy.retry_delay_s(1, rng) for _ in range(50)}) > 10


@given(
    seed=st.integers(0, 2**32),
    backoff=st.sampled_from(["fixed", "linear", "exponential"]),
    initial_ms=st.integers(0, 100_000),
    cap_ms=st.integers(0, 600_000),
    attempt=st.integers(1, 80),
)
def test_jitter_stays_within_25_percent_of_the_capped_delay(
    seed: int, backoff: str, initial_ms: int, cap_ms: int, attempt: int
) -> None:
    options = {"backoff": backoff, "initial_delay": initial_ms / 1000, "max_delay": cap_ms / 1000}
    base_ms = round(RetryPolicy(**options, with_jitter=False).retry_delay_s(attempt) * 1000)
    delay_ms = RetryPolicy(**options).retry_delay_s(attempt, random.Random(seed)) * 1000
    assert base_ms <= cap_ms
    assert math.floor(base_ms * 0.75) - 1e-6 <= delay_ms <= math.ceil(base_ms * 1.25) + 1e-6
    assert delay_ms == pytest.approx(round(delay_ms))  # whole milliseconds
