"""Trigger polling in the embedded runner: dedup, concurrency, bad polls, timeouts, enable/disable, history."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import cloacina as cloaca
from cloacina import DefaultRunnerConfig
from tests.conftest import PG_URL, Backend
from tests.support import PollCounter, wait_until

FAST = {"trigger_base_poll_interval_ms": 100, "enable_cron_scheduling": False}


class Tracker:
    """Records when task bodies run, to detect overlapping runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.intervals: list[tuple[float, float]] = []

    def run(self, seconds: float) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        start = time.monotonic()
        time.sleep(seconds)  # the task body takes this long: the behaviour under test (runs that overlap or not)
        with self.lock:
            self.active -= 1
            self.intervals.append((start, time.monotonic()))


def slow_workflow(name: str, tracker: Tracker, seconds: float = 0.4, fail: bool = False) -> None:
    with cloaca.WorkflowBuilder(name):

        @cloaca.task(id="work", retry_attempts=0)
        def work(ctx: cloaca.Context) -> cloaca.Context:
            tracker.run(seconds)
            if fail:
                raise RuntimeError("task failed on purpose")
            return ctx


@pytest.mark.timeout(60)
def test_same_context_never_overlaps_and_reruns_after_completion(make_runner: Any) -> None:
    tracker = Tracker()
    slow_workflow("slow", tracker)

    @cloaca.trigger(workflow="slow", poll_interval="100ms", allow_concurrent=False)
    def same_item() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire(cloaca.Context({"item": 1}))

    runner = make_runner(**FAST)
    assert wait_until(lambda: len(tracker.intervals) >= 3, 15)
    runner.set_trigger_enabled("same_item", False)
    assert tracker.max_active == 1
    ordered = sorted(tracker.intervals)
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(ordered))
    schedule = runner.get_trigger_schedule("same_item")
    assert schedule is not None and schedule["dedup_skip_count"] > 0
    history = runner.get_trigger_execution_history("same_item")
    assert len({h["context_hash"] for h in history}) == 1
    assert history[0]["context_hash"] == cloaca.context_hash({"item": 1})
    assert [h["started_at"] for h in history] == sorted((h["started_at"] for h in history), reverse=True)


@pytest.mark.timeout(60)
def test_allow_concurrent_runs_overlap(make_runner: Any) -> None:
    tracker = Tracker()
    slow_workflow("slow_parallel", tracker)

    @cloaca.trigger(workflow="slow_parallel", poll_interval="100ms", allow_concurrent=True)
    def every_time() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire(cloaca.Context({"item": 1}))

    runner = make_runner(max_concurrent_tasks=4, **FAST)
    assert wait_until(lambda: tracker.max_active >= 2, 15)
    runner.set_trigger_enabled("every_time", False)
    assert runner.get_trigger_schedule("every_time")["dedup_skip_count"] == 0


@pytest.mark.timeout(60)
def test_failed_run_frees_its_key_at_once(make_runner: Any) -> None:
    tracker = Tracker()
    slow_workflow("failing", tracker, seconds=0.05, fail=True)

    @cloaca.trigger(workflow="failing", poll_interval="100ms")
    def failing_item() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire({"item": "x"})

    runner = make_runner(**FAST)
    assert wait_until(lambda: len(runner.get_trigger_execution_history("failing_item")) >= 3, 15)
    runner.set_trigger_enabled("failing_item", False)
    history = runner.get_trigger_execution_history("failing_item")
    assert {h["status"] for h in history if h["completed_at"]} == {"Failed"}


@pytest.mark.timeout(60)
def test_bad_polls_are_counted_and_polling_continues(make_runner: Any, caplog: pytest.LogCaptureFixture) -> None:
    tracker = Tracker()
    slow_workflow("healthy_wf", tracker, seconds=0.0)

    @cloaca.trigger(workflow="healthy_wf", poll_interval="100ms")
    def raising() -> cloaca.TriggerResult:
        raise RuntimeError("cannot reach the inbox")

    @cloaca.trigger(workflow="healthy_wf", poll_interval="100ms")
    def wrong_type() -> Any:
        return "yes please"

    @cloaca.trigger(workflow="no_such_workflow", poll_interval="100ms")
    def unknown_workflow() -> bool:
        return True

    counter = iter(range(10_000))

    @cloaca.trigger(workflow="healthy_wf", poll_interval="100ms")
    def healthy() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire({"n": next(counter)})

    runner = make_runner(**FAST)
    assert wait_until(lambda: runner.get_trigger_schedule("raising")["error_count"] >= 5, 15)
    assert wait_until(lambda: runner.get_trigger_schedule("healthy")["fire_count"] >= 5, 15)
    raising_s = runner.get_trigger_schedule("raising")
    assert raising_s["error_count"] == raising_s["poll_count"]
    assert "RuntimeError: cannot reach the inbox" in raising_s["last_error"]
    wrong_s = runner.get_trigger_schedule("wrong_type")
    assert wrong_s["error_count"] >= 5 and "returned str" in wrong_s["last_error"]
    unknown_s = runner.get_trigger_schedule("unknown_workflow")
    assert unknown_s["error_count"] >= 1 and "no_such_workflow" in unknown_s["last_error"]
    assert any("raising" in r.getMessage() and "cannot reach the inbox" in r.getMessage() for r in caplog.records)
    # the same failure is reported once, not on every 100 ms poll
    assert sum("'raising'" in r.getMessage() for r in caplog.records) <= 2


@pytest.mark.timeout(60)
def test_hung_trigger_does_not_delay_a_fast_one() -> None:
    release = threading.Event()
    tracker = Tracker()
    slow_workflow("fast_wf", tracker, seconds=0.0)

    @cloaca.trigger(workflow="fast_wf", poll_interval="100ms")
    def hung() -> cloaca.TriggerResult:
        release.wait(10)  # a 10 s hang (released at the end of the test)
        return cloaca.TriggerResult.skip()

    @cloaca.trigger(workflow="fast_wf", poll_interval="100ms")
    def fast() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.skip()

    config = DefaultRunnerConfig(trigger_poll_timeout_seconds=1.0, **FAST)
    with cloaca.DefaultRunner(":memory:", config) as runner:
        try:
            # Ten fast polls and the hung poll's timeout, all while the hung poll has not returned: a fast trigger
            # stuck behind the hung one would have ~1 poll and this wait would time out.
            wait_until(
                lambda: (
                    runner.get_trigger_schedule("fast")["poll_count"] >= 10
                    and runner.get_trigger_schedule("hung")["error_count"] >= 1
                ),
                8,
                message="ten fast polls and the hung poll's timeout",
            )
            fast_polls = runner.get_trigger_schedule("fast")["poll_count"]
            hung_s = runner.get_trigger_schedule("hung")
        finally:
            release.set()
    assert fast_polls >= 10
    assert hung_s["error_count"] == 1 and "timed out after 1s" in hung_s["last_error"]


@pytest.mark.timeout(60)
def test_async_trigger_fires_and_async_timeout_is_recorded() -> None:
    tracker = Tracker()
    slow_workflow("async_wf", tracker, seconds=0.0)

    @cloaca.trigger(workflow="async_wf", poll_interval="100ms", allow_concurrent=True)
    async def async_fire() -> cloaca.TriggerResult:
        await asyncio.sleep(0.01)  # a poll that really awaits something (the behaviour under test)
        return cloaca.TriggerResult.fire()

    @cloaca.trigger(workflow="async_wf", poll_interval="100ms")
    async def async_slow() -> cloaca.TriggerResult:
        await asyncio.sleep(5)  # outlives the 0.5 s poll timeout: the behaviour under test
        return cloaca.TriggerResult.skip()

    config = DefaultRunnerConfig(trigger_poll_timeout_seconds=0.5, **FAST)
    with cloaca.DefaultRunner(":memory:", config) as runner:
        assert wait_until(lambda: runner.get_trigger_schedule("async_fire")["fire_count"] >= 3, 10)
        assert wait_until(lambda: runner.get_trigger_schedule("async_slow")["error_count"] >= 1, 10)
        assert "timed out" in runner.get_trigger_schedule("async_slow")["last_error"]


@pytest.mark.timeout(60)
def test_disable_stops_fires_and_survives_restart(durable_backend: Backend) -> None:
    tracker = Tracker()
    slow_workflow("toggle_wf", tracker, seconds=0.0)

    @cloaca.trigger(workflow="toggle_wf", poll_interval="100ms", allow_concurrent=True)
    def toggled() -> bool:
        return True

    @cloaca.trigger(workflow="toggle_wf", poll_interval="100ms")
    def canary() -> bool:  # never disabled: its polls show poll intervals going by in the scheduler
        return False

    config = DefaultRunnerConfig(**FAST)
    runner = cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema)
    try:
        assert runner.trigger_scheduler is not None
        polls = PollCounter(runner.trigger_scheduler)
        assert wait_until(lambda: runner.get_trigger_schedule("toggled")["fire_count"] >= 2, 10)
        runner.set_trigger_enabled("toggled", False)
        # A poll already running when we disabled may still complete.
        scheduler = runner.trigger_scheduler
        wait_until(lambda: "toggled" not in scheduler.polls_in_progress(), 10, message="the last poll to end")
        runner.trigger_scheduler.flush_stats()
        fires = runner.get_trigger_schedule("toggled")["fire_count"]
        polls.wait_for_more("canary", 10)  # ten poll intervals: no new fire
        runner.trigger_scheduler.flush_stats()
        assert runner.get_trigger_schedule("toggled")["fire_count"] == fires
        assert runner.get_trigger_schedule("toggled")["enabled"] is False
    finally:
        runner.shutdown()
    restarted = cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema)
    try:
        assert restarted.trigger_scheduler is not None
        PollCounter(restarted.trigger_scheduler).wait_for_more("canary", 8)  # eight intervals of the new runner
        restarted.trigger_scheduler.flush_stats()
        schedule = restarted.get_trigger_schedule("toggled")
        assert schedule["enabled"] is False and schedule["fire_count"] == fires
        restarted.set_trigger_enabled("toggled", True)
        assert wait_until(lambda: restarted.get_trigger_schedule("toggled")["fire_count"] > fires, 10)
    finally:
        restarted.shutdown()


def test_management_api_contract(make_runner: Any) -> None:
    runner = make_runner(enable_trigger_scheduling=False)
    assert runner.get_trigger_schedule("nope") is None
    assert runner.list_trigger_schedules() == []
    assert runner.set_trigger_enabled("nope", False) is None  # cloaca: an unknown name is a silent no-op
    assert runner.get_trigger_schedule("nope") is None
    assert runner.list_trigger_schedules(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        runner.list_trigger_schedules(limit=-1)


@pytest.mark.timeout(30)
def test_trigger_declared_after_start_is_picked_up_and_context_is_enriched() -> None:
    tracker = Tracker()
    seen: list[dict[str, Any]] = []
    with cloaca.WorkflowBuilder("late_wf"):

        @cloaca.task(id="capture")
        def capture(ctx: cloaca.Context) -> cloaca.Context:
            seen.append(ctx.to_dict())
            return ctx

    with cloaca.DefaultRunner(":memory:", DefaultRunnerConfig(**FAST)) as runner:
        assert runner.list_trigger_schedules() == []

        @cloaca.trigger(workflow="late_wf", poll_interval="100ms")
        def late() -> cloaca.TriggerResult:
            return cloaca.TriggerResult.fire({"file": "a.csv"})

        @cloaca.trigger(workflow="late_wf", poll_interval="100ms")
        def own_name() -> cloaca.TriggerResult:
            return cloaca.TriggerResult.fire({"trigger_name": "custom", "file": "b.csv"})

        assert wait_until(lambda: len(seen) >= 2, 10)
        names = {s["trigger_name"] for s in runner.list_trigger_schedules()}
    assert names == {"late", "own_name"}
    by_file = {s["file"]: s for s in seen}
    assert by_file["a.csv"]["trigger_name"] == "late" and "triggered_at" in by_file["a.csv"]
    assert by_file["b.csv"]["trigger_name"] == "custom"
    assert tracker.max_active == 0


def test_trigger_without_workflow_is_not_scheduled(caplog: pytest.LogCaptureFixture) -> None:
    @cloaca.trigger(name="unbound", poll_interval="100ms")
    def unbound() -> bool:
        return True

    with cloaca.DefaultRunner(":memory:", DefaultRunnerConfig(**FAST)) as runner:
        assert runner.get_trigger_schedule("unbound") is None
    assert any("names no workflow" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(120)
def test_two_runner_processes_never_run_one_key_concurrently(pg_schema: str) -> None:
    script = Path(__file__).parent / "procs" / "dedup_runner.py"
    # Create the schema once up front so the two processes do not race on the first migration.
    cloaca.DefaultRunner.with_schema_config(
        PG_URL, pg_schema, DefaultRunnerConfig(enable_trigger_scheduling=False)
    ).shutdown()
    procs = [
        subprocess.Popen([sys.executable, str(script), PG_URL, pg_schema, "6"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.context_hash, r.started_at, r.completed_at, r.owner "
                f'FROM "{pg_schema}".trigger_executions e JOIN "{pg_schema}".workflow_runs r ON r.id = e.run_id '
                "ORDER BY e.context_hash, r.started_at"
            )
        ).all()
    engine.dispose()
    # Run start/end are when its task began and when the run was finished (which frees the key).
    assert len({r.owner for r in rows}) == 2, "both processes should have won some fires"
    assert len({r.context_hash for r in rows}) == 3
    assert all(r.completed_at is not None for r in rows)
    by_hash: dict[str, list[Any]] = {}
    for r in rows:
        by_hash.setdefault(r.context_hash, []).append(r)
    for runs in by_hash.values():
        assert len(runs) >= 3  # each item ran several times in 6 s (0.3 s per run)
        for earlier, later in itertools.pairwise(runs):
            assert later.started_at >= earlier.completed_at, "two runs of one key overlapped"
