"""RetryPolicy: validation, attempt counting, which errors are retried, and backoff delays with jitter."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloacina import PermanentError, RetryPolicy, TaskTimeoutError, TransientError
from cloacina.definitions.retry import JITTER_FRACTION, classify_error


# -- validation ------------------------------------------------------------------------------------------
def test_default_policy() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == 3 and policy.max_attempts == 4
    assert policy.backoff == "exponential" and policy.initial_delay_ms == 1000 and policy.max_delay_ms == 60_000
    assert policy.condition == "all" and policy.jitter is True
    assert JITTER_FRACTION == 0.25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backoff": "quadratic"}, "retry_backoff"),
        ({"backoff": None}, "retry_backoff"),
        ({"condition": "sometimes"}, "retry_condition"),
        ({"condition": "Transient"}, "retry_condition"),
        ({"max_retries": -1}, "retry_attempts"),
        ({"max_retries": 1.5}, "retry_attempts"),
        ({"max_retries": True}, "retry_attempts"),
        ({"max_retries": "3"}, "retry_attempts"),
        ({"initial_delay_ms": -1}, "retry_delay_ms"),
        ({"initial_delay_ms": 10.5}, "retry_delay_ms"),
        ({"max_delay_ms": -1, "initial_delay_ms": 0}, "retry_max_delay_ms"),
        ({"max_delay_ms": False, "initial_delay_ms": 0}, "retry_max_delay_ms"),
        ({"initial_delay_ms": 500, "max_delay_ms": 100}, "below"),
        ({"jitter": "yes"}, "retry_jitter"),
        ({"jitter": 1}, "retry_jitter"),
    ],
)
def test_invalid_policy_raises_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)


def test_zero_values_are_valid_and_policy_is_immutable() -> None:
    policy = RetryPolicy(max_retries=0, initial_delay_ms=0, max_delay_ms=0)
    assert policy.max_attempts == 1
    with pytest.raises(AttributeError):
        policy.max_retries = 5  # type: ignore[misc]


def test_dict_round_trip() -> None:
    policy = RetryPolicy(max_retries=7, backoff="linear", initial_delay_ms=5, max_delay_ms=50, condition="transient")
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    assert policy.to_dict()["backoff"] == "linear"


# -- attempts and conditions -----------------------------------------------------------------------------
@pytest.mark.parametrize(("retries", "condition", "attempts"), [(0, "all", 1), (3, "all", 4), (5, "never", 1)])
def test_max_attempts(retries: int, condition: str, attempts: int) -> None:
    assert RetryPolicy(max_retries=retries, condition=condition).max_attempts == attempts  # type: ignore[arg-type]


TRANSIENT = [TransientError("x"), TaskTimeoutError("t", 1.0), TimeoutError(), ConnectionError(), ConnectionResetError()]
OTHER = [ValueError("x"), RuntimeError("x"), KeyError("x")]


@pytest.mark.parametrize("error", TRANSIENT + OTHER + [PermanentError("x")], ids=repr)
def test_condition_never_retries_nothing(error: BaseException) -> None:
    assert not RetryPolicy(condition="never", max_retries=5).should_retry(error, 1)


@pytest.mark.parametrize("error", TRANSIENT, ids=repr)
def test_transient_errors_are_retried_under_transient_and_all(error: BaseException) -> None:
    assert RetryPolicy(condition="transient").should_retry(error, 1)
    assert RetryPolicy(condition="all").should_retry(error, 1)
    assert classify_error(error) == "transient"


@pytest.mark.parametrize("error", OTHER, ids=repr)
def test_other_errors_are_retried_only_under_all(error: BaseException) -> None:
    assert not RetryPolicy(condition="transient").should_retry(error, 1)
    assert RetryPolicy(condition="all").should_retry(error, 1)
    assert classify_error(error) == "error"


@pytest.mark.parametrize("condition", ["never", "transient", "all"])
def test_permanent_error_is_never_retried(condition: str) -> None:
    class MyPermanent(PermanentError):
        pass

    policy = RetryPolicy(condition=condition, max_retries=10)  # type: ignore[arg-type]
    for error in (PermanentError("no"), MyPermanent("no")):
        assert not policy.should_retry(error, 1)
        assert classify_error(error) == "permanent"
    assert not policy.should_retry_kind("permanent", 1)


def test_should_retry_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.should_retry(RuntimeError(), a) for a in (1, 2, 3, 4)] == [True, True, False, False]
    assert [policy.should_retry_kind("error", a) for a in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize(
    ("condition", "kind", "expected"),
    [
        ("all", "error", True),
        ("all", "transient", True),
        ("transient", "transient", True),
        ("transient", "error", False),
        ("never", "transient", False),
        ("all", "permanent", False),
    ],
)
def test_should_retry_kind_matches_should_retry(condition: str, kind: str, expected: bool) -> None:
    policy = RetryPolicy(condition=condition)  # type: ignore[arg-type]
    assert policy.should_retry_kind(kind, 1) is expected
    sample = {"error": RuntimeError(), "transient": TransientError(), "permanent": PermanentError()}[kind]
    assert policy.should_retry(sample, 1) is expected


# -- delays ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("fixed", [100, 100, 100, 100, 100]),
        ("linear", [100, 200, 300, 400, 500]),
        ("exponential", [100, 200, 400, 800, 1600]),
    ],
)
def test_delay_without_jitter(backoff: str, expected: list[int]) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay_ms=100, max_delay_ms=10_000, jitter=False)  # type: ignore[arg-type]
    assert [policy.delay_ms(a) for a in range(1, 6)] == expected


@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
def test_delay_is_capped_at_max_delay(backoff: str) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay_ms=300, max_delay_ms=1000, jitter=False)  # type: ignore[arg-type]
    delays = [policy.delay_ms(a) for a in range(1, 200)]
    assert max(delays) <= 1000
    if backoff != "fixed":
        assert delays[-1] == 1000


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, max_delay_ms=60_000, jitter=False)
    assert policy.delay_ms(10_000) == 60_000
    assert policy.delay_ms(0) == policy.delay_ms(1) == 1000  # attempt numbers below 1 act as the first


def test_zero_delay_stays_zero_with_jitter() -> None:
    policy = RetryPolicy(initial_delay_ms=0, max_delay_ms=0)
    assert {policy.delay_ms(a, random.Random(a)) for a in range(1, 20)} == {0}


def test_jitter_is_deterministic_with_a_seeded_rng_and_varies() -> None:
    policy = RetryPolicy(backoff="fixed", initial_delay_ms=10_000, max_delay_ms=10_000 * 2)
    first = [policy.delay_ms(1, random.Random(42)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(7)
    assert len({policy.delay_ms(1, rng) for _ in range(50)}) > 10


@given(
    seed=st.integers(0, 2**32),
    backoff=st.sampled_from(["fixed", "linear", "exponential"]),
    initial=st.integers(0, 100_000),
    extra=st.integers(0, 500_000),
    attempt=st.integers(1, 80),
)
def test_jitter_stays_within_25_percent_and_the_cap(
    seed: int, backoff: str, initial: int, extra: int, attempt: int
) -> None:
    cap = initial + extra
    plain = RetryPolicy(backoff=backoff, initial_delay_ms=initial, max_delay_ms=cap, jitter=False)  # type: ignore[arg-type]
    jittered = RetryPolicy(backoff=backoff, initial_delay_ms=initial, max_delay_ms=cap, jitter=True)  # type: ignore[arg-type]
    base = plain.delay_ms(attempt)
    delay = jittered.delay_ms(attempt, random.Random(seed))
    assert isinstance(delay, int)
    assert 0 <= delay <= cap
    assert math.floor(base * 0.75) <= delay <= math.ceil(base * 1.25)
