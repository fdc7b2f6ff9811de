"""Contract §4: ``RetryPolicy``, ``RetryPolicyBuilder``, ``BackoffStrategy``, ``RetryCondition`` as cloaca has them,
and ``@task(retry=policy)`` (§3) taking a built policy. Written from ``CLOACA_API.md`` §4."""

from __future__ import annotations

import math

import pytest

import cloacina as cloaca
from cloacina import BackoffStrategy, RetryCondition, RetryPolicy, RetryPolicyBuilder


# -- RetryPolicy ---------------------------------------------------------------------------------------------
def test_default_policy() -> None:
    policy = RetryPolicy.default()
    assert policy.max_attempts == 3
    assert policy.initial_delay == 1.0 and policy.max_delay == 60.0
    assert isinstance(policy.initial_delay, float) and isinstance(policy.max_delay, float)
    assert policy.with_jitter is True
    # exponential, base 2, multiplier 1: 1 s, 2 s, 4 s before jitter
    plain = RetryPolicy.builder().with_jitter(False).build()
    assert [plain.calculate_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert repr(policy) == "RetryPolicy(max_attempts=3, initial_delay=1s, max_delay=60s, jitter=true)"


def test_builder_starts_from_the_defaults() -> None:
    built = RetryPolicy.builder().build()
    assert (built.max_attempts, built.initial_delay, built.max_delay, built.with_jitter) == (3, 1.0, 60.0, True)


def test_properties_are_read_only() -> None:
    policy = RetryPolicy.default()
    for name, value in (("max_attempts", 9), ("initial_delay", 2.0), ("max_delay", 3.0), ("with_jitter", False)):
        with pytest.raises(AttributeError):
            setattr(policy, name, value)
    assert policy.max_attempts == 3


def test_should_retry_compares_the_attempt_with_max_attempts_only() -> None:
    policy = RetryPolicy.builder().max_attempts(3).retry_condition(RetryCondition.never()).build()
    assert [policy.should_retry(a, "ValueError") for a in (0, 1, 2, 3, 4)] == [True, True, True, False, False]
    assert policy.should_retry(attempt=1, _error_type="anything") is True  # keyword names are contract


def test_calculate_delay_is_seconds_with_jitter_between_75_and_125_percent() -> None:
    policy = RetryPolicy.builder().initial_delay(2.0).backoff_strategy(BackoffStrategy.fixed()).build()
    delays = {policy.calculate_delay(1) for _ in range(200)}
    assert all(isinstance(d, float) and 1.5 <= d <= 2.5 for d in delays)
    assert len(delays) > 1
    assert policy.calculate_delay(attempt=1) >= 1.5


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (BackoffStrategy.fixed(), [0.5, 0.5, 0.5, 0.5]),
        (BackoffStrategy.linear(1.0), [0.5, 1.0, 1.5, 2.0]),
        (BackoffStrategy.linear(3.0), [1.5, 3.0, 4.5, 6.0]),
        (BackoffStrategy.exponential(2.0), [0.5, 1.0, 2.0, 4.0]),
        (BackoffStrategy.exponential(3.0, 2.0), [1.0, 3.0, 9.0, 27.0]),
        (BackoffStrategy.exponential(base=2.0, multiplier=None), [0.5, 1.0, 2.0, 4.0]),
    ],
    ids=repr,
)
def test_backoff_formulas(strategy: BackoffStrategy, expected: list[float]) -> None:
    policy = RetryPolicy.builder().initial_delay(0.5).backoff_strategy(strategy).with_jitter(False).build()
    assert [policy.calculate_delay(n) for n in (1, 2, 3, 4)] == pytest.approx(expected)


def test_the_cap_applies_before_jitter() -> None:
    capped = RetryPolicy.builder().initial_delay(10).max_delay(15).with_jitter(False).build()
    assert [capped.calculate_delay(n) for n in (1, 2, 3)] == [10.0, 15.0, 15.0]
    jittered = RetryPolicy.builder().initial_delay(10).max_delay(15).build()
    delays = [jittered.calculate_delay(5) for _ in range(300)]
    assert all(11.25 <= d <= 18.75 for d in delays) and max(delays) > 15.0


# -- RetryPolicyBuilder ---------------------------------------------------------------------------------------
def test_every_builder_method_returns_a_new_builder() -> None:
    base = RetryPolicy.builder()
    steps = [
        base.max_attempts(5),
        base.initial_delay(0.25),
        base.max_delay(30.0),
        base.backoff_strategy(BackoffStrategy.linear(2.0)),
        base.retry_condition(RetryCondition.transient_only()),
        base.with_jitter(False),
    ]
    for step in steps:
        assert isinstance(step, RetryPolicyBuilder) and step is not base
    assert base.build() == RetryPolicy.default()  # the base builder never changed
    built = (
        RetryPolicy.builder()
        .max_attempts(5)
        .initial_delay(delay_seconds=0.25)
        .max_delay(delay_seconds=30.0)
        .with_jitter(jitter=False)
        .build()
    )
    assert (built.max_attempts, built.initial_delay, built.max_delay, built.with_jitter) == (5, 0.25, 30.0, False)
    assert repr(built) == "RetryPolicy(max_attempts=5, initial_delay=0.25s, max_delay=30s, jitter=false)"


def test_retry_condition_replaces_the_previous_one() -> None:
    policy = (
        RetryPolicy.builder()
        .retry_condition(RetryCondition.never())
        .retry_condition(RetryCondition.error_pattern(["deadlock"]))
        .build()
    )
    assert policy.condition == RetryCondition.error_pattern(["deadlock"])


def test_classes_without_a_constructor() -> None:
    with pytest.raises(TypeError):
        RetryPolicyBuilder()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda b: b.max_attempts("3"), TypeError),
        (lambda b: b.max_attempts(2.5), TypeError),
        (lambda b: b.initial_delay("1s"), TypeError),
        (lambda b: b.initial_delay(-1.0), ValueError),
        (lambda b: b.max_delay(math.inf), ValueError),
        (lambda b: b.backoff_strategy("exponential"), TypeError),
        (lambda b: b.retry_condition("all"), TypeError),
        (lambda b: b.with_jitter("yes"), TypeError),
    ],
)
def test_bad_builder_arguments(call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(RetryPolicy.builder())


def test_bad_arguments_to_the_policy_methods() -> None:
    policy = RetryPolicy.default()
    with pytest.raises(TypeError):
        policy.should_retry("1", "x")
    with pytest.raises(TypeError):
        policy.should_retry(1, None)
    with pytest.raises(TypeError):
        policy.calculate_delay(1.5)


# -- BackoffStrategy and RetryCondition -------------------------------------------------------------------------
def test_backoff_reprs() -> None:
    assert repr(BackoffStrategy.fixed()) == "BackoffStrategy.Fixed"
    assert repr(BackoffStrategy.linear(1.5)) == "BackoffStrategy.Linear(multiplier=1.5)"
    assert repr(BackoffStrategy.exponential(2.0)) == "BackoffStrategy.Exponential(base=2, multiplier=1)"
    assert repr(BackoffStrategy.exponential(2.0, 1.5)) == "BackoffStrategy.Exponential(base=2, multiplier=1.5)"


def test_condition_reprs() -> None:
    assert repr(RetryCondition.never()) == "RetryCondition.Never"
    assert repr(RetryCondition.transient_only()) == "RetryCondition.TransientOnly"
    assert repr(RetryCondition.all_errors()) == "RetryCondition.AllErrors"
    assert repr(RetryCondition.error_pattern(["timeout", "conn"])) == (
        'RetryCondition.ErrorPattern(patterns=["timeout", "conn"])'
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: BackoffStrategy.linear("2"), TypeError),
        (lambda: BackoffStrategy.exponential(None), TypeError),
        (lambda: BackoffStrategy.exponential(2.0, "x"), TypeError),
        (lambda: BackoffStrategy.linear(math.nan), ValueError),
        (lambda: RetryCondition.error_pattern("timeout"), TypeError),
        (lambda: RetryCondition.error_pattern([1, 2]), TypeError),
    ],
)
def test_bad_value_object_arguments(call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_module_exports() -> None:
    for name in ("RetryPolicy", "RetryPolicyBuilder", "BackoffStrategy", "RetryCondition"):
        assert name in cloaca.__all__ and getattr(cloaca, name) is not None


# -- the policy on a task (§3 retry=) ----------------------------------------------------------------------------
def test_task_takes_a_built_policy() -> None:
    policy = RetryPolicy.builder().max_attempts(5).backoff_strategy(BackoffStrategy.fixed()).build()
    with cloaca.WorkflowBuilder("policy_wf"):

        @cloaca.task(id="t", retry=policy)
        def t(ctx):
            return ctx

    assert t.__cloacina_task__.retry is policy
