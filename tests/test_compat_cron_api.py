"""CLOACA_API §9: the cron management methods of ``DefaultRunner``, on SQLite and PostgreSQL: UUID string ids,
RFC 3339 strings, ``req·None`` parameters, record keys, stats semantics, named instances, the run context, and
``enable_cron_scheduling=False``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import cloacina as cloaca
from cloacina.scheduling.cron_math import next_due
from cloacina.store.cron import CronStore
from tests.conftest import Backend
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
SCHEDULE_KEYS = {
    "id",
    "workflow_name",
    "cron_expression",
    "timezone",
    "enabled",
    "catchup_policy",
    "next_run_at",
    "last_run_at",
    "created_at",
    "updated_at",
}
EXECUTION_KEYS = {
    "id",
    "schedule_id",
    "scheduled_time",
    "claimed_at",
    "workflow_execution_id",
    "created_at",
    "updated_at",
}
STATS_KEYS = {"total_executions", "successful_executions", "lost_executions", "success_rate"}
UNKNOWN = "6f1c3e2a-0000-4000-8000-000000000000"
Runner = cloaca.DefaultRunner


@pytest.fixture(autouse=True)
def cron_workflow() -> None:
    with cloaca.WorkflowBuilder("cron_compat"):

        @cloaca.task(id="echo")
        def echo(ctx: cloaca.Context) -> cloaca.Context:
            return ctx


@pytest.fixture
def make(backend: Backend) -> Iterator[Callable[..., Runner]]:
    runners: list[Runner] = []

    def factory(**overrides: Any) -> Runner:
        overrides.setdefault("enable_trigger_scheduling", False)
        runner = Runner(backend.url, cloaca.DefaultRunnerConfig(**overrides), schema=backend.schema)
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        runner.shutdown()


def _is_uuid(value: object) -> bool:
    return isinstance(value, str) and len(value) == 36 and str(uuid.UUID(value)) == value


def _is_rfc3339_utc(value: object) -> bool:
    return isinstance(value, str) and value.endswith("+00:00") and datetime.fromisoformat(value).tzinfo is not None


def test_register_returns_a_new_uuid_every_call_and_the_workflow_need_not_exist(make: Callable[..., Runner]) -> None:
    runner = make()
    first = runner.register_cron_workflow("cron_compat", "0 2 * * *", "UTC")
    second = runner.register_cron_workflow(workflow_name="cron_compat", cron_expression="0 2 * * *", timezone="UTC")
    later = runner.register_cron_workflow("deployed_later", "*/5 * * * *", "Europe/Berlin")
    assert all(_is_uuid(i) for i in (first, second, later)) and len({first, second, later}) == 3
    schedule = runner.get_cron_schedule(later)
    assert schedule["workflow_name"] == "deployed_later" and schedule["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(("expression", "zone"), [("61 * * * *", "UTC"), ("* * *", "UTC"), ("* * * * *", "Mars/Base")])
def test_bad_expression_or_zone_is_a_value_error(make: Callable[..., Runner], expression: str, zone: str) -> None:
    runner = make()
    with pytest.raises(ValueError):
        runner.register_cron_workflow("cron_compat", expression, zone)
    with pytest.raises(ValueError):
        runner.register_workflow_instance("cron_compat", "i", expression, zone, cloaca.Context({}))
    assert runner.list_cron_schedules(None, None, None) == []


def test_records_have_the_contract_keys_and_types(make: Callable[..., Runner]) -> None:
    runner = make()
    before = datetime.now(UTC)
    sid = runner.register_cron_workflow("cron_compat", "0 2 * * *", "Europe/Berlin")
    schedule = runner.get_cron_schedule(sid)
    assert set(schedule) >= SCHEDULE_KEYS
    assert schedule["id"] == sid and schedule["enabled"] is True and schedule["catchup_policy"] == "skip"
    assert schedule["last_run_at"] is None
    assert schedule["next_run_at"] == next_due("0 2 * * *", "Europe/Berlin", before).isoformat()
    assert all(_is_rfc3339_utc(schedule[k]) for k in ("next_run_at", "created_at", "updated_at"))


def test_list_is_newest_first_paged_and_includes_instances(make: Callable[..., Runner]) -> None:
    runner = make()
    a = runner.register_cron_workflow("cron_compat", "0 1 * * *", "UTC")
    b = runner.register_workflow_instance("cron_compat", "eu", "0 2 * * *", "UTC", cloaca.Context({"r": "eu"}))
    c = runner.register_cron_workflow("cron_compat", "0 3 * * *", "UTC")
    assert [s["id"] for s in runner.list_cron_schedules(None, None, None)] == [c, b, a]
    assert [s["id"] for s in runner.list_cron_schedules(False, 1, 1)] == [b]
    assert [s["id"] for s in runner.list_cron_schedules(enabled_only=None, limit=2, offset=None)] == [c, b]
    assert runner.list_cron_schedules(None, 0, None) == []
    runner.set_cron_schedule_enabled(b, False)
    assert [s["id"] for s in runner.list_cron_schedules(True, None, None)] == [c, a]
    assert runner.list_cron_schedules() == runner.list_cron_schedules(None, None, None)  # defaults (extension)
    with pytest.raises(ValueError):
        runner.list_cron_schedules(None, -1, None)
    with pytest.raises(TypeError):
        runner.list_cron_schedules(None, "10", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "123", UNKNOWN[:-1]])
def test_malformed_ids_are_value_errors(make: Callable[..., Runner], bad: str) -> None:
    runner = make()
    for call in (
        lambda: runner.get_cron_schedule(bad),
        lambda: runner.update_cron_schedule(bad, "* * * * *", "UTC"),
        lambda: runner.set_cron_schedule_enabled(bad, True),
        lambda: runner.delete_cron_schedule(bad),
        lambda: runner.get_cron_execution_history(bad, None, None),
    ):
        with pytest.raises(ValueError):
            call()


def test_unknown_and_deleted_schedules(make: Callable[..., Runner]) -> None:
    runner = make()
    with pytest.raises(ValueError):
        runner.get_cron_schedule(UNKNOWN)  # never None
    with pytest.raises(ValueError):
        runner.update_cron_schedule(UNKNOWN, "* * * * *", "UTC")
    with pytest.raises(ValueError, match="Failed to update cron schedule"):
        runner.set_cron_schedule_enabled(UNKNOWN, False)  # CLOACA_API §19
    with pytest.raises(ValueError, match="Failed to delete cron schedule"):
        runner.delete_cron_schedule(UNKNOWN)
    assert runner.get_cron_execution_history(UNKNOWN, None, None) == []
    sid = runner.register_cron_workflow("cron_compat", "0 2 * * *", "UTC")
    assert runner.delete_cron_schedule(sid) is None
    with pytest.raises(ValueError):
        runner.get_cron_schedule(sid)
    kept = runner.register_cron_workflow("cron_compat", "0 3 * * *", "UTC")
    assert runner.get_cron_schedule(kept.upper())["id"] == kept  # a UUID in any case names the schedule


def test_update_recomputes_next_run_and_returns_none(make: Callable[..., Runner]) -> None:
    runner = make()
    sid = runner.register_cron_workflow("cron_compat", "0 2 * * *", "UTC")
    before = datetime.now(UTC)
    assert runner.update_cron_schedule(sid, "30 4 * * *", "America/New_York") is None
    schedule = runner.get_cron_schedule(sid)
    assert (schedule["cron_expression"], schedule["timezone"]) == ("30 4 * * *", "America/New_York")
    assert schedule["next_run_at"] == next_due("30 4 * * *", "America/New_York", before).isoformat()
    with pytest.raises(ValueError):
        runner.update_cron_schedule(sid, "bad", "UTC")
    assert runner.get_cron_schedule(sid)["cron_expression"] == "30 4 * * *"  # a refused update changes nothing


def test_set_enabled_and_delete_return_none(make: Callable[..., Runner]) -> None:
    runner = make()
    sid = runner.register_cron_workflow("cron_compat", "0 2 * * *", "UTC")
    assert runner.set_cron_schedule_enabled(sid, False) is None
    assert runner.get_cron_schedule(sid)["enabled"] is False
    assert runner.set_cron_schedule_enabled(schedule_id=sid, enabled=True) is None
    assert runner.get_cron_schedule(sid)["enabled"] is True
    assert runner.delete_cron_schedule(schedule_id=sid) is None
    assert runner.list_cron_schedules(None, None, None) == []


def test_duplicate_instance_is_a_value_error(make: Callable[..., Runner]) -> None:
    runner = make()
    params = cloaca.Context({"region": "eu", "batch": 10})
    iid = runner.register_workflow_instance("cron_compat", "eu", "0 2 * * *", "UTC", params)
    assert _is_uuid(iid) and runner.get_cron_schedule(iid)["cron_expression"] == "0 2 * * *"
    with pytest.raises(ValueError, match="eu"):
        runner.register_workflow_instance("cron_compat", "eu", "0 3 * * *", "UTC", cloaca.Context({}))
    other = runner.register_workflow_instance("other_wf", "eu", "0 3 * * *", "UTC", cloaca.Context({}))
    assert other != iid  # the name is unique per workflow
    assert runner.get_cron_schedule(iid)["params"] == {"region": "eu", "batch": 10}  # stored as given


def test_stats_take_rfc3339_strings(make: Callable[..., Runner]) -> None:
    runner = make()
    empty = runner.get_cron_execution_stats("2024-01-01T00:00:00Z")
    assert set(empty) >= STATS_KEYS
    assert (empty["total_executions"], empty["successful_executions"], empty["lost_executions"]) == (0, 0, 0)
    assert empty["success_rate"] == 0.0 and isinstance(empty["success_rate"], float)
    for since in ("2024-01-01T00:00:00+02:00", "2024-01-01T00:00:00.123456-05:30", "2024-01-01t00:00:00z"):
        assert runner.get_cron_execution_stats(since)["total_executions"] == 0
    assert runner.get_cron_execution_stats(datetime(2024, 1, 1, tzinfo=UTC))["total_executions"] == 0  # extension
    for bad in ("2024-01-01", "2024-01-01T00:00:00", "yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00+0200"):
        with pytest.raises(ValueError):
            runner.get_cron_execution_stats(bad)
    with pytest.raises(ValueError):
        runner.get_cron_execution_stats(datetime(2024, 1, 1))  # naive


def test_every_method_refuses_when_cron_scheduling_is_disabled(make: Callable[..., Runner]) -> None:
    runner = make(enable_cron_scheduling=False)
    calls: list[Callable[[], object]] = [
        lambda: runner.register_cron_workflow("cron_compat", "0 2 * * *", "UTC"),
        lambda: runner.register_workflow_instance("cron_compat", "i", "0 2 * * *", "UTC", cloaca.Context({})),
        lambda: runner.list_cron_schedules(None, None, None),
        lambda: runner.get_cron_schedule(UNKNOWN),
        lambda: runner.update_cron_schedule(UNKNOWN, "0 2 * * *", "UTC"),
        lambda: runner.set_cron_schedule_enabled(UNKNOWN, True),
        lambda: runner.delete_cron_schedule(UNKNOWN),
        lambda: runner.get_cron_execution_history(UNKNOWN, None, None),
        lambda: runner.get_cron_execution_stats("2024-01-01T00:00:00Z"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="Cron scheduling not enabled"):
            call()
    assert runner.cron_scheduler is None


@pytest.mark.slow
def test_fired_runs_history_stats_and_context(make: Callable[..., Runner]) -> None:
    runner = make(cron_poll_interval_seconds=60)
    params = cloaca.Context({"region": "eu", "schedule_id": "spoofed", "triggered_at": "spoofed"})
    sid = runner.register_workflow_instance("cron_compat", "eu", "* * * * * *", "UTC", params)  # every second
    handed = wait_until(
        lambda: [e for e in runner.get_cron_execution_history(sid, None, None) if e["workflow_execution_id"]], 20
    )
    runner.cron_scheduler.stop()  # type: ignore[union-attr]  # waits for a pass in progress: the history is final
    execution = handed[0]
    assert set(execution) >= EXECUTION_KEYS
    assert _is_uuid(execution["id"]) and execution["schedule_id"] == sid
    assert all(_is_rfc3339_utc(execution[k]) for k in ("scheduled_time", "claimed_at", "created_at", "updated_at"))
    run = runner.runs.get_run(execution["workflow_execution_id"])
    assert run is not None
    assert run.input_context == {
        "region": "eu",  # the instance's params, as flat keys ...
        "scheduled_time": execution["scheduled_time"],  # ... and the scheduler's keys, which win
        "schedule_id": sid,
        "schedule_timezone": "UTC",
        "schedule_expression": "* * * * * *",
    }
    history = runner.get_cron_execution_history(sid, None, None)
    assert [h["scheduled_time"] for h in history] == sorted((h["scheduled_time"] for h in history), reverse=True)
    assert runner.get_cron_execution_history(sid, 1, len(history) - 1) == [history[-1]]
    stats = runner.get_cron_execution_stats((datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    assert stats["total_executions"] >= len(history) >= 1
    assert stats["successful_executions"] == stats["total_executions"] and stats["success_rate"] == 100.0
    assert stats["lost_executions"] == 0
    assert runner.get_cron_schedule(sid)["last_run_at"] is not None


def test_a_due_time_of_an_unknown_workflow_counts_as_lost_until_recovered(make: Callable[..., Runner]) -> None:
    runner = make(enable_cron_scheduling=True, cron_enable_recovery=False)
    assert runner.cron_scheduler is not None
    runner.cron_scheduler.stop()  # this test drives the scheduler with its own clock
    sid = runner.register_cron_workflow("not_deployed", "0 * * * *", "UTC")
    store = CronStore(runner.db)
    due = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    store.update_schedule(sid, next_run_at=due)
    runner.cron_scheduler.run_once(due + timedelta(seconds=1))
    (execution,) = runner.get_cron_execution_history(sid, None, None)
    assert execution["workflow_execution_id"] is None and execution["claimed_at"] is not None
    stats = runner.get_cron_execution_stats(due.isoformat())
    assert (stats["total_executions"], stats["successful_executions"], stats["success_rate"]) == (1, 0, 0.0)
    assert store.execution_stats(due, now=datetime.now(UTC) + timedelta(minutes=11)).lost_executions == 1
