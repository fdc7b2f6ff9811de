"""CLOACA_API §10: the trigger management methods of ``DefaultRunner``, on SQLite and PostgreSQL: UUID string ids,
record keys, newest-first paging, ``enabled_only=True`` semantics, and unknown names that are never errors."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

import cloacina as cloaca
from tests.conftest import Backend
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
SCHEDULE_KEYS = {
    "id",
    "trigger_name",
    "workflow_name",
    "poll_interval_ms",
    "allow_concurrent",
    "enabled",
    "last_poll_at",
    "created_at",
    "updated_at",
}
EXECUTION_KEYS = {
    "id",
    "schedule_id",
    "context_hash",
    "workflow_execution_id",
    "started_at",
    "completed_at",
    "created_at",
}
Runner = cloaca.DefaultRunner


def _is_uuid(value: object) -> bool:
    return isinstance(value, str) and len(value) == 36 and str(uuid.UUID(value)) == value


def _is_rfc3339_utc(value: object) -> bool:
    return isinstance(value, str) and value.endswith("+00:00") and datetime.fromisoformat(value).tzinfo is not None


@pytest.fixture(autouse=True)
def declared() -> None:
    with cloaca.WorkflowBuilder("trig_wf"):

        @cloaca.task(id="echo")
        def echo(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    counter = itertools.count()

    @cloaca.trigger(on="trig_wf", poll_interval="1h")
    def oldest() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.skip()

    @cloaca.trigger(on="trig_wf", poll_interval="50ms", allow_concurrent=True)
    def middle() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire(cloaca.Context({"n": next(counter)}))

    @cloaca.trigger(on="trig_wf", poll_interval="2s")
    def newest() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.skip()


@pytest.fixture
def make(backend: Backend) -> Iterator[Callable[..., Runner]]:
    runners: list[Runner] = []

    def factory(**overrides: Any) -> Runner:
        overrides.setdefault("enable_cron_scheduling", False)
        runner = Runner(backend.url, cloaca.DefaultRunnerConfig(**overrides), schema=backend.schema)
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        runner.shutdown()


def test_schedules_have_the_contract_keys_newest_first(make: Callable[..., Runner]) -> None:
    runner = make(enable_trigger_scheduling=False)
    schedules = runner.list_trigger_schedules()
    assert [s["trigger_name"] for s in schedules] == ["newest", "middle", "oldest"]  # newest first
    for schedule in schedules:
        assert set(schedule) >= SCHEDULE_KEYS
        assert _is_uuid(schedule["id"]) and schedule["workflow_name"] == "trig_wf"
        assert type(schedule["poll_interval_ms"]) is int and schedule["enabled"] is True
        assert schedule["last_poll_at"] is None
        assert _is_rfc3339_utc(schedule["created_at"]) and _is_rfc3339_utc(schedule["updated_at"])
    assert [(s["poll_interval_ms"], s["allow_concurrent"]) for s in schedules] == [
        (2000, False),
        (50, True),
        (3_600_000, False),
    ]
    assert len({s["id"] for s in schedules}) == 3
    assert runner.get_trigger_schedule("middle") == schedules[1]


def test_paging_and_enabled_only(make: Callable[..., Runner]) -> None:
    runner = make(enable_trigger_scheduling=False)
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(None, None, None)] == [
        "newest",
        "middle",
        "oldest",
    ]
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(False, 1, 1)] == ["middle"]
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(limit=2)] == ["newest", "middle"]
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(offset=2)] == ["oldest"]
    assert runner.list_trigger_schedules(limit=0) == []
    runner.set_trigger_enabled("middle", False)
    # enabled_only=True: every enabled trigger, oldest first; limit and offset are ignored
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(True, 1, 5)] == ["oldest", "newest"]
    assert [s["trigger_name"] for s in runner.list_trigger_schedules(enabled_only=True)] == ["oldest", "newest"]
    with pytest.raises(ValueError):
        runner.list_trigger_schedules(limit=-1)
    with pytest.raises(TypeError):
        runner.list_trigger_schedules(limit="5")  # type: ignore[arg-type]


def test_unknown_trigger_names_are_never_errors(make: Callable[..., Runner]) -> None:
    runner = make(enable_trigger_scheduling=False)
    assert runner.get_trigger_schedule("nope") is None
    assert runner.set_trigger_enabled("nope", False) is None  # silent no-op
    assert runner.get_trigger_schedule("nope") is None  # nothing was created
    assert runner.get_trigger_execution_history("nope") == []
    assert runner.get_trigger_execution_history("nope", None, None) == []


def test_set_trigger_enabled_returns_none_and_persists(make: Callable[..., Runner]) -> None:
    runner = make(enable_trigger_scheduling=False)
    assert runner.set_trigger_enabled("oldest", False) is None
    assert runner.get_trigger_schedule("oldest")["enabled"] is False  # type: ignore[index]
    assert runner.set_trigger_enabled(trigger_name="oldest", enabled=True) is None
    assert runner.get_trigger_schedule(trigger_name="oldest")["enabled"] is True  # type: ignore[index]


def test_execution_history_records_newest_first_and_paged(make: Callable[..., Runner]) -> None:
    runner = make(trigger_base_poll_interval_ms=50)
    assert wait_until(lambda: len(runner.get_trigger_execution_history("middle")) >= 3, 30)
    runner.set_trigger_enabled("middle", False)
    schedule = runner.get_trigger_schedule("middle")
    assert schedule is not None
    history = runner.get_trigger_execution_history("middle", None, None)
    for execution in history:
        assert set(execution) >= EXECUTION_KEYS
        assert _is_uuid(execution["id"]) and execution["schedule_id"] == schedule["id"]
        assert isinstance(execution["context_hash"], str) and execution["context_hash"]
        assert isinstance(execution["workflow_execution_id"], str)
        assert _is_rfc3339_utc(execution["started_at"]) and execution["created_at"] == execution["started_at"]
        assert execution["completed_at"] is None or _is_rfc3339_utc(execution["completed_at"])
    started = [h["started_at"] for h in history]
    assert started == sorted(started, reverse=True)  # newest first
    assert len({h["id"] for h in history}) == len(history)
    assert runner.get_trigger_execution_history("middle", 1, 1) == [history[1]]
    assert runner.get_trigger_execution_history("middle", limit=2) == history[:2]
    assert runner.get_trigger_execution_history("newest") == []  # never fired
    assert _is_rfc3339_utc(schedule["last_poll_at"])
