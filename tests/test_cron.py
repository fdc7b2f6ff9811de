"""Cron schedules: the store contract (every backend), the scheduler and cron recovery with an injected clock,
several schedulers sharing one PostgreSQL schema, and a real-time run in two OS processes.

The runner's cron API (cloaca's contract) is tested in ``test_compat_cron_api.py``."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.dispatch.threads import ThreadDispatcher
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.cron import CronScheduler
from cloacina.scheduling.cron_math import next_due
from cloacina.scheduling.cron_recovery import CronRecovery
from cloacina.store.cron import CronScheduleRecord, CronStore
from cloacina.store.database import Database
from cloacina.store.models import CronExecution, WorkflowRun
from cloacina.store.runs import RunStore
from tests.conftest import PG_URL, Backend, require_postgres
from tests.support import wait_until

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
T0 = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
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
    "instance_name",
    "params",
}


def at(hours: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, seconds=seconds)


@pytest.fixture(autouse=True)
def cron_workflow() -> None:
    with cloaca.WorkflowBuilder("cron_wf"):

        @cloaca.task(id="tick", retry_attempts=0)
        def tick(ctx: cloaca.Context) -> cloaca.Context:
            return ctx


@dataclasses.dataclass
class Stack:
    """Everything a scheduler needs, without a DefaultRunner: one per simulated process."""

    db: Database
    runs: RunStore
    dispatcher: ThreadDispatcher
    coordinator: RunCoordinator
    store: CronStore

    def scheduler(self, **kwargs: Any) -> CronScheduler:
        return CronScheduler(self.store, self.coordinator, registry.get_workflow, **kwargs)

    def recovery(self, **kwargs: Any) -> CronRecovery:
        return CronRecovery(self.store, self.coordinator, registry.get_workflow, **kwargs)

    def cron_runs(self, schedule_id: str) -> list[dict[str, Any]]:
        """Input contexts of the runs linked to the schedule (by its row id, as run creation stores it)."""
        record = self.store.get_schedule(schedule_id)
        assert record is not None
        with self.db.session() as s:
            rows = s.scalars(select(WorkflowRun).where(WorkflowRun.cron_schedule_id == record.row_id)).all()
            return [json.loads(r.input_context) for r in rows]

    def close(self) -> None:
        self.dispatcher.shutdown(5)
        self.db.dispose()


def open_stack(url: str, schema: str | None) -> Stack:
    db = Database(url, schema=schema)
    db.upgrade()
    runs = RunStore(db)
    dispatcher = ThreadDispatcher(4)
    coordinator = RunCoordinator(runs, lambda name, *_: registry.get_workflow(name), dispatcher=dispatcher)
    return Stack(db, runs, dispatcher, coordinator, CronStore(db))


@pytest.fixture
def stack(backend: Backend) -> Iterator[Stack]:
    opened = open_stack(backend.url, backend.schema)
    yield opened
    opened.close()


def hourly(stack: Stack, policy: str = "skip", next_run_at: datetime = T0, workflow: str = "cron_wf") -> str:
    return stack.store.create_schedule(workflow, "0 * * * *", "UTC", policy, next_run_at).id


# -- store contract ------------------------------------------------------------------------------------------
def test_schedule_crud_returns_frozen_records(stack: Stack) -> None:
    store = stack.store
    created = store.create_schedule("cron_wf", "0 * * * *", "Europe/Berlin", "skip", T0)
    assert isinstance(created, CronScheduleRecord) and str(uuid.UUID(created.id)) == created.id
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.enabled = False  # type: ignore[misc]
    assert set(created.to_dict()) == SCHEDULE_KEYS
    assert store.get_schedule(created.id) == created
    assert store.get_schedule(UNKNOWN_ID) is None
    assert created.next_run_at == T0 and created.next_run_at.tzinfo is not None

    second = store.create_schedule("cron_wf", "*/5 * * * *", "UTC", "run_all", at(1))
    third = store.create_schedule("other", "0 0 * * *", "UTC", "skip", at(2))
    assert len({created.id, second.id, third.id}) == 3
    assert [r.id for r in store.list_schedules()] == [third.id, second.id, created.id]  # newest first
    assert [r.id for r in store.list_schedules(limit=1, offset=1)] == [second.id]
    assert store.set_enabled(second.id, False)
    assert [r.id for r in store.list_schedules(enabled_only=True)] == [third.id, created.id]
    assert not store.set_enabled(UNKNOWN_ID, False)

    updated = store.update_schedule(created.id, cron_expression="30 * * * *", timezone="UTC", next_run_at=at(0.5))
    assert updated is not None
    assert (updated.cron_expression, updated.timezone, updated.next_run_at) == ("30 * * * *", "UTC", at(0.5))
    assert updated.catchup_policy == "skip" and updated.updated_at >= created.updated_at
    assert store.update_schedule(UNKNOWN_ID, catchup_policy="run_all") is None

    assert store.delete_schedule(third.id)
    assert not store.delete_schedule(third.id)
    assert store.get_schedule(third.id) is None


def test_get_or_create_returns_the_existing_schedule(stack: Stack) -> None:
    first, created = stack.store.get_or_create_schedule("cron_wf", "0 * * * *", "UTC", "skip", T0)
    again, created_again = stack.store.get_or_create_schedule("cron_wf", "0 * * * *", "UTC", "run_all", at(5))
    other, created_other = stack.store.get_or_create_schedule("cron_wf", "0 * * * *", "Europe/Berlin", "skip", T0)
    assert created and not created_again and created_other
    assert again == first and other.id != first.id
    # A named instance of the same (workflow, expression, zone) is a schedule of its own.
    instance = stack.store.create_schedule("cron_wf", "0 * * * *", "UTC", "skip", T0, instance_name="eu", params={})
    assert stack.store.get_or_create_schedule("cron_wf", "0 * * * *", "UTC", "skip", T0) == (first, False)
    with pytest.raises(ValueError, match="already has an instance named 'eu'"):
        stack.store.create_schedule("cron_wf", "0 * * * *", "UTC", "skip", T0, instance_name="eu")
    assert stack.store.create_schedule("other", "0 * * * *", "UTC", "skip", T0, instance_name="eu").id != instance.id


def test_advance_is_guarded_by_the_value_read(stack: Stack) -> None:
    sid = hourly(stack)
    assert stack.store.advance_schedule(sid, expected_next_run_at=T0, next_run_at=at(1), last_run_at=T0)
    # A second scheduler that read the old value must not move the cursor back (or forward twice).
    assert not stack.store.advance_schedule(sid, expected_next_run_at=T0, next_run_at=at(1), last_run_at=T0)
    record = stack.store.get_schedule(sid)
    assert record is not None and (record.next_run_at, record.last_run_at) == (at(1), T0)


def test_history_and_stats_join_run_status(stack: Stack) -> None:
    sid = hourly(stack, policy="run_all")
    stack.scheduler().run_once(at(2))  # fires 10:00, 11:00, 12:00
    assert wait_until(lambda: all(e.status == "Completed" for e in stack.store.execution_history(sid)), 10)
    history = stack.store.execution_history(sid)
    assert [e.scheduled_time for e in history] == [at(2), at(1), T0]  # newest first
    assert {"id", "schedule_id", "scheduled_time", "claimed_at", "workflow_execution_id", "created_at"} <= set(
        history[0].to_dict()
    )
    assert all(e.schedule_id == sid and e.run_id is not None and not e.handoff_pending for e in history)
    assert len({e.id for e in history}) == 3
    assert [e.scheduled_time for e in stack.store.execution_history(sid, limit=1)] == [at(2)]
    assert [e.scheduled_time for e in stack.store.execution_history(sid, limit=1, offset=2)] == [T0]

    with stack.db.session() as s:  # a run deleted by retention: its execution has no run any more
        s.execute(delete(WorkflowRun).where(WorkflowRun.id == history[0].run_id))
    assert (stack.store.execution_history(sid)[0].status, stack.store.execution_history(sid)[0].run_id) == (None, None)

    since = datetime.now(UTC) - timedelta(minutes=5)
    stats = stack.store.execution_stats(since)
    assert (stats.total_executions, stats.successful_executions, stats.lost_executions) == (3, 2, 0)
    assert stats.success_rate == pytest.approx(200 / 3) and stats.by_status == {"Completed": 2, "None": 1}
    later = stack.store.execution_stats(since, now=datetime.now(UTC) + timedelta(minutes=11))
    assert later.lost_executions == 1  # no run, claimed more than ten minutes before "now"
    assert stack.store.execution_stats(datetime.now(UTC) + timedelta(minutes=5)).to_dict() == {
        "total_executions": 0,
        "successful_executions": 0,
        "lost_executions": 0,
        "success_rate": 0.0,
        "by_status": {},
    }

    assert stack.store.delete_schedule(sid)
    assert stack.store.execution_history(sid) == []


def test_migration_0004_gives_existing_and_old_style_rows_uuid_ids(backend: Backend) -> None:
    db = Database(backend.url, schema=backend.schema)
    try:
        db.upgrade("0003")
        insert = (
            "INSERT INTO cron_schedules (workflow_name, cron_expression, timezone, enabled, catchup_policy, "
            "created_at, updated_at) VALUES (:w, '0 * * * *', 'UTC', true, 'skip', :t, :t)"
        )
        with db.engine.begin() as conn:  # rows written by the previous release
            for name in ("before_a", "before_b"):
                conn.execute(text(insert), {"w": name, "t": T0.replace(tzinfo=None)})
        db.upgrade()
        with db.engine.begin() as conn:  # the previous release's insert, on the new schema: still works
            conn.execute(text(insert), {"w": "after", "t": T0.replace(tzinfo=None)})
        records = CronStore(db).list_schedules()
        assert sorted(r.workflow_name for r in records) == ["after", "before_a", "before_b"]
        assert all(str(uuid.UUID(r.id)) == r.id and uuid.UUID(r.id).version == 4 for r in records)
        assert len({r.id for r in records}) == 3
        assert all(r.instance_name is None and r.params is None for r in records)
    finally:
        db.dispose()


# -- scheduler with an injected clock ------------------------------------------------------------------------
def test_run_once_fires_each_due_time_exactly_once(stack: Stack) -> None:
    sid = hourly(stack)
    scheduler = stack.scheduler()
    assert scheduler.run_once(at(seconds=-1)) == 0
    assert scheduler.run_once(T0) == 1
    assert scheduler.run_once(T0) == 0
    assert scheduler.run_once(at(0.5)) == 0
    record = stack.store.get_schedule(sid)
    assert record is not None and (record.next_run_at, record.last_run_at) == (at(1), T0)
    assert stack.cron_runs(sid) == [
        {
            "scheduled_time": "2024-01-01T10:00:00+00:00",
            "schedule_id": sid,
            "schedule_timezone": "UTC",
            "schedule_expression": "0 * * * *",
        }
    ]
    assert scheduler.run_once(at(1, seconds=0.2)) == 1
    assert [e.scheduled_time for e in stack.store.execution_history(sid)] == [at(1), T0]
    assert scheduler.seconds_until_next_pass(at(1, seconds=0.2)) == pytest.approx(5.0)  # capped by the poll


def test_the_loop_sleeps_until_the_earliest_due_time(stack: Stack) -> None:
    stack.store.create_schedule("cron_wf", "* * * * * *", "UTC", "skip", at(seconds=1))
    scheduler = stack.scheduler(poll_interval_s=30)
    scheduler.run_once(at(seconds=0.25))
    assert scheduler.seconds_until_next_pass(at(seconds=0.25)) == pytest.approx(0.75)


def test_skip_fires_only_the_most_recent_missed_time(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    sid = hourly(stack, policy="skip")
    with caplog.at_level(logging.WARNING, logger="cloacina.cron"):
        assert stack.scheduler().run_once(at(5.5)) == 1  # 10:00 .. 15:00 were due
    assert [e.scheduled_time for e in stack.store.execution_history(sid)] == [at(5)]
    assert stack.store.get_schedule(sid).next_run_at == at(6)  # type: ignore[union-attr]
    assert "5 missed due time(s)" in caplog.text and f"cron schedule {sid}" in caplog.text


def test_run_all_fires_every_missed_time_oldest_first(stack: Stack) -> None:
    sid = hourly(stack, policy="run_all")
    assert stack.scheduler().run_once(at(5.5)) == 6
    times = [e.scheduled_time for e in stack.store.execution_history(sid)]
    assert times == [at(h) for h in (5, 4, 3, 2, 1, 0)]
    assert stack.store.get_schedule(sid).last_run_at == at(5)  # type: ignore[union-attr]


def test_run_all_is_capped_keeping_the_newest(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    sid = hourly(stack, policy="run_all")
    with caplog.at_level(logging.WARNING, logger="cloacina.cron"):
        assert stack.scheduler(max_catchup_executions=3).run_once(at(5.5)) == 3
    assert [e.scheduled_time for e in stack.store.execution_history(sid)] == [at(5), at(4), at(3)]
    assert "3 missed due time(s) before 2024-01-01T13:00:00+00:00 not run" in caplog.text


def test_disabled_schedules_do_not_fire(stack: Stack) -> None:
    sid = hourly(stack)
    stack.store.set_enabled(sid, False)
    scheduler = stack.scheduler()
    assert scheduler.run_once(at(3)) == 0
    assert stack.store.execution_history(sid) == []
    assert scheduler.seconds_until_next_pass(at(3)) == pytest.approx(5.0)


def test_a_stale_scheduler_does_not_undo_an_update(stack: Stack) -> None:
    sid = hourly(stack)
    stale = stack.store.get_schedule(sid)
    assert stale is not None
    stack.store.update_schedule(sid, cron_expression="30 * * * *", next_run_at=at(0.5))
    outcome, following = stack.scheduler().fire_schedule(stale, T0)  # read before the update, fires after
    assert outcome.created == 1 and following == at(1)
    assert stack.store.get_schedule(sid).next_run_at == at(0.5)  # type: ignore[union-attr]


def test_unknown_workflow_claims_the_due_time_for_recovery(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    broken = hourly(stack, workflow="no_such_workflow")
    good = hourly(stack)
    scheduler = stack.scheduler(poll_interval_s=10)
    with caplog.at_level(logging.ERROR, logger="cloacina.cron"):
        assert scheduler.run_once(T0) == 1
    assert f"cron schedule {broken}: workflow 'no_such_workflow' cannot be run here" in caplog.text
    assert [e.scheduled_time for e in stack.store.execution_history(good)] == [T0]
    claimed = stack.store.execution_history(broken)
    assert [(e.scheduled_time, e.run_id, e.handoff_pending) for e in claimed] == [(T0, None, True)]
    assert stack.store.get_schedule(broken).next_run_at == at(1)  # type: ignore[union-attr]  # moved on
    assert scheduler.run_once(T0) == 0  # claimed once: not again


def test_other_errors_are_logged_per_schedule_and_retried(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    broken = hourly(stack)
    good = hourly(stack)
    stack.store.update_schedule(broken, cron_expression="not a cron expression")  # e.g. edited by hand
    scheduler = stack.scheduler(poll_interval_s=10)
    with caplog.at_level(logging.ERROR, logger="cloacina.cron"):
        assert scheduler.run_once(T0) == 1
    assert f"cron schedule {broken} (workflow 'cron_wf') failed" in caplog.text
    assert [e.scheduled_time for e in stack.store.execution_history(good)] == [T0]
    assert stack.store.get_schedule(broken).next_run_at == T0  # type: ignore[union-attr]  # not advanced
    assert scheduler.seconds_until_next_pass(T0) == pytest.approx(10.0)  # backs off, no busy loop

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cloacina.cron"):
        assert scheduler.run_once(at(seconds=5)) == 0  # still backing off
        assert caplog.text == ""
        stack.store.update_schedule(broken, cron_expression="0 * * * *")  # fixed
        assert scheduler.run_once(at(seconds=10)) == 1
    assert [e.scheduled_time for e in stack.store.execution_history(broken)] == [T0]


# -- cron recovery with an injected clock ------------------------------------------------------------------
def test_recovery_refires_a_lost_due_time_once_its_workflow_exists(stack: Stack) -> None:
    sid = stack.store.create_schedule(
        "late_wf", "0 * * * *", "UTC", "skip", T0, instance_name="eu", params={"region": "eu", "schedule_id": "x"}
    ).id
    stack.scheduler().run_once(T0)  # the workflow is not deployed yet: claimed without a run
    claimed_at = stack.store.execution_history(sid)[0].claimed_at
    recovery = stack.recovery(lost_threshold_s=600, max_attempts=3)
    assert not recovery.run_once(claimed_at + timedelta(minutes=9))  # not lost yet

    report = recovery.run_once(claimed_at + timedelta(minutes=11))  # lost, but the workflow is still unknown
    assert report.failed and not report.recovered
    assert stack.store.execution_history(sid)[0].recovery_attempts == 1

    with cloaca.WorkflowBuilder("late_wf"):  # the package arrives

        @cloaca.task(id="late")
        def late(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    report = recovery.run_once(claimed_at + timedelta(minutes=16))
    assert report.recovered == [stack.store.execution_history(sid)[0].id]
    execution = stack.store.execution_history(sid)[0]
    assert execution.run_id is not None and not execution.handoff_pending and execution.recovery_attempts == 2
    assert stack.cron_runs(sid) == [
        {
            "region": "eu",
            "scheduled_time": "2024-01-01T10:00:00+00:00",
            "schedule_id": sid,
            "schedule_timezone": "UTC",
            "schedule_expression": "0 * * * *",
        }
    ]
    assert not recovery.run_once(claimed_at + timedelta(minutes=30))  # recovered once, never again
    run = stack.runs.get_run(execution.run_id)
    assert run is not None and wait_until(lambda: stack.runs.get_run(execution.run_id).status == "Completed", 10)


def test_recovery_gives_up_after_max_attempts_and_max_age(stack: Stack) -> None:
    old = hourly(stack, workflow="never_deployed")
    stack.scheduler().run_once(T0)
    claimed_at = stack.store.execution_history(old)[0].claimed_at
    recovery = stack.recovery(lost_threshold_s=60, max_attempts=2, max_age_s=3600)
    assert recovery.run_once(claimed_at + timedelta(minutes=2)).failed
    assert recovery.run_once(claimed_at + timedelta(minutes=3)).failed
    assert not recovery.run_once(claimed_at + timedelta(minutes=4))  # two attempts used up
    assert stack.store.execution_history(old)[0].recovery_attempts == 2

    aged = stack.recovery(lost_threshold_s=60, max_attempts=10, max_age_s=3600)
    assert aged.run_once(claimed_at + timedelta(minutes=5)).failed  # a fresh budget: still within the age
    assert not aged.run_once(claimed_at + timedelta(hours=2))  # too old to recover
    assert not stack.recovery(max_attempts=0).run_once(claimed_at + timedelta(minutes=30))


def test_recovery_skips_disabled_schedules_and_claims_are_exclusive(stack: Stack) -> None:
    sid = hourly(stack, workflow="later_wf")
    stack.scheduler().run_once(T0)
    claimed_at = stack.store.execution_history(sid)[0].claimed_at
    stack.store.set_enabled(sid, False)
    recovery = stack.recovery(lost_threshold_s=60)
    assert not recovery.run_once(claimed_at + timedelta(minutes=2))  # disabled: left alone
    stack.store.set_enabled(sid, True)
    (lost,) = stack.store.lost_executions(
        claimed_before=claimed_at + timedelta(minutes=2), claimed_after=T0 - timedelta(days=1), max_attempts=3
    )
    now = claimed_at + timedelta(minutes=2)
    assert stack.store.claim_recovery(lost, now, stale_before=now - timedelta(minutes=2))
    assert not stack.store.claim_recovery(lost, now, stale_before=now - timedelta(minutes=2))  # taken
    assert not recovery.run_once(now)  # another process holds the claim
    assert recovery.run_once(now + timedelta(minutes=3)).failed  # its owner went silent: taken over


def test_an_unreachable_database_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(f"sqlite:///{tmp_path}/missing/dir/cron.db")
    dispatcher = ThreadDispatcher(1)
    coordinator = RunCoordinator(RunStore(db), lambda name, *_: registry.get_workflow(name), dispatcher=dispatcher)
    scheduler = CronScheduler(CronStore(db), coordinator, registry.get_workflow, poll_interval_s=2)
    with caplog.at_level(logging.WARNING, logger="cloacina.cron"):
        assert scheduler.run_once(T0) == 0
    assert "cannot read schedules" in caplog.text
    assert scheduler.seconds_until_next_pass(T0) == pytest.approx(2.0)
    dispatcher.shutdown(1)
    db.dispose()


# -- several schedulers, one PostgreSQL schema ---------------------------------------------------------------
@pytest.fixture
def two_stacks(pg_schema: str) -> Iterator[tuple[Stack, Stack]]:
    first, second = open_stack(PG_URL, pg_schema), open_stack(PG_URL, pg_schema)
    yield first, second
    first.close()
    second.close()


@pytest.mark.postgres
@pytest.mark.parametrize("policy", ["skip", "run_all"])
def test_two_schedulers_fire_each_due_time_once(two_stacks: tuple[Stack, Stack], policy: str) -> None:
    first, second = two_stacks
    sid = hourly(first, policy=policy)
    schedulers = [first.scheduler(), second.scheduler()]
    created: list[int] = []
    for now in (T0, at(1), at(2, seconds=1), at(6.5)):  # the last pass catches up 03:00 .. 06:00
        barrier = threading.Barrier(2)

        def fire(scheduler: CronScheduler, now: datetime = now, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            created.append(scheduler.run_once(now))

        threads = [threading.Thread(target=fire, args=(s,)) for s in schedulers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    expected = [at(h) for h in (0, 1, 2, 6)] if policy == "skip" else [at(h) for h in range(7)]
    runs = first.cron_runs(sid)
    assert sum(created) == len(runs) == len(expected)
    assert sorted(r["scheduled_time"] for r in runs) == [t.isoformat() for t in expected]
    assert sum(s.claims_refused for s in schedulers) + sum(created) >= len(expected)
    with first.db.session() as s:
        row_id = first.store.get_schedule(sid).row_id  # type: ignore[union-attr]
        assert len(s.scalars(select(CronExecution).where(CronExecution.schedule_id == row_id)).all()) == len(expected)


# -- two OS processes, real time -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_two_processes_fire_a_per_second_schedule_once_per_second(pg_schema: str) -> None:
    require_postgres()
    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    store = CronStore(db)
    first_due = next_due("* * * * * *", "UTC", datetime.now(UTC))
    sid = store.create_schedule("cron_rt", "* * * * * *", "UTC", "skip", first_due).row_id
    script = Path(__file__).parent / "procs" / "cron_runner.py"
    procs = [
        subprocess.Popen([sys.executable, str(script), PG_URL, pg_schema, "4"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    created = sum(int(out.split("created ")[1].split()[0]) for out in outputs)

    with db.session() as s:
        runs = s.scalars(select(WorkflowRun).where(WorkflowRun.cron_schedule_id == sid)).all()
        times = [json.loads(r.input_context)["scheduled_time"] for r in runs]
        claims = s.scalars(select(CronExecution).where(CronExecution.schedule_id == sid)).all()
    db.dispose()
    per_time = Counter(times)
    assert per_time and max(per_time.values()) == 1  # no due time ran twice
    assert len(claims) == len(runs) == len(per_time) == created
    print(f"{len(runs)} runs; per process: {outputs}")
    assert 2 <= len(runs) <= 30  # ~4 s of a per-second schedule, with generous bounds
    fired = sorted(datetime.fromisoformat(t) for t in per_time)
    assert all(t.microsecond == 0 for t in fired)
