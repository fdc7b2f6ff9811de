"""``builder.max_active_runs(n)``, embedded, on SQLite (memory and file) and PostgreSQL.

- Bad limits are refused (``0``, ``-1``, ``"2"``, ``True``); the limit is part of the workflow's version and travels
  through the catalog, so a client without the code enforces it too.
- Twenty runs of a ``max_active_runs(2)`` workflow started together: the tasks' own timestamps show never more than
  two runs at once, all complete, and they start in the order they were created.
- Step by step (a coordinator that dispatches nothing; the test runs each task): runs beyond the limit wait with a
  reason and nothing Ready; as runs end the oldest waiting ones are promoted; a cancelled waiting run never starts
  and the next one takes the slot; planning a waiting run does nothing; a retry waits at the limit too; a waiting
  run holds its trigger's dedup key.
- The sweeper never republishes a waiting run, and promotes waiting runs whose slot was freed by a process that did
  not promote (it died).
- The reason is visible: the HTTP API's run list and detail, the console's runs list and run page, and
  ``cloacina runs show`` (text and JSON).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import cloacina as cloaca
from cloacina.context import context_hash
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.sweeper import Sweeper
from cloacina.store.catalog import CatalogStore, codeless_workflow
from cloacina.store.database import Database
from cloacina.store.recovery import RecoveryStore
from cloacina.store.run_limits import waiting_reason
from cloacina.store.runs import RunStore, TriggerClaim
from cloacina.timestamps import utcnow
from cloacina.web.app import create_app
from cloacina.web.settings import WebSettings
from tests.conftest import Backend
from tests.distributed_harness import service_db_url
from tests.support import FakeClock

pytestmark = pytest.mark.timeout(120)
WAIT_S = 60.0
ADMIN = ("admin", "s3cret-pass")


def one_task_workflow(name: str, limit: int | None, body: Callable[[cloaca.Context], None] | None = None) -> Workflow:
    """``name``: one task, ``only``, that calls ``body`` (if given); ``max_active_runs(limit)`` unless None."""
    with cloaca.WorkflowBuilder(name) as builder:
        if limit is not None:
            builder.max_active_runs(limit)

        @cloaca.task(id="only", retry_attempts=0)
        def only(ctx: cloaca.Context) -> cloaca.Context:
            if body is not None:
                body(ctx)
            return ctx

    return registry.get_workflow(name)


# -- declaring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, "2", True, 2.0, None])
def test_a_limit_must_be_an_int_of_at_least_one(bad: object) -> None:
    builder = cloaca.WorkflowBuilder("bad_limit")
    with pytest.raises(ValueError, match=r"max_active_runs must be an int of at least 1, got"):
        builder.max_active_runs(bad)  # type: ignore[arg-type]


def test_the_limit_is_part_of_the_version_and_of_the_catalog_entry() -> None:
    unlimited = one_task_workflow("versioned", None)
    limited = one_task_workflow("versioned", 3)
    assert (unlimited.max_active_runs, limited.max_active_runs) == (None, 3)
    assert unlimited.version != limited.version
    assert one_task_workflow("versioned", 3).version == limited.version
    db = Database(":memory:")
    db.upgrade()
    catalog = CatalogStore(db)
    catalog.record(limited, "code")
    entry = catalog.get_workflow("versioned")
    assert entry is not None and entry.max_active_runs == 3
    codeless = codeless_workflow(entry)
    assert (codeless.max_active_runs, codeless.version) == (3, limited.version)
    catalog.record(unlimited, "code")
    newest = catalog.get_workflow("versioned")
    assert newest is not None and newest.max_active_runs is None


# -- twenty runs at once ------------------------------------------------------------------------------------
def test_twenty_runs_never_more_than_two_at_once_in_creation_order(make_runner: Any) -> None:
    limit, runs = 2, 20
    lock = threading.Lock()
    spans: dict[int, list[float]] = {}  # seq -> [first task's start, last task's end]
    overtaken: dict[int, list[int]] = {}  # seq -> older runs (created before it) still waiting when it started
    holder: dict[str, Any] = {}

    with cloaca.WorkflowBuilder("limited_pair") as builder:
        builder.max_active_runs(limit)

        @cloaca.task(id="first", retry_attempts=0)
        def first(ctx: cloaca.Context) -> cloaca.Context:
            seq = ctx.get("seq")
            with lock:
                spans[seq] = [time.monotonic()]
            listed = holder["runner"].runs.list_runs(workflow_name="limited_pair", limit=100)
            older = [r.input_context["seq"] for r in listed if r.waiting_reason]
            overtaken[seq] = [n for n in older if n < seq]
            time.sleep(0.03)
            return ctx

        @cloaca.task(id="second", dependencies=["first"], retry_attempts=0)
        def second(ctx: cloaca.Context) -> cloaca.Context:
            time.sleep(0.03)
            with lock:
                spans[ctx.get("seq")].append(time.monotonic())
            return ctx

    runner = holder["runner"] = make_runner(max_concurrent_tasks=8, enable_cron_scheduling=False)
    handles = [runner.execute_async("limited_pair", {"seq": seq}) for seq in range(runs)]
    waited_at_start = [r for r in runner.runs.list_runs(workflow_name="limited_pair", limit=100) if r.waiting_reason]
    results = [h.wait(WAIT_S) for h in handles]

    assert [r.status for r in results] == ["Completed"] * runs
    assert len(waited_at_start) >= 10, "most runs waited for a slot"
    assert waited_at_start[0].waiting_reason == waiting_reason("limited_pair", limit)
    assert all(r.waiting_reason is None for r in runner.runs.list_runs(workflow_name="limited_pair", limit=100))
    assert sorted(spans) == list(range(runs)) and all(len(s) == 2 for s in spans.values())
    events = sorted([(s[0], 1) for s in spans.values()] + [(s[1], -1) for s in spans.values()])
    at_once, most = 0, 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    assert most == limit, f"{most} runs at once"
    # First in, first out: when a run started, no run created before it was still waiting.
    assert {seq: older for seq, older in overtaken.items() if older} == {}


# -- step by step -------------------------------------------------------------------------------------------
class Steps:
    """A store and a coordinator that dispatches nothing: the test runs each task itself."""

    def __init__(self, backend: Backend) -> None:
        self.db = Database(backend.url, schema=backend.schema)
        self.db.upgrade()
        self.runs = RunStore(self.db)
        self.coordinator = RunCoordinator(self.runs, lambda name, *_: registry.get_workflow(name))

    def start(self, workflow: str, seq: int, **kwargs: Any) -> str:
        run_id = self.coordinator.create_run(registry.get_workflow(workflow), {"seq": seq}, **kwargs)
        assert run_id is not None
        return run_id

    def waiting(self, run_id: str) -> str | None:
        run = self.runs.get_run(run_id)
        assert run is not None
        return run.waiting_reason

    def state(self, run_id: str) -> tuple[str, str]:
        """(run status, task status) of a one-task run."""
        run = self.runs.get_run(run_id)
        assert run is not None
        return str(run.status), str(self.runs.get_tasks(run_id)["only"].status)

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def steps(backend: Backend) -> Any:
    s = Steps(backend)
    yield s
    s.close()


def test_waiting_runs_start_first_in_first_out_and_a_cancelled_one_never(steps: Steps) -> None:
    one_task_workflow("fifo", 2)
    r = [steps.start("fifo", seq) for seq in range(5)]
    reason = waiting_reason("fifo", 2)
    assert [steps.waiting(run_id) for run_id in r] == [None, None, reason, reason, reason]
    assert [steps.state(run_id) for run_id in r] == [("Pending", "Ready")] * 2 + [("Pending", "NotStarted")] * 3
    steps.coordinator.advance(r[2])  # planning a waiting run starts nothing
    assert steps.state(r[2]) == ("Pending", "NotStarted")

    assert steps.coordinator.cancel_run(r[3]) is True  # waiting: it ends at once and never starts
    assert (steps.state(r[3]), steps.waiting(r[3])) == (("Cancelled", "Skipped"), None)
    assert steps.state(r[2]) == ("Pending", "NotStarted"), "cancelling a waiting run freed no slot"

    assert steps.coordinator.run_task(r[0], "only").kind == "completed"  # r0 ends: r2, the oldest, is promoted
    assert (steps.state(r[2]), steps.waiting(r[2])) == (("Pending", "Ready"), None)
    assert steps.waiting(r[4]) == reason
    assert steps.coordinator.run_task(r[1], "only").kind == "completed"  # r1 ends: r4 (r3 was cancelled)
    assert (steps.state(r[4]), steps.waiting(r[4])) == (("Pending", "Ready"), None)
    for run_id in (r[2], r[4]):
        assert steps.coordinator.run_task(run_id, "only").kind == "completed"
    assert [steps.state(run_id)[0] for run_id in r] == ["Completed"] * 3 + ["Cancelled", "Completed"]
    assert steps.coordinator.promote_waiting(registry.get_workflow("fifo")) == []


def test_a_new_run_never_overtakes_a_waiting_one(steps: Steps) -> None:
    one_task_workflow("no_overtaking", 1)
    first, second = steps.start("no_overtaking", 0), steps.start("no_overtaking", 1)
    steps.runs.cancel_run(first)  # ended by a process that did not promote (e.g. it died right after)
    third = steps.start("no_overtaking", 2)  # a slot is free, but `second` waits: `third` queues behind it
    assert (steps.waiting(second), steps.waiting(third)) == (waiting_reason("no_overtaking", 1),) * 2
    assert steps.coordinator.promote_waiting(registry.get_workflow("no_overtaking")) == [second]
    assert steps.waiting(third) is not None


def test_a_waiting_run_past_its_deadline_ends_and_never_starts(steps: Steps) -> None:
    one_task_workflow("expiring", 1)
    active, waiting, next_one = (steps.start("expiring", seq) for seq in range(3))
    steps.coordinator.expire_run(waiting, 5.0)
    run = steps.runs.get_run(waiting)
    assert run is not None and (str(run.status), run.waiting_reason) == ("Failed", None)
    assert steps.state(waiting) == ("Failed", "Skipped")
    assert steps.coordinator.run_task(active, "only").kind == "completed"
    assert (steps.waiting(next_one), steps.state(next_one)) == (None, ("Pending", "Ready"))


def test_waiting_runs_of_an_older_version_are_promoted_with_that_version(steps: Steps) -> None:
    old = one_task_workflow("versions", 1)
    active, older = steps.start("versions", 0), steps.start("versions", 1)
    with cloaca.WorkflowBuilder("versions") as builder:  # the same task with a timeout: another version
        builder.max_active_runs(1)

        @cloaca.task(id="only", retry_attempts=0, timeout_seconds=30)
        def only(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    new = registry.get_workflow("versions")
    assert new.version != old.version
    newer = steps.start("versions", 2)
    versions = {run_id: steps.runs.get_run(run_id).workflow_version for run_id in (older, newer)}  # type: ignore[union-attr]
    assert versions == {older: old.version, newer: new.version}
    # The end of `active` promotes with the new code's workflow; the oldest waiting run needs its own version,
    # which the coordinator resolves first (here the resolver serves the code there is).
    assert steps.coordinator.run_task(active, "only").kind == "completed"
    assert (steps.waiting(older), steps.waiting(newer)) == (None, waiting_reason("versions", 1))
    assert steps.coordinator.run_task(older, "only").kind == "completed"
    assert steps.waiting(newer) is None


def test_a_retry_waits_at_the_limit(steps: Steps) -> None:
    failing = {"yes"}

    def body(ctx: cloaca.Context) -> None:
        if failing:
            raise RuntimeError("fails on purpose")

    one_task_workflow("retried", 1, body)
    failed = steps.start("retried", 0)
    assert steps.coordinator.run_task(failed, "only").kind == "failed"
    failing.clear()
    active = steps.start("retried", 1)
    retry = steps.coordinator.retry_run(failed)
    assert (steps.waiting(retry), steps.state(retry)) == (waiting_reason("retried", 1), ("Pending", "NotStarted"))
    assert steps.coordinator.run_task(active, "only").kind == "completed"
    assert (steps.waiting(retry), steps.state(retry)) == (None, ("Pending", "Ready"))
    assert steps.coordinator.run_task(retry, "only").kind == "completed"
    run = steps.runs.get_run(retry)
    assert run is not None and (str(run.status), run.retry_of) == ("Completed", failed)


def test_a_waiting_run_holds_its_triggers_dedup_key(steps: Steps) -> None:
    one_task_workflow("deduped", 1)
    steps.start("deduped", 0)
    claim = TriggerClaim("deduped_trigger", context_hash({"seq": 1}), dedup=True)
    waiting = steps.start("deduped", 1, trigger=claim)
    assert steps.waiting(waiting) is not None
    assert steps.coordinator.create_run(registry.get_workflow("deduped"), {"seq": 1}, trigger=claim) is None
    assert steps.coordinator.cancel_run(waiting) is True  # the key is free again
    assert steps.start("deduped", 1, trigger=claim) != waiting


def test_the_sweeper_never_republishes_a_waiting_run_and_promotes_a_forgotten_one(steps: Steps) -> None:
    one_task_workflow("swept", 1)
    active, waiting = steps.start("swept", 0), steps.start("swept", 1)
    republished: list[str] = []
    clock = FakeClock(utcnow() + timedelta(hours=1))  # every run looks stale to this sweeper
    sweeper = Sweeper(RecoveryStore(steps.db), steps.coordinator, republished.append, clock=clock)
    report = sweeper.run_once()
    assert (republished, report.promoted) == ([active], [])
    assert steps.state(waiting) == ("Pending", "NotStarted")

    steps.runs.cancel_run(active)  # ended by a process that died before it promoted
    assert steps.waiting(waiting) is not None
    report = sweeper.run_once()
    assert report.promoted == [waiting]
    assert (steps.waiting(waiting), steps.state(waiting)) == (None, ("Pending", "Ready"))
    assert sweeper.run_once().promoted == []


# -- the reason, where people look ------------------------------------------------------------------------
def test_the_waiting_reason_in_the_api_the_console_and_the_cli(
    backend: Backend, make_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name == "sqlite-memory":
        pytest.skip("the CLI reads the database by URL: an in-memory database is this process's only")
    release = threading.Event()

    def blocked(ctx: cloaca.Context) -> None:
        assert release.wait(WAIT_S), "the test never released the task"

    one_task_workflow("shown", 1, blocked)
    runner = make_runner(enable_cron_scheduling=False)
    running = runner.execute_async("shown", {})
    waiting = runner.execute_async("shown", {})
    reason = waiting_reason("shown", 1)
    try:
        with TestClient(create_app(WebSettings(auth=f"{ADMIN[0]}:{ADMIN[1]}"), runner=runner)) as http:
            page = http.get("/api/v1/runs", params={"workflow": "shown"}, auth=ADMIN).json()
            listed = {r["run_id"]: r["waiting_reason"] for r in page["runs"]}
            assert listed == {running.run_id: None, waiting.run_id: reason}
            detail = http.get(f"/api/v1/runs/{waiting.run_id}", auth=ADMIN).json()
            assert (detail["status"], detail["waiting_reason"]) == ("Pending", reason)
            assert http.get("/api/v1/workflows/shown", auth=ADMIN).json()["max_active_runs"] == 1

            runs_html = http.get("/runs", params={"workflow": "shown"}, auth=ADMIN).text
            row = re.search(rf'<tr data-row-key="{waiting.run_id}".*?</tr>', runs_html, re.S)
            assert row is not None and "max_active_runs=1 of workflow &#39;shown&#39; reached" in row.group(0)
            run_html = http.get(f"/runs/{waiting.run_id}", auth=ADMIN).text
            assert "<dt>Waiting</dt>" in run_html and "max_active_runs=1" in run_html

        from cloacina.cli.main import main

        monkeypatch.delenv("CLOACINA_BROKER_URL", raising=False)
        db = service_db_url(backend.url, backend.schema) if backend.schema else backend.url
        cli = CliRunner(env={"COLUMNS": "200"})
        shown = cli.invoke(main, ["runs", "show", waiting.run_id, "--db", db], catch_exceptions=False)
        assert shown.exit_code == 0, shown.output
        assert re.search(r"waiting\s+waiting for a slot: max_active_runs=1 of workflow 'shown' reached", shown.output)
        as_json = cli.invoke(main, ["runs", "show", waiting.run_id, "--db", db, "--json"], catch_exceptions=False)
        assert json.loads(as_json.output)["waiting_reason"] == reason
    finally:
        release.set()
    assert [running.wait(WAIT_S).status, waiting.wait(WAIT_S).status] == ["Completed", "Completed"]
