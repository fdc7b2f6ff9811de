"""CLOACA_API §7 and the decorator rows of §16: ``trigger(name=, on=, poll_interval=, cron=, timezone=,
allow_concurrent=)`` next to the older ``trigger(workflow=...)``/``trigger("wf")`` form, ``TriggerResult``,
``TriggerDecorator``/``TaskDecorator``, poll results, the fired run's context, and ``cron=`` triggers as cron
schedules (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest

import cloacina as cloaca
from cloacina.definitions import registry
from tests.support import wait_until

# -- the decorator ----------------------------------------------------------------------------------------------


def _definition(name: str) -> Any:
    found = registry.get_trigger(name)
    assert found is not None, name
    return found


def test_trigger_returns_a_trigger_decorator_that_returns_the_function_itself() -> None:
    decorator = cloaca.trigger(on="wf", poll_interval="1s")
    assert isinstance(decorator, cloaca.TriggerDecorator)

    def check_inbox() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.skip()

    assert decorator(check_inbox) is check_inbox
    assert check_inbox().is_skip_result()  # still callable
    definition = _definition("check_inbox")  # name defaults to the function's __name__
    assert (definition.workflow, definition.poll_interval_ms, definition.allow_concurrent) == ("wf", 1000, False)


def test_decorator_classes_have_no_constructor() -> None:
    with pytest.raises(TypeError):
        cloaca.TriggerDecorator()
    with pytest.raises(TypeError):
        cloaca.TaskDecorator()
    task_decorator = cloaca.task(id="standalone_t")
    assert isinstance(task_decorator, cloaca.TaskDecorator)

    def body(ctx: Any) -> Any:
        return ctx

    assert task_decorator(body) is body


def test_keyword_form_with_every_option() -> None:
    @cloaca.trigger(name="custom", on="wf", poll_interval="250ms", allow_concurrent=True)
    def poll() -> bool:
        return False

    definition = _definition("custom")
    assert (definition.workflow, definition.poll_interval_ms, definition.allow_concurrent) == ("wf", 250, True)
    assert definition.cron is None and registry.get_trigger("poll") is None


@pytest.mark.parametrize(
    ("kwargs", "interval_ms"),
    [
        ({"on": "wf"}, 30_000),  # today's default
        ({}, 30_000),  # a poll trigger without `on` (bound by a package)
        ({"workflow": "wf"}, 5_000),  # the older documented form and its default
        ({"workflow": "wf", "on": "wf"}, 5_000),
        ({"on": "wf", "poll_interval": "5s"}, 5_000),
    ],
)
def test_default_poll_interval(kwargs: dict[str, Any], interval_ms: int) -> None:
    cloaca.trigger(name="t", **kwargs)(lambda: False)
    assert _definition("t").poll_interval_ms == interval_ms


def test_older_positional_form() -> None:
    @cloaca.trigger("legacy_wf")
    def legacy() -> bool:
        return False

    @cloaca.trigger("legacy_wf", poll_interval="2s", name="named")
    def other() -> bool:
        return False

    assert (_definition("legacy").workflow, _definition("legacy").poll_interval_ms) == ("legacy_wf", 5000)
    assert (_definition("named").workflow, _definition("named").poll_interval_ms) == ("legacy_wf", 2000)


def test_workflow_and_on_naming_different_workflows_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="on"):
        cloaca.trigger(workflow="a", on="b")
    with pytest.raises(ValueError):
        cloaca.trigger("a", on="b")


@pytest.mark.parametrize(
    ("text", "ms"),
    [("100ms", 100), ("5s", 5000), ("1m", 60_000), ("2h", 7_200_000), (" 30s ", 30_000), ("0s", 10), ("3ms", 10)],
)
def test_poll_interval_format(text: str, ms: int) -> None:
    """A zero interval is allowed; polling never runs tighter than every 10 ms."""
    cloaca.trigger(name="t", on="wf", poll_interval=text)(lambda: False)
    assert _definition("t").poll_interval_ms == ms


@pytest.mark.parametrize("bad", ["", "5", "s", "5x", "5 sec", "1.5s", "-1s", "5d", "ms5", "5S", "five s"])
def test_bad_poll_interval_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        cloaca.trigger(on="wf", poll_interval=bad)
    assert registry.all_triggers() == []


def test_wrong_argument_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        cloaca.trigger(on="wf", poll_interval=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.trigger(on=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.trigger(on="wf", cron=5)  # type: ignore[arg-type]


def test_cron_trigger_options() -> None:
    @cloaca.trigger(on="wf", cron="0 2 * * *")
    def nightly() -> None:
        raise AssertionError("a cron trigger's body is never called")

    @cloaca.trigger(name="seconds", on="wf", cron="*/10 * * * * *", timezone="Europe/Berlin")
    def with_seconds() -> None:
        raise AssertionError("never called")

    assert (_definition("nightly").cron, _definition("nightly").timezone) == ("0 2 * * *", "UTC")
    assert (_definition("seconds").cron, _definition("seconds").timezone) == ("*/10 * * * * *", "Europe/Berlin")
    assert [t.name for t in registry.cron_triggers()] == ["nightly", "seconds"]
    assert registry.triggers() == []  # cron triggers are not polled


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on": "wf", "cron": "0 2 * * *", "poll_interval": "5s"}, "poll_interval"),
        ({"cron": "0 2 * * *"}, "on"),
        ({"on": "wf", "cron": "0 2 * *"}, "cron"),
        ({"on": "wf", "cron": "0 0 2 * * * *"}, "cron"),
        ({"on": "wf", "cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ],
)
def test_bad_cron_triggers_are_value_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cloaca.trigger(**kwargs)


def test_older_form_with_cron() -> None:
    cloaca.trigger(workflow="wf", cron="0 2 * * *", name="legacy_cron")(lambda: None)
    assert (_definition("legacy_cron").workflow, _definition("legacy_cron").cron) == ("wf", "0 2 * * *")


# -- TriggerResult ---------------------------------------------------------------------------------------------


def test_trigger_result_values_and_reprs() -> None:
    skip = cloaca.TriggerResult.skip()
    assert skip.is_skip_result() and not skip.is_fire_result()
    assert repr(skip) == "TriggerResult.Skip"
    empty = cloaca.TriggerResult.fire()
    assert empty.is_fire_result() and not empty.is_skip_result()
    assert repr(empty) == "TriggerResult.Fire(None)" == repr(cloaca.TriggerResult.fire(None))
    full = cloaca.TriggerResult.fire(context=cloaca.Context({"k": 1}))
    assert full.is_fire_result() and repr(full) == "TriggerResult.Fire(<context>)"
    with pytest.raises(TypeError):
        cloaca.TriggerResult.fire(42)  # type: ignore[arg-type]


# -- polling and fired runs, end to end -----------------------------------------------------------------------------


def _collecting_workflow(name: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    with cloaca.WorkflowBuilder(name):

        @cloaca.task(id="collect")
        def collect(ctx: cloaca.Context) -> cloaca.Context:
            with lock:
                seen.append(ctx.to_dict())
            return ctx

    return seen


def _rfc3339_utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0) and text.endswith("+00:00"), text
    return parsed


def test_fired_runs_get_the_fire_context_plus_trigger_name_and_time(make_runner: Any) -> None:
    seen = _collecting_workflow("fired_wf")
    fires = iter(range(1_000_000))

    @cloaca.trigger(on="fired_wf", poll_interval="100ms", allow_concurrent=True)
    def with_context() -> cloaca.TriggerResult:
        n = next(fires)
        return cloaca.TriggerResult.fire(cloaca.Context({"n": n})) if n < 3 else cloaca.TriggerResult.skip()

    once = threading.Event()

    @cloaca.trigger(on="fired_wf", poll_interval="100ms")
    def boolean() -> bool:
        if once.is_set():
            return False
        once.set()
        return True  # fire without context

    make_runner()
    wait_until(lambda: any(s["trigger_name"] == "boolean" for s in seen), 20, message="a run fired by True")
    wait_until(lambda: any(s["trigger_name"] == "with_context" for s in seen), 20, message="a run with context")
    by_bool = next(s for s in seen if s["trigger_name"] == "boolean")
    assert set(by_bool) == {"trigger_name", "triggered_at"}
    _rfc3339_utc(by_bool["triggered_at"])
    by_ctx = next(s for s in seen if s["trigger_name"] == "with_context")
    assert set(by_ctx) == {"n", "trigger_name", "triggered_at"}
    _rfc3339_utc(by_ctx["triggered_at"])


def test_a_raise_or_another_return_is_a_poll_error_and_polling_goes_on(
    make_runner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen = _collecting_workflow("flaky_wf")
    results: list[Any] = [RuntimeError("inbox unreachable"), None, "yes", 1, cloaca.TriggerResult.skip(), False]
    lock = threading.Lock()

    @cloaca.trigger(on="flaky_wf", poll_interval="100ms")
    def flaky() -> Any:
        with lock:
            outcome = results.pop(0) if results else cloaca.TriggerResult.fire({"finally": True})
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with caplog.at_level(logging.WARNING, logger="cloacina"):
        runner = make_runner()
        wait_until(lambda: seen, 30, message="a run after the bad polls")
    assert seen[0]["finally"] is True and seen[0]["trigger_name"] == "flaky"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "flaky" in messages and "inbox unreachable" in messages
    assert runner.get_trigger_schedule("flaky") is not None


@pytest.mark.timeout(60)
def test_a_zero_poll_interval_polls_often_and_the_runner_still_stops(make_runner: Any) -> None:
    seen = _collecting_workflow("zero_wf")
    polls: list[int] = []

    @cloaca.trigger(on="zero_wf", poll_interval="0s")
    def eager() -> bool:
        polls.append(1)
        return len(polls) == 3

    runner = make_runner()
    wait_until(lambda: seen and len(polls) > 10, 20, message="a fire and more polls")
    runner.shutdown()


def test_the_older_form_is_polled_too(make_runner: Any) -> None:
    seen = _collecting_workflow("legacy_poll_wf")

    @cloaca.trigger("legacy_poll_wf", poll_interval="100ms")
    def legacy_positional() -> bool:
        return not any(s["trigger_name"] == "legacy_positional" for s in seen)

    @cloaca.trigger(workflow="legacy_poll_wf", poll_interval="100ms")
    def legacy_keyword() -> bool:
        return not any(s["trigger_name"] == "legacy_keyword" for s in seen)

    make_runner()
    wait_until(lambda: {s["trigger_name"] for s in seen} == {"legacy_positional", "legacy_keyword"}, 20)


# -- cron= triggers are cron schedules --------------------------------------------------------------------------


def test_a_cron_trigger_is_registered_once_as_a_cron_schedule_of_its_workflow(durable_backend: Any) -> None:
    _collecting_workflow("cron_trigger_wf")
    called: list[int] = []

    @cloaca.trigger(on="cron_trigger_wf", cron="30 4 * * *", timezone="America/New_York")
    def early() -> None:
        called.append(1)

    config = cloaca.DefaultRunnerConfig(enable_recovery=False)
    for _ in range(2):  # a restart does not add a second schedule
        with cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema) as runner:
            schedules = runner.list_cron_schedules(None, None, None)
            assert runner.get_trigger_schedule("early") is None  # not a poll trigger
        assert [(s["workflow_name"], s["cron_expression"], s["timezone"]) for s in schedules] == [
            ("cron_trigger_wf", "30 4 * * *", "America/New_York")
        ]
        assert _rfc3339_utc(schedules[0]["next_run_at"]).minute == 30
    assert called == []


def test_a_cron_trigger_fires_its_workflow(make_runner: Any) -> None:
    seen = _collecting_workflow("cron_fire_wf")

    @cloaca.trigger(on="cron_fire_wf", cron="* * * * * *")  # every second (leading seconds field)
    def every_second() -> None:
        raise AssertionError("never called")

    runner = make_runner(cron_poll_interval_seconds=1)
    wait_until(lambda: seen, 30, message="a run fired by the cron trigger")
    (schedule,) = runner.list_cron_schedules(None, None, None)
    assert seen[0]["schedule_id"] == schedule["id"]
    assert seen[0]["schedule_expression"] == "* * * * * *"
    _rfc3339_utc(seen[0]["scheduled_time"])
