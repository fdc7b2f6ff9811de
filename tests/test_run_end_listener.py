"""PostgreSQL announces run ends itself (migration 0005's trigger) and :class:`PgRunEndNotices` hears them.

Real PostgreSQL, a schema of the test's own (a second one for the isolation case); the runs are ended through
the store, as a worker or the sweeper would end them, and nobody publishes anything.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.states import RunStatus
from cloacina.store.database import Database
from cloacina.store.run_end_listener import PgRunEndNotices, run_end_channel
from cloacina.store.runs import RunStore
from tests.conftest import PG_URL, require_postgres
from tests.support import declare_one_task_workflow, sent_statements, wait_until


@pytest.fixture
def other_schema() -> Iterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _workflow(name: str) -> Workflow:
    declare_one_task_workflow(name)
    return registry.get_workflow(name)


def _store(schema: str) -> RunStore:
    db = Database(PG_URL, schema=schema)
    db.upgrade()
    return RunStore(db)


def test_a_run_that_ends_is_announced_on_its_own_schemas_channel_only(pg_schema: str, other_schema: str) -> None:
    workflow = _workflow("announced_wf")
    mine, theirs = _store(pg_schema), _store(other_schema)
    heard: list[str] = []
    heard_elsewhere: list[str] = []
    listeners = [PgRunEndNotices(mine.db), PgRunEndNotices(theirs.db)]
    try:
        listeners[0].listen(heard.append)
        listeners[1].listen(heard_elsewhere.append)
        wait_until(lambda: all(n.listening for n in listeners), 10, message="LISTEN")
        run_id = mine.create_run(workflow, {"n": 1})
        assert run_id is not None
        mine.finish_run(run_id, RunStatus.COMPLETED, {"n": 1}, None)
        wait_until(lambda: heard == [run_id], 10, message="the end of the run")
        time.sleep(0.3)  # a second notice, or one on the other schema's channel, would have arrived by now
        assert heard == [run_id]
        assert heard_elsewhere == []
        listeners[1].publish(run_id)  # publishing is the database's job: a no-op here
        with pytest.raises(RuntimeError, match="already listening"):
            listeners[0].listen(print)
    finally:
        for listener in listeners:
            listener.stop()
    assert not listeners[0].listening


def test_a_rolled_back_end_and_a_non_terminal_change_are_not_announced(pg_schema: str) -> None:
    store = _store(pg_schema)
    run_id = store.create_run(_workflow("quiet_wf"), {})
    assert run_id is not None
    conninfo = PG_URL
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute(f'LISTEN "{run_end_channel(pg_schema)}"')
        with psycopg.connect(conninfo, options=f"-c search_path={pg_schema}") as writer:
            writer.execute("UPDATE workflow_runs SET status = 'Completed' WHERE id = %s", (run_id,))
            writer.rollback()
            writer.execute("UPDATE workflow_runs SET status = 'Running' WHERE id = %s", (run_id,))
            writer.commit()
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
        store.finish_run(run_id, RunStatus.FAILED, {}, "boom")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == [run_id]


def test_the_listener_reconnects_after_its_connection_is_killed(pg_schema: str) -> None:
    store = _store(pg_schema)
    workflow = _workflow("reconnect_wf")
    heard: list[str] = []
    listener = PgRunEndNotices(store.db)
    try:
        listener.listen(heard.append)
        wait_until(lambda: listener.listening, 10, message="LISTEN")
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'"
                " AND query LIKE %s",
                (f"%{run_end_channel(pg_schema)}%",),
            ).fetchone()
        assert killed is not None and killed[0] == 1
        wait_until(lambda: not listener.listening, 10, message="the listener noticing the lost connection")
        wait_until(lambda: listener.listening, 10, message="LISTEN again")
        run_id = store.create_run(workflow, {})
        assert run_id is not None
        store.finish_run(run_id, RunStatus.COMPLETED, {}, None)
        wait_until(lambda: heard == [run_id], 10, message="a notice after the reconnect")
    finally:
        listener.stop()


def test_a_broker_mode_client_on_postgresql_wakes_on_the_databases_notice(pg_schema: str, redis_url: str) -> None:
    workflow = _workflow("pg_notice_wf")
    config = cloaca.DefaultRunnerConfig(broker_url=redis_url)
    with cloaca.DefaultRunner.with_schema_config(PG_URL, pg_schema, config) as runner:
        notices = runner._notices
        assert isinstance(notices, PgRunEndNotices)
        wait_until(lambda: notices.listening, 10, message="LISTEN")
        run_id = runner.coordinator.store.create_run(workflow, {"n": 1})  # as if sent; no worker runs it
        assert run_id is not None

        def finish_elsewhere() -> None:
            wait_until(lambda: run_id in runner._waiters, 10, message="the waiter")
            time.sleep(0.5)  # the run ends while the client waits (the behaviour under test), not at once
            RunStore(Database(PG_URL, schema=pg_schema)).finish_run(run_id, RunStatus.COMPLETED, {"n": 1}, None)

        finisher = threading.Thread(target=finish_elsewhere)
        finisher.start()
        with sent_statements() as sent:  # every pool of the process, the driver-level reads included
            result = runner.wait_for_run(run_id, timeout=30)
        finisher.join()
    run_reads = [statement for statement in sent if "FROM workflow_runs" in statement]
    assert result.status == "Completed"
    # One read before waiting and one after the notice; polling would have read ~7 times in its first 0.25 s.
    assert 1 <= len(run_reads) <= 3, run_reads


def test_without_a_schema_setting_the_listener_finds_the_schema_its_tables_are_in(
    pg_schema: str, other_schema: str
) -> None:
    # A URL whose search_path names the schemas (as docker-compose's does), no `schema=`; the first schema on the
    # path exists but holds no tables. The channel must be the one of the schema where `workflow_runs` resolves
    # (where the trigger fires), not the first one on the path.
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{pg_schema}"')
        admin.execute(f'CREATE SCHEMA "{other_schema}"')
    migrator = Database(f"{PG_URL}?options=-csearch_path%3D{pg_schema}")
    migrator.upgrade()
    migrator.dispose()
    db = Database(f"{PG_URL}?options=-csearch_path%3D{other_schema},{pg_schema}")
    store = RunStore(db)
    assert db.schema is None
    heard: list[str] = []
    listener = PgRunEndNotices(db)
    try:
        listener.listen(heard.append)
        wait_until(lambda: listener.listening, 10, message="LISTEN")
        run_id = store.create_run(_workflow("search_path_wf"), {})
        assert run_id is not None
        store.finish_run(run_id, RunStatus.COMPLETED, {}, None)
        wait_until(lambda: heard == [run_id], 10, message="the end of the run")
    finally:
        listener.stop()
        db.dispose()
