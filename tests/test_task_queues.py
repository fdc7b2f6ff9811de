"""Routing tasks to queues (DESIGN §4b), without worker processes: ``@task(queue=...)`` and
``builder.default_queue(...)``, a task's effective queue (its own > the workflow's default > the deployment's),
stretches cut where the queue changes, each message published to its queue (on a real Redis broker), the catalog
keeping the queues for code-less clients, a finish starting next only a task of the caller's queue (PostgreSQL),
and the worker of each attempt in the store, the HTTP API, the console and ``cloacina runs show``.

The distributed behaviour (two workers, each running only its queue's tasks) is in
``tests/test_distributed_queues.py``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from conftest import PG_URL
from sqlalchemy import text

import cloacina as cloaca
from cloacina.cli.main import main
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.canvas import publish_stretches, queue_of_message, stretch_from, stretches
from cloacina.dispatch.celery_app import CeleryOptions, create_app
from cloacina.execution.coordinator import RunCoordinator
from cloacina.store.catalog import CatalogStore, codeless_workflow
from cloacina.store.database import Database
from cloacina.store.runs import ContinueWith, RunStore

DEPLOYMENT_QUEUE = "cloacina"


def _chain(name: str, spec: list[tuple[str, list[str], str | None]], default_queue: str | None = None) -> Workflow:
    """A workflow of ``(task id, dependencies, queue)`` triples, registered by its ``with`` block."""
    with cloaca.WorkflowBuilder(name) as builder:
        if default_queue is not None:
            builder.default_queue(default_queue)
        for task_id, deps, queue in spec:
            cloaca.task(id=task_id, dependencies=deps, queue=queue)(lambda ctx, _t=task_id: {**ctx, _t: True})
    return registry.get_workflow(builder.name)


# -- declaring queues -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", " ", "a b", "gpu/large", "q\n", "é", "x" * 201, 3, 1.5, b"heavy", ["heavy"], True])
def test_a_bad_queue_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="queue"):
        cloaca.task(id="t", queue=bad)(lambda ctx: ctx)
    with pytest.raises(ValueError, match="default_queue"):
        cloaca.WorkflowBuilder("bad_default").default_queue(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["heavy", "gpu.large", "tenant:gpu", "a-b_c", "Q9", "x" * 200])
def test_queue_names_of_letters_digits_and_separators_are_accepted(good: str) -> None:
    workflow = _chain(f"good_{len(good)}", [("t", [], good)])
    assert workflow.queue_of("t") == good


def test_the_effective_queue_is_the_tasks_then_the_workflows_then_the_deployments() -> None:
    spec: list[tuple[str, list[str], str | None]] = [("own", [], "gpu"), ("other", [], None)]
    routed = _chain("q_default", spec, default_queue="heavy")
    assert routed.default_queue == "heavy"
    assert (routed.queue_of("own"), routed.queue_of("other")) == ("gpu", "heavy")
    plain = _chain("q_plain", spec)
    assert (plain.queue_of("own"), plain.queue_of("other")) == ("gpu", None)  # None: the deployment's queue
    assert queue_of_message(plain, ["other"], DEPLOYMENT_QUEUE) == DEPLOYMENT_QUEUE
    assert queue_of_message(plain, ["own"], DEPLOYMENT_QUEUE) == "gpu"
    assert queue_of_message(routed, ["other"], DEPLOYMENT_QUEUE) == "heavy"


def test_default_queue_set_before_build_and_reset_with_none() -> None:
    with cloaca.WorkflowBuilder("q_build") as builder:
        cloaca.task(id="t")(lambda ctx: ctx)
        builder.add_task("t")
    builder.default_queue("heavy")
    assert builder.build().queue_of("t") == "heavy"
    builder.default_queue(None)
    assert builder.build().queue_of("t") is None


def test_a_queue_is_part_of_the_workflow_version_and_no_queue_changes_nothing() -> None:
    body = lambda ctx: ctx  # noqa: E731 - one code object for every variant: only the queue differs
    versions = {}
    for name, queue, default in (("plain", None, None), ("routed", "heavy", None), ("by_default", None, "heavy")):
        with cloaca.WorkflowBuilder("q_version") as builder:
            if default is not None:
                builder.default_queue(default)
            cloaca.task(id="t", queue=queue)(body)
            builder.add_task("t")
        versions[name] = builder.build().version
    assert versions["routed"] != versions["plain"]
    assert versions["routed"] == versions["by_default"]  # the same effective queue is the same graph


# -- stretches and messages -----------------------------------------------------------------------------------
def test_a_stretch_is_cut_where_the_queue_changes() -> None:
    chain = _chain(
        "q_chain",
        [("light", [], None), ("heavy", ["light"], "heavy"), ("heavy2", ["heavy"], "heavy"),
         ("light2", ["heavy2"], None)],
    )  # fmt: skip
    assert stretches(chain) == [["light"], ["heavy", "heavy2"], ["light2"]]
    assert stretch_from(chain, "heavy") == ["heavy", "heavy2"]
    assert stretches(chain, fuse=False) == [["light"], ["heavy"], ["heavy2"], ["light2"]]
    unrouted = _chain("q_unrouted", [("light", [], None), ("heavy", ["light"], None), ("light2", ["heavy"], None)])
    assert stretches(unrouted) == [["light", "heavy", "light2"]]  # no queue: one stretch, as before
    # a fan-out whose branch of another queue goes on with a stretch of that queue
    fan = _chain(
        "q_fan",
        [("a", [], None), ("b1", ["a"], None), ("b2", ["a"], "heavy"), ("c2", ["b2"], "heavy"),
         ("d", ["b1", "c2"], None)],
    )  # fmt: skip
    assert stretches(fan) == [["a"], ["b1"], ["b2", "c2"], ["d"]]


def _queue_lengths(url: str, *queues: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    try:
        return {q: int(client.llen(q)) for q in queues}  # type: ignore[arg-type]
    finally:
        client.close()


def test_each_message_is_published_to_its_tasks_queue(redis_url: str) -> None:
    fan = _chain(
        "q_publish",
        [("a", [], None), ("b1", ["a"], None), ("b2", ["a"], "heavy"), ("b3", ["a"], "gpu"),
         ("d", ["b1", "b2", "b3"], None)],
    )  # fmt: skip
    app = create_app(CeleryOptions(broker_url=redis_url, result_url=redis_url, queue=DEPLOYMENT_QUEUE))
    try:
        assert publish_stretches(app, "run-1", fan, ["b1", "b2", "b3"], DEPLOYMENT_QUEUE) == 3
    finally:
        app.close()
    assert _queue_lengths(redis_url, DEPLOYMENT_QUEUE, "heavy", "gpu") == {DEPLOYMENT_QUEUE: 1, "heavy": 1, "gpu": 1}
    client = redis.Redis.from_url(redis_url)
    try:
        sent = {q: json.loads(client.lindex(q, 0)) for q in (DEPLOYMENT_QUEUE, "heavy")}  # type: ignore[arg-type]
    finally:
        client.close()
    assert sent["heavy"]["headers"]["kwargsrepr"] == "{'workflow': 'q_publish', 'run_id': 'run-1', 'tasks': ['b2']}"
    for queue, message in sent.items():  # the routing key is the queue's name: what a worker reads back
        assert message["properties"]["delivery_info"]["routing_key"] == queue


# -- the catalog: a client without the code routes as one with it --------------------------------------------
def test_the_catalog_keeps_each_tasks_queue_for_code_less_clients(tmp_path: Path) -> None:
    workflow = _chain("q_catalog", [("a", [], None), ("b", ["a"], "gpu"), ("c", ["b"], None)], default_queue="heavy")
    unrouted = _chain("q_catalog_plain", [("a", [], None)])
    db = Database(f"sqlite:///{tmp_path}/catalog.db")
    db.upgrade()
    try:
        CatalogStore(db).record_all([(workflow, "code"), (unrouted, "code")])
        entry = CatalogStore(db).get_workflow("q_catalog")
        with db.connection() as c:
            stored = dict(c.execute(text("SELECT name, tasks FROM workflow_catalog")).all())
    finally:
        db.dispose()
    # A task routed nowhere is stored as before routing existed: older processes read such entries unchanged.
    assert "queue" not in json.loads(stored["q_catalog_plain"])[0]
    assert [t["queue"] for t in json.loads(stored["q_catalog"])] == ["heavy", "gpu", "heavy"]
    assert entry is not None and [t.queue for t in entry.tasks] == ["heavy", "gpu", "heavy"]
    codeless = codeless_workflow(entry)
    assert codeless.version == workflow.version
    assert {t: codeless.queue_of(t) for t in "abc"} == {t: workflow.queue_of(t) for t in "abc"}
    assert stretches(codeless) == stretches(workflow) == [["a"], ["b"], ["c"]]


# -- a finish starts next only a task of the caller's queue (PostgreSQL's one-statement finish) -------------
@pytest.fixture
def store(pg_schema: str) -> Iterator[RunStore]:
    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    yield RunStore(db)
    db.dispose()


def _coordinator(store: RunStore) -> RunCoordinator:
    return RunCoordinator(store, lambda name, version, fingerprint: registry.get_workflow(name), worker_name="h:1")


@pytest.mark.postgres
def test_a_finish_starts_next_only_a_task_routed_to_the_callers_queue(store: RunStore) -> None:
    fan = _chain("q_continue", [("a", [], None), ("h", ["a"], "heavy"), ("l", ["a"], None), ("d", ["h", "l"], None)])
    coordinator = _coordinator(store)
    here = {"queue": DEPLOYMENT_QUEUE, "deployment_queue": DEPLOYMENT_QUEUE}

    run_id = coordinator.create_run(fan, {})
    assert run_id is not None
    outcome = coordinator.run_node(run_id, "a", continue_with=ContinueWith(None, first_ready=True, **here))
    # h comes first, but it is routed to "heavy": the worker of "cloacina" goes on with l and hands h back
    assert outcome.continued is not None and outcome.continued[0] == "l" and outcome.ready == ("h",)
    tasks = store.get_tasks(run_id)
    assert (str(tasks["h"].status), str(tasks["l"].status)) == ("Ready", "Running")

    run_id = coordinator.create_run(fan, {})
    assert run_id is not None
    on_heavy = ContinueWith(None, first_ready=True, queue="heavy", deployment_queue=DEPLOYMENT_QUEUE)
    outcome = coordinator.run_node(run_id, "a", continue_with=on_heavy)  # a worker of "heavy" takes h only
    assert outcome.continued is not None and outcome.continued[0] == "h" and outcome.ready == ("l",)

    chain = _chain("q_continue_chain", [("a", [], None), ("h", ["a"], "heavy")])
    run_id = coordinator.create_run(chain, {})
    assert run_id is not None
    outcome = coordinator.run_node(run_id, "a", continue_with=ContinueWith("h", first_ready=True, **here))
    assert outcome.continued is None and outcome.ready == ("h",)  # even a preferred task of another queue
    assert str(store.get_tasks(run_id)["h"].status) == "Ready"


# -- which worker ran each attempt ------------------------------------------------------------------------
def test_the_worker_of_each_attempt_shows_in_the_store_api_console_and_cli(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cloacina.web.app import create_app as create_web_app
    from cloacina.web.settings import WebSettings

    calls = {"n": 0}

    def flaky(ctx: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("once")
        return ctx

    with cloaca.WorkflowBuilder("q_workers"):
        cloaca.task(id="flaky", retry_attempts=2, retry_delay_ms=1, retry_jitter=False)(flaky)
    url = f"sqlite:///{tmp_path}/workers.db"
    me = f"{socket.gethostname()}:{os.getpid()}"  # an embedded runner's tasks run in this process
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(url, config) as runner:
        run_id = runner.execute("q_workers", cloaca.Context({})).run_id
        attempts = runner.runs.get_attempts(run_id, "flaky")
        assert [(a.attempt, a.status, a.worker) for a in attempts] == [(1, "Failed", me), (2, "Completed", me)]
        with TestClient(create_web_app(WebSettings(auth="a:b"), runner=runner)) as http:
            detail = http.get(f"/api/v1/runs/{run_id}", auth=("a", "b")).json()
            page = http.get(f"/runs/{run_id}", auth=("a", "b")).text
    (task,) = detail["tasks"]
    assert [a["worker"] for a in task["attempts"]] == [me, me]
    assert '<th scope="col">Worker</th>' in page and page.count(f'<td class="mono">{me}</td>') == 2

    cli = CliRunner(env={"COLUMNS": "200"})
    shown = json.loads(cli.invoke(main, ["runs", "show", run_id, "--db", url, "--json"]).stdout)
    assert [a["worker"] for a in shown["tasks"][0]["attempts"]] == [me, me]
    table = cli.invoke(main, ["runs", "show", run_id, "--db", url])
    assert table.exit_code == 0 and f"#1: {me}" in table.stdout and f"#2: {me}" in table.stdout
