"""The workflow catalog on SQLite and PostgreSQL: recording, reading, which version a name serves, code-less
workflows, where runners record, how runs of cataloged workflows are started and resolved, packages, and the
``cloacina runs start`` command's input checks (its runs on real workers: ``test_catalog_distributed.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PG_URL, Backend
from package_fixtures import build_ingest
from sqlalchemy import event
from sqlalchemy.engine import Engine

import cloacina as cloaca
from cloacina.cli.main import main
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.deployment.workflows import WorkflowCatalog, WorkflowVersionError, origin_of
from cloacina.errors import WorkflowNotFoundError
from cloacina.packaging.archive import read_archive
from cloacina.services.reconciler import Reconciler
from cloacina.store.catalog import KEEP_VERSIONS, CatalogStore, codeless_workflow, is_codeless
from cloacina.store.database import Database
from tests.distributed_harness import migrated_schema, service_db_url

pytestmark = pytest.mark.timeout(120)
APP = f"app:{__name__}"


def _declare(
    name: str = "cat_wf", attempts: int = 2, description: str = "doubles n", *, audit: bool = False
) -> Workflow:
    """A two-task workflow with a retry policy, a rule and a timeout; ``attempts`` changes its version, ``audit``
    adds a third task (another graph; declared in a namespace of its own, so later declarations do not keep it)."""
    with cloaca.WorkflowBuilder(name, package="audited" if audit else None) as builder:
        builder.description(description)
        builder.tag("team", "data")

        @cloaca.task(id="double", retry_attempts=attempts, retry_delay_ms=10, timeout_seconds=30)
        def double(ctx: Any) -> Any:
            ctx.set("n", ctx.get("n") * 2)
            return ctx

        @cloaca.task(id="report", dependencies=["double"], trigger_rules={"type": "TaskSuccess", "task_name": "double"})
        def report(ctx: Any) -> Any:
            """Says what n is."""
            ctx.set("report", f"n is {ctx.get('n')}")
            return ctx

        if audit:

            @cloaca.task(id="audit", dependencies=["report"])
            def audit_task(ctx: Any) -> Any:
                return ctx

    return registry.get_workflow(name)


@pytest.fixture
def db(backend: Backend) -> Iterator[Database]:
    database = Database(backend.url, schema=backend.schema, pool_size=2)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def durable_url(durable_backend: Backend) -> str:
    """A URL that other processes (and the CLI) can open: a SQLite file, or a migrated PostgreSQL schema."""
    if durable_backend.schema is None:
        db = Database(durable_backend.url, pool_size=1)
        db.upgrade()
        db.dispose()
        return durable_backend.url
    migrated_schema(PG_URL, durable_backend.schema)
    return service_db_url(PG_URL, durable_backend.schema)


# -- the store ------------------------------------------------------------------------------------------------
def test_migration_0006_adds_the_table_and_reverts(durable_backend: Backend) -> None:
    database = Database(durable_backend.url, schema=durable_backend.schema, pool_size=1)
    try:
        database.upgrade("0005")
        assert "workflow_catalog" not in database.table_names()
        database.upgrade("0006")
        assert "workflow_catalog" in database.table_names()
        database.upgrade()  # this code reads and writes the catalog's later columns too (0009: max_active_runs)
        CatalogStore(database).record(_declare(), APP)
        database.downgrade("0005")
        assert "workflow_catalog" not in database.table_names() and "workflow_runs" in database.table_names()
        database.upgrade()
        assert CatalogStore(database).list_workflows() == []  # recorded again when processes start
    finally:
        database.dispose()


def test_record_and_read_an_entry(db: Database) -> None:
    store = CatalogStore(db)
    assert store.list_workflows() == [] and store.get_workflow("cat_wf") is None
    wf = _declare()
    store.record(wf, APP)
    entry = store.get_workflow("cat_wf")
    assert entry is not None
    assert (entry.name, entry.version, entry.description, entry.tags, entry.origin) == (
        "cat_wf", wf.version, "doubles n", {"team": "data"}, APP
    )  # fmt: skip
    assert entry.updated_at.tzinfo == UTC and entry.package_fingerprint is None
    double, report = entry.tasks
    assert (double.task_id, double.dependencies, double.max_attempts, double.timeout_s) == ("double", [], 2, 30.0)
    assert double.retry == wf.tasks["double"].retry.to_dict() and double.trigger_rule is None
    assert (report.task_id, report.dependencies, report.description) == ("report", ["double"], "Says what n is.")
    assert report.trigger_rule == {"type": "All", "conditions": [{"type": "TaskSuccess", "task_name": "double"}]}
    assert report.max_attempts == 3 and report.timeout_s is None  # the defaults
    store.record(_declare("another_wf"), "code")
    assert [e.name for e in store.list_workflows()] == ["another_wf", "cat_wf"]
    assert store.get_version("cat_wf", wf.version) == entry and store.get_version("cat_wf", "0" * 16) is None


def test_recording_again_is_idempotent_and_refreshes_the_description(db: Database) -> None:
    store = CatalogStore(db)
    wf = _declare()
    store.record(wf, APP)
    first = store.get_workflow("cat_wf")
    store.record(wf, APP)
    store.record_all([(_declare(description="doubles n, twice"), "code")])  # same graph and code: same version
    assert [e.version for e in store.versions("cat_wf")] == [wf.version]
    again = store.get_workflow("cat_wf")
    assert first is not None and again is not None
    assert (again.description, again.origin) == ("doubles n, twice", "code")
    assert again.updated_at >= first.updated_at


def test_a_name_serves_its_newest_version_and_an_older_one_recorded_again_never_takes_it_back(db: Database) -> None:
    store = CatalogStore(db)
    v1, v2 = _declare(attempts=1), _declare(attempts=2)
    assert v1.version != v2.version
    store.record(v1, APP)
    store.record(v2, APP)
    store.record(v1, APP)  # a process that still runs v1 restarts
    served = store.get_workflow("cat_wf")
    assert served is not None and served.version == v2.version
    assert [e.version for e in store.list_workflows()] == [v2.version]
    assert [e.version for e in store.versions("cat_wf")] == [v2.version, v1.version]
    assert store.forget_version("cat_wf", v2.version) and not store.forget_version("cat_wf", v2.version)
    rolled_back = store.get_workflow("cat_wf")
    assert rolled_back is not None and rolled_back.version == v1.version


def test_only_the_newest_versions_are_kept(db: Database) -> None:
    store = CatalogStore(db)
    workflows = [_declare(attempts=n) for n in range(1, KEEP_VERSIONS + 3)]
    for wf in workflows:
        store.record(wf, APP)
    versions = [wf.version for wf in workflows]
    kept = [e.version for e in store.versions("cat_wf")]
    assert kept == list(reversed(versions))[:KEEP_VERSIONS]
    assert store.get_version("cat_wf", versions[0]) is None and store.get_version("cat_wf", versions[2]) is not None


def test_forget_removes_the_entries_of_one_origin(db: Database) -> None:
    store = CatalogStore(db)
    store.record(_declare("a_wf"), "package:" + "a" * 64)
    store.record(_declare("b_wf"), APP)
    assert store.forget("package:" + "a" * 64) == 1 and store.forget("package:" + "a" * 64) == 0
    assert [e.name for e in store.list_workflows()] == ["b_wf"]


def test_a_codeless_workflow_has_the_graph_and_version_but_no_code(db: Database) -> None:
    store = CatalogStore(db)
    wf = _declare()
    store.record(wf, APP)
    entry = store.get_workflow("cat_wf")
    assert entry is not None
    planned = codeless_workflow(entry)
    assert is_codeless(planned) and not is_codeless(wf)
    assert (planned.name, planned.version, planned.topological_order) == ("cat_wf", wf.version, ("double", "report"))
    assert planned.description == "doubles n" and dict(planned.tags) == {"team": "data"}
    for task_id, task in wf.tasks.items():
        copy = planned.tasks[task_id]
        assert (copy.dependencies, copy.retry, copy.trigger_rule, copy.timeout_s, copy.description) == (
            task.dependencies, task.retry, task.trigger_rule, task.timeout_s, task.description
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="runs on the workers"):
        planned.tasks["double"].function(cloaca.Context({"n": 1}))


def test_origin_of_a_workflow() -> None:
    assert origin_of(_declare()) == APP
    code = Workflow("x", {})
    assert origin_of(code) == "code"


# -- resolving runs --------------------------------------------------------------------------------------------
def test_a_worker_refuses_a_run_of_another_graph_an_embedded_runner_warns(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    store = CatalogStore(db)
    old = _declare(attempts=1)
    store.record(old, APP)
    other_graph = _declare(attempts=1, audit=True)
    store.record(other_graph, APP)
    new = _declare(attempts=2)  # the code of this process from now on: old's graph, another version
    worker = WorkflowCatalog(None, store, strict_versions=True)
    assert worker.resolve("cat_wf", new.version) is new
    with caplog.at_level(logging.WARNING, "cloacina.workflows"):
        assert worker.resolve("cat_wf", old.version) is new  # same tasks and dependencies: runs with its code
    assert "changed since the run started" in caplog.text
    with pytest.raises(WorkflowVersionError) as raised:
        worker.resolve("cat_wf", other_graph.version)
    assert f"started with version {other_graph.version}" in str(raised.value) and new.version in str(raised.value)
    caplog.clear()
    embedded = WorkflowCatalog(None, store)
    with caplog.at_level(logging.WARNING, "cloacina.workflows"):
        assert embedded.resolve("cat_wf", old.version) is new
    assert "changed since the run started" in caplog.text
    # A process that only plans takes the graph of the run's own version from the catalog.
    planner = WorkflowCatalog(None, store, plans_only=True)
    planned = planner.resolve("cat_wf", old.version)
    assert is_codeless(planned) and planned.version == old.version
    assert planned.tasks["double"].retry.max_attempts == 1
    assert planner.resolve("cat_wf", old.version) is planned  # built once


def test_recording_never_raises_and_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    unmigrated = Database(":memory:")
    catalog = WorkflowCatalog(None, CatalogStore(unmigrated))
    with caplog.at_level(logging.WARNING, "cloacina.workflows"):
        catalog.record([_declare()])
    assert "cannot record workflows cat_wf in the catalog" in caplog.text
    unmigrated.upgrade()
    catalog.record([_declare()])
    assert [e.name for e in CatalogStore(unmigrated).list_workflows()] == ["cat_wf"]
    unmigrated.dispose()


# -- runners ---------------------------------------------------------------------------------------------------
def _catalog_statements() -> tuple[list[str], Any]:
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "workflow_catalog" in statement:
            seen.append(statement)

    return seen, count


def test_a_runner_records_its_workflows_once_and_late_ones_on_first_use(make_runner: Any) -> None:
    early = _declare("early_wf")
    runner = make_runner()
    assert [(e.name, e.version, e.origin) for e in runner.list_catalog()] == [("early_wf", early.version, APP)]
    late = _declare("late_wf")  # declared after the runner started
    seen, count = _catalog_statements()
    event.listen(Engine, "before_cursor_execute", count)
    try:
        assert runner.execute("late_wf", {"n": 2}).final_context.get("n") == 4
        first_use = len(seen)
        assert runner.execute("late_wf", {"n": 3}).status == "Completed"
        runner.execute("early_wf", {"n": 1})
        assert len(seen) == first_use  # recorded once per process, never per run
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert first_use >= 1
    assert {e.name: e.version for e in runner.list_catalog()} == {"early_wf": early.version, "late_wf": late.version}


def test_embedded_mode_still_needs_the_code(durable_backend: Backend) -> None:
    _declare()
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema) as recorder:
        assert [e.name for e in recorder.list_catalog()] == ["cat_wf"]
    registry.unregister_workflow("cat_wf")
    with cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema) as embedded:
        assert [e.name for e in embedded.list_catalog()] == ["cat_wf"]
        with pytest.raises(ValueError, match="unknown workflow 'cat_wf'"):
            embedded.execute("cat_wf", {"n": 1})
        with pytest.raises(WorkflowNotFoundError):
            embedded.start_run("cat_wf", {"n": 1})


def test_a_broker_client_starts_a_cataloged_workflow_by_name_without_its_code(
    durable_backend: Backend, redis_url: str
) -> None:
    wf = _declare()
    setup = Database(durable_backend.url, schema=durable_backend.schema, pool_size=1)
    setup.upgrade()
    CatalogStore(setup).record(wf, APP)
    setup.dispose()
    registry.unregister_workflow("cat_wf")  # this process no longer has the code
    config = cloaca.DefaultRunnerConfig(broker_url=redis_url)
    with cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema) as client:
        run_id = client.start_run("cat_wf", {"n": 1})  # published to Celery; no worker runs it here
        run = client.runs.get_run(run_id)
        tasks = client.runs.get_tasks(run_id)
        with pytest.raises(ValueError, match=r"unknown workflow 'nope'.*cat_wf"):
            client.start_run("nope", {})
        with pytest.raises(ValueError, match="unknown workflow 'nope'"):
            client.execute_async("nope")
        # Resolving the stored run (recovery, deadlines) gives the catalog's graph of its version.
        resolved = client.coordinator.resolve_workflow("cat_wf", wf.version, None)
    assert run is not None and (run.workflow_name, run.workflow_version) == ("cat_wf", wf.version)
    assert run.package_fingerprint is None and run.input_context == {"n": 1}
    assert {t: (r.status.value, r.max_attempts) for t, r in tasks.items()} == {
        "double": ("Ready", 2), "report": ("NotStarted", 3)
    }  # fmt: skip
    assert is_codeless(resolved) and resolved.version == wf.version


# -- packages --------------------------------------------------------------------------------------------------
def test_package_workflows_are_cataloged_with_their_package_and_leave_with_it(
    durable_backend: Backend, redis_url: str, tmp_path: Path
) -> None:
    v1, v2 = build_ingest(tmp_path, version="1.0.0"), build_ingest(tmp_path, version="2.0.0")
    fp1, fp2 = read_archive(v1).fingerprint, read_archive(v2).fingerprint
    watch = tmp_path / "packages"
    watch.mkdir()
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(durable_backend.url, config, schema=durable_backend.schema) as runner:
        reconciler = Reconciler.for_runner(runner, [watch])
        (watch / "v1.cloacina").write_bytes(v1.read_bytes())
        assert reconciler.reconcile_once().deployed
        entry = runner.deployment.catalog.get_workflow("data_ingest")
        assert entry is not None and entry.origin == f"package:{fp1}" and entry.package_fingerprint == fp1
        assert [t.task_id for t in entry.tasks] == ["validate", "load"]
        assert entry.description == "Ingest data files detected by trigger"
        # The embedded runner runs it by name (from the active package): the entry keeps its package origin.
        assert runner.execute("data_ingest", {"filename": "x.parquet"}).status == "Completed"
        again = runner.deployment.catalog.get_workflow("data_ingest")
        assert again is not None and again.origin == f"package:{fp1}"

        (watch / "v1.cloacina").unlink()
        (watch / "v2.cloacina").write_bytes(v2.read_bytes())
        report = reconciler.reconcile_once()
        assert report.deployed and report.removed
        assert [e.origin for e in runner.deployment.catalog.versions("data_ingest")] == [f"package:{fp2}"]

        # A broker client starts the package's workflow by name: the run carries the package, no code is loaded.
        broker = cloaca.DefaultRunnerConfig(broker_url=redis_url)
        with cloaca.DefaultRunner(durable_backend.url, broker, schema=durable_backend.schema) as client:
            run_id = client.start_run("data_ingest", {"filename": "x.parquet"})
            run = client.runs.get_run(run_id)
            assert client.packages.loaded == []
        assert run is not None and run.package_fingerprint == fp2

        (watch / "v2.cloacina").unlink()
        assert reconciler.reconcile_once().removed
        assert runner.deployment.catalog.get_workflow("data_ingest") is None


# -- cloacina runs start ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("{", "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        ("[1, 2]", "must be a JSON object such as '{\"n\": 1}', got an array"),
        ('"text"', "got a string"),
        ("null", "got null"),
        ("3", "got a number"),
        ('{"n": NaN}', "not valid JSON: NaN is not JSON"),
    ],
)
def test_runs_start_refuses_a_context_that_is_not_a_json_object(tmp_path: Path, context: str, message: str) -> None:
    result = CliRunner().invoke(main, ["runs", "start", "cat_wf", "--db", f"sqlite:///{tmp_path}/x.db", "--context",
                                       context])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--context'" in result.output and message in result.output


def test_runs_start_errors(durable_url: str, tmp_path: Path) -> None:
    cli = CliRunner()
    no_db = cli.invoke(main, ["runs", "start", "cat_wf", "--db", f"sqlite:///{tmp_path}/missing.db"])
    assert no_db.exit_code == 1 and "does not exist" in no_db.output
    timeout = cli.invoke(main, ["runs", "start", "cat_wf", "--db", durable_url, "--timeout", "5"])
    assert timeout.exit_code == 2 and "--timeout only applies with --wait" in timeout.output
    env = {"CLOACINA_BROKER_URL": None}
    unknown = cli.invoke(main, ["runs", "start", "cat_wf", "--db", durable_url], env=env)
    assert unknown.exit_code == 1, unknown.output
    assert "unknown workflow 'cat_wf': no process of this deployment recorded it" in unknown.output
    assert "(cataloged: none yet)" in unknown.output
    db = Database(durable_url, pool_size=1)
    CatalogStore(db).record(_declare(), APP)
    db.dispose()
    embedded = cli.invoke(main, ["runs", "start", "cat_wf", "--db", durable_url], env=env)
    assert embedded.exit_code == 1, embedded.output
    assert f"workflow 'cat_wf' ({APP}) cannot run here" in embedded.output
    assert "needs a distributed deployment (set CLOACINA_BROKER_URL" in embedded.output


def test_runs_start_in_broker_mode_prints_the_run_id(durable_url: str, redis_url: str) -> None:
    wf = _declare()
    db = Database(durable_url, pool_size=1)
    CatalogStore(db).record(wf, APP)
    registry.unregister_workflow("cat_wf")
    cli = CliRunner()
    env = {"CLOACINA_BROKER_URL": redis_url}
    started = cli.invoke(main, ["runs", "start", "cat_wf", "--db", durable_url, "--context", '{"n": 3}'], env=env)
    assert started.exit_code == 0, started.output
    run_id = started.output.strip()
    as_json = cli.invoke(main, ["runs", "start", "cat_wf", "--db", durable_url, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    second = json.loads(as_json.output)
    assert second["workflow_name"] == "cat_wf" and second["workflow_version"] == wf.version
    try:
        from cloacina.store.runs import RunStore

        runs = RunStore(db)
        first, other = runs.get_run(run_id), runs.get_run(second["run_id"])
    finally:
        db.dispose()
    assert first is not None and first.input_context == {"n": 3} and first.workflow_version == wf.version
    assert other is not None and other.input_context == {}
