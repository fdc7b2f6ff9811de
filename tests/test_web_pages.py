"""The console's HTML without a browser: the app of ``cloacina web`` in process (Starlette's test client) over an
embedded runner's real database, on SQLite and PostgreSQL. The DAG layout is checked on its own too.

What a browser adds (live refresh, switches, buttons) is in ``tests/test_web_console.py``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import cloacina as cloaca
from cloacina.web.app import create_app
from cloacina.web.console.dag import NODE_HEIGHT, NODE_WIDTH, layout_dag, task_levels
from cloacina.web.settings import WebSettings
from tests.support import wait_until

ADMIN = ("admin", "s3cret-pass")
VIEWER = ("viewer", "look-only")
FAST_RETRY = cloaca.RetryPolicy.builder().max_attempts(2).initial_delay(0.05).with_jitter(False).build()


# -- the layout ----------------------------------------------------------------------------------------------
def test_levels_follow_the_deepest_dependency() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"], "lone": []}
    assert task_levels(deps) == {"a": 0, "b": 1, "c": 2, "d": 3, "lone": 0}
    layout = layout_dag(deps)
    assert [(e.source, e.target) for e in layout.edges] == [("a", "b"), ("b", "c"), ("a", "d"), ("c", "d")]
    assert layout.node("d").x > layout.node("c").x > layout.node("b").x > layout.node("a").x
    assert layout.node("lone").level == 0


def test_barycenter_ordering_uncrosses_a_fan_in() -> None:
    # Declared so that a naive order crosses: x1 feeds y2, x2 feeds y1.
    layout = layout_dag({"x1": [], "x2": [], "y2": ["x1"], "y1": ["x2"]})
    rows = {n.task_id: n.row for n in layout.nodes}
    assert (rows["x1"] < rows["x2"]) == (rows["y2"] < rows["y1"])


def test_unknown_dependencies_and_an_empty_graph() -> None:
    assert task_levels({"a": ["not-in-the-run"]}) == {"a": 0}
    empty = layout_dag({})
    assert empty.nodes == () and empty.edges == ()


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    size = draw(st.integers(min_value=1, max_value=14))
    names = [f"t{i}" for i in range(size)]
    return {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        for i, name in enumerate(names)
    }


@given(dags())
@settings(max_examples=150, deadline=None)
def test_layout_properties(deps: dict[str, list[str]]) -> None:
    layout = layout_dag(deps)
    assert sorted(n.task_id for n in layout.nodes) == sorted(deps)
    assert len(layout.edges) == sum(len(d) for d in deps.values())
    for edge in layout.edges:  # every edge runs left to right, from a dependency to its task
        assert layout.node(edge.source).level < layout.node(edge.target).level
        assert edge.source in deps[edge.target]
    boxes = [(n.x, n.y) for n in layout.nodes]
    assert len(set(boxes)) == len(boxes)  # no two tasks share a place
    for n in layout.nodes:
        assert n.x >= 0 and n.x + NODE_WIDTH <= layout.width
        assert n.y >= 0 and n.y + NODE_HEIGHT <= layout.height


# -- pages over a real database ------------------------------------------------------------------------------
def _declare_etl() -> None:
    with cloaca.WorkflowBuilder("etl") as builder:
        builder.description("Extract, check and load")

        @cloaca.task(id="extract")
        def extract(ctx: Any) -> Any:
            return ctx

        @cloaca.task(id="clean", dependencies=["extract"])
        def clean(ctx: Any) -> Any:
            return ctx

        @cloaca.task(id="check", dependencies=["extract"], retry=FAST_RETRY)
        def check(ctx: Any) -> Any:
            raise RuntimeError("bad <row> & worse")

        @cloaca.task(id="load", dependencies=["clean", "check"])
        def load(ctx: Any) -> Any:
            return ctx

    with cloaca.WorkflowBuilder("tiny") as builder:

        @cloaca.task(id="only")
        def only(ctx: Any) -> Any:
            return ctx

    @cloaca.trigger(workflow="tiny", poll_interval="100ms", name="broken_probe")
    def broken_probe() -> Any:
        raise ConnectionError("sensor <offline>")


@pytest.fixture
def console(make_runner: Any) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:
    """A runner that ran one failed ``etl`` run and one completed ``tiny`` run, and the web app over it."""
    _declare_etl()
    runner = make_runner()
    failed = runner.execute("etl", cloaca.Context({"file": "a.csv"}))
    done = runner.execute("tiny", cloaca.Context({}))
    runner.register_cron_workflow("tiny", "0 2 * * *", "UTC")
    wait_until(lambda: (runner.get_trigger_schedule("broken_probe") or {}).get("error_count"), 30, message="a poll")
    runner.set_trigger_enabled("broken_probe", False)
    settings = WebSettings(
        auth=f"{ADMIN[0]}:{ADMIN[1]}",
        readonly_auth=f"{VIEWER[0]}:{VIEWER[1]}",
        flower_url="http://flower.example:5555/",
    )
    with TestClient(create_app(settings, runner=runner)) as http:
        yield http, runner, {"failed": failed.run_id, "done": done.run_id}


def test_pages_need_a_login(console: Any) -> None:
    http, _, ids = console
    for path in ("/", "/runs", f"/runs/{ids['failed']}", "/triggers", "/cron", "/packages", "/workers"):
        response = http.get(path, follow_redirects=False)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic")
    assert http.get("/runs", auth=("admin", "wrong")).status_code == 401
    assert http.get("/", auth=ADMIN, follow_redirects=False).headers["location"] == "/runs"


def test_run_page_draws_the_dag_coloured_by_status(console: Any) -> None:
    http, _, ids = console
    response = http.get(f"/runs/{ids['failed']}", auth=ADMIN)
    assert response.status_code == 200
    html = response.text
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    svg = html[html.index("<svg") : html.index("</svg>")]
    found = re.findall(r'<a href="#task-[^"]+" class="node s-(\w+)" data-task="(\w+)"', svg)
    assert {task: status for status, task in found} == {
        "extract": "Completed",
        "clean": "Completed",
        "check": "Failed",
        "load": "Completed",
    }
    edges = set(re.findall(r'data-from="(\w+)" data-to="(\w+)"', svg))
    assert edges == {("extract", "clean"), ("extract", "check"), ("clean", "load"), ("check", "load")}
    assert "Failed · 2 attempts" in svg
    # Attempts, errors (escaped, never raw HTML) and timings of each task.
    check_rows = html[html.index('id="task-check"') :].split("</tbody>")[0]
    assert check_rows.count('class="attempt"') == 2
    assert "bad &lt;row&gt; &amp; worse" in check_rows and "<row>" not in html
    assert "2 / 2" in check_rows
    assert "Retry from failure" not in html  # no broker: retrying needs the workers
    assert "data-live-stop" in html  # the run ended: the page stops refreshing itself


def test_run_page_partial_and_unknown_runs(console: Any) -> None:
    http, _, ids = console
    partial = http.get(f"/runs/{ids['done']}?partial=1", auth=ADMIN)
    assert partial.status_code == 200 and "<html" not in partial.text and "<svg" in partial.text
    for bad in ("00000000-0000-0000-0000-000000000000", "not-a-run-id", "x" * 500):
        response = http.get(f"/runs/{bad}", auth=ADMIN)
        assert response.status_code == 404 and "Run not found" in response.text
        assert response.headers["content-type"].startswith("text/html")


def test_runs_page_filters(console: Any) -> None:
    http, _, ids = console

    def listed(query: str) -> set[str]:
        response = http.get(f"/runs?{query}&partial=1", auth=ADMIN)
        assert response.status_code == 200
        return set(re.findall(r'data-row-key="([^"]+)"', response.text))

    assert listed("") == {ids["failed"], ids["done"]}
    assert listed("status=Failed") == {ids["failed"]}
    assert listed("workflow=tiny") == {ids["done"]}
    assert listed("workflow=tiny&status=Failed") == set()
    assert listed("trigger=broken_probe") == set()
    full = http.get("/runs?status=Completed", auth=ADMIN).text
    assert '<option value="Completed" selected>' in full
    assert 'data-live-url="/runs?status=Completed&amp;partial=1"' in full
    assert "needs the Celery broker" in full  # no broker: no start form


@pytest.mark.parametrize(
    "query", ["status=Bogus", "offset=-1", "offset=abc", "workflow=" + "w" * 201, "trigger=a%00b", "status=" + "S" * 99]
)
def test_runs_page_bad_filters_are_4xx(console: Any, query: str) -> None:
    http, _, _ = console
    response = http.get(f"/runs?{query}", auth=ADMIN)
    assert 400 <= response.status_code < 500


def test_triggers_page_counters_error_and_switch(console: Any) -> None:
    http, _, _ = console
    html = http.get("/triggers", auth=ADMIN).text
    row = html[html.index('data-trigger="broken_probe"') :].split("</tr>")[0]
    assert 'data-enabled="false"' in html
    assert "sensor &lt;offline&gt;" in row
    assert re.search(r'<input type="checkbox" role="switch" name="enabled"\s+data-api-method="PATCH"', row)
    assert 'data-api-url="/api/v1/triggers/broken_probe"' in row
    viewer = http.get("/triggers", auth=VIEWER).text
    assert re.search(r'role="switch" name="enabled"\s+disabled', viewer)  # read-only: switches are inert


def test_cron_packages_and_workers_pages(console: Any) -> None:
    http, runner, _ = console
    cron = http.get("/cron", auth=ADMIN).text
    assert "0 2 * * *" in cron and "(in " in cron  # the next due time is in the future
    schedule_id = runner.list_cron_schedules()[0]["id"]
    assert f'data-api-method="PATCH" data-api-url="/api/v1/cron/{schedule_id}"' in cron
    packages = http.get("/packages", auth=ADMIN).text
    assert "Extract, check and load" in packages and "extract, clean, check, load" in packages
    workers = http.get("/workers", auth=ADMIN).text
    assert '<a href="http://flower.example:5555/"' in workers
    assert "No broker is configured" in workers
    assert re.search(r'<th scope="row" class="mono">[^<]+:\d+</th>', workers)  # host:pid ran attempts


def test_cancel_button_for_writers_only(console: Any) -> None:
    http, runner, _ = console
    release = threading.Event()
    with cloaca.WorkflowBuilder("held"):

        @cloaca.task(id="wait")
        def wait(ctx: Any) -> Any:
            release.wait(30)
            return ctx

    run_id = runner.start_run("held", {})
    try:
        wait_until(lambda: runner.runs.get_run(run_id).status.value == "Running", 30, message="the run to start")
        admin = http.get(f"/runs/{run_id}", auth=ADMIN).text
        assert f'data-api-url="/api/v1/runs/{run_id}/cancel"' in admin and "data-live-stop" not in admin
        viewer = http.get(f"/runs/{run_id}", auth=VIEWER).text
        assert "viewer (read-only)" in viewer and "data-api-url" not in viewer
    finally:
        release.set()


def test_flower_link_must_be_http(make_runner: Any) -> None:
    runner = make_runner()
    settings = WebSettings(auth="a:b", flower_url="javascript:alert(1)")
    with TestClient(create_app(settings, runner=runner)) as http:
        html = http.get("/workers", auth=("a", "b")).text
    assert "javascript:" not in html and "Set <code>CLOACINA_WEB_FLOWER_URL</code>" in html


def test_static_files(console: Any) -> None:
    http, _, _ = console
    css = http.get("/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = http.get("/static/console.js")
    assert js.status_code == 200 and "X-Cloacina-CSRF" in js.text
    for bad in ("/static/nope.js", "/static/..%2Fapp.py", "/static/%00"):
        assert http.get(bad).status_code == 404
