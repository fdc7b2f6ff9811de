"""Where pools are managed: ``cloacina pools set|list|delete`` (click's CliRunner on a SQLite file), the HTTP API
``/api/v1/pools`` and the console page ``/pools`` (the web app in process, Starlette's test client, on SQLite and
PostgreSQL), including every 4xx and the read-only user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

import cloacina as cloaca
from cloacina.cli.main import main
from cloacina.web.app import create_app
from cloacina.web.settings import WebSettings
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
ADMIN = ("admin", "s3cret-pass")
VIEWER = ("viewer", "look-only")


def cli(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)


# -- CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/pools.db"
    assert cli("db", "upgrade", "--db", url).exit_code == 0
    return url


def test_cli_set_list_delete(db: str) -> None:
    assert "No pools yet" in cli("pools", "list", "--db", db).stdout
    created = cli("pools", "set", "warehouse", "--slots", "4", "--description", "the DWH", "--db", db)
    assert created.exit_code == 0 and "created with 4 slot(s)" in created.stdout
    resized = cli("pools", "set", "warehouse", "--slots", "0", "--db", db)
    assert resized.exit_code == 0 and "4 -> 0" in resized.stdout
    rows = json.loads(cli("pools", "list", "--db", db, "--json").stdout)
    assert [(r["name"], r["slots"], r["used"], r["waiting"], r["description"]) for r in rows] == [
        ("warehouse", 0, 0, 0, "the DWH")
    ]
    table = cli("pools", "list", "--db", db)
    assert table.exit_code == 0 and "warehouse" in table.stdout and "paused" in table.stdout
    deleted = cli("pools", "delete", "warehouse", "--db", db)
    assert deleted.exit_code == 0 and "deleted" in deleted.stdout


def test_cli_errors(db: str) -> None:
    negative = cli("pools", "set", "warehouse", "--slots", "-1", "--db", db)
    assert negative.exit_code == 2 and "must be >= 0" in negative.stderr
    bad_name = cli("pools", "set", "bad name", "--slots", "1", "--db", db)
    assert bad_name.exit_code == 1 and "invalid pool name" in bad_name.stderr
    unknown = cli("pools", "delete", "nope", "--db", db)
    assert unknown.exit_code == 1 and "unknown pool 'nope'" in unknown.stderr
    assert cli("pools", "set", "warehouse", "--db", db).exit_code == 2  # --slots is required


# -- HTTP API and console -------------------------------------------------------------------------------------
@pytest.fixture
def web(make_runner: Any) -> Iterator[tuple[TestClient, Any]]:
    runner = make_runner()
    settings = WebSettings(auth=f"{ADMIN[0]}:{ADMIN[1]}", readonly_auth=f"{VIEWER[0]}:{VIEWER[1]}")
    with TestClient(create_app(settings, runner=runner)) as http:
        yield http, runner


def test_api_put_get_delete(web: Any) -> None:
    http, runner = web
    assert http.get("/api/v1/pools", auth=ADMIN).json() == {"pools": []}
    put = http.put("/api/v1/pools/warehouse", json={"slots": 3, "description": "DWH"}, auth=ADMIN)
    assert put.status_code == 200, put.text
    body = put.json()
    assert (body["name"], body["slots"], body["used"], body["waiting"], body["description"]) == (
        "warehouse",
        3,
        0,
        0,
        "DWH",
    )
    assert http.put("/api/v1/pools/warehouse", json={"slots": 0}, auth=ADMIN).json()["description"] == "DWH"
    assert http.put("/api/v1/pools/other", json={"slots": 2.0}, auth=ADMIN).json()["slots"] == 2  # a JSON integer
    assert http.delete("/api/v1/pools/other", auth=ADMIN).status_code == 204
    assert runner.get_pool("warehouse")["slots"] == 0
    listed = http.get("/api/v1/pools", auth=VIEWER).json()["pools"]
    assert [(p["name"], p["slots"]) for p in listed] == [("warehouse", 0)]
    assert http.get("/api/v1/pools/warehouse", auth=VIEWER).json()["slots"] == 0
    assert http.delete("/api/v1/pools/warehouse", auth=ADMIN).status_code == 204
    assert http.delete("/api/v1/pools/warehouse", auth=ADMIN).status_code == 404
    assert http.get("/api/v1/pools/warehouse", auth=ADMIN).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"slots": -1},
        {"slots": "2"},
        {"slots": 1.5},
        {"slots": 1e300},
        {"slots": True},
        {},
        {"slots": 1, "extra": 1},
        {"slots": 2**40},
        {"slots": 1, "description": "a\x00b"},
    ],
)
def test_api_refuses_bad_bodies_with_422(web: Any, body: dict[str, Any]) -> None:
    http, _ = web
    response = http.put("/api/v1/pools/warehouse", json=body, auth=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"


def test_api_errors_are_4xx(web: Any) -> None:
    http, _ = web
    assert http.put("/api/v1/pools/bad%20name", json={"slots": 1}, auth=ADMIN).status_code == 422
    assert http.put("/api/v1/pools/" + "x" * 300, json={"slots": 1}, auth=ADMIN).status_code == 422
    assert http.delete("/api/v1/pools/" + "x" * 300, auth=ADMIN).status_code == 404
    not_json = http.put(
        "/api/v1/pools/warehouse", content=b"{", headers={"content-type": "application/json"}, auth=ADMIN
    )
    assert 400 <= not_json.status_code < 500
    assert http.get("/api/v1/pools").status_code == 401
    readonly = http.put("/api/v1/pools/warehouse", json={"slots": 1}, auth=VIEWER)
    assert readonly.status_code == 403
    assert http.delete("/api/v1/pools/warehouse", auth=VIEWER).status_code == 403


def test_console_page_lists_slots_used_and_waiting(web: Any) -> None:
    http, runner = web
    assert http.get("/pools").status_code == 401
    assert "No pool" in http.get("/pools", auth=VIEWER).text
    runner.set_pool("warehouse", 0, description="paused <DWH>")
    with cloaca.WorkflowBuilder("console_pool") as builder:
        cloaca.task(id="t", pool="warehouse")(lambda ctx: ctx)
    handle = runner.execute_async(builder.name, cloaca.Context({}))
    try:
        wait_until(lambda: runner.get_pool("warehouse")["waiting"] == 1, 30, message="the task to wait")
        page = http.get("/pools", auth=VIEWER)
        assert page.status_code == 200
        html = page.text
        assert 'href="/pools"' in html  # in the nav
        assert 'data-row-key="warehouse" data-slots="0" data-used="0" data-waiting="1"' in html
        assert "paused &lt;DWH&gt;" in html
        partial = http.get("/pools?partial=1", auth=VIEWER).text
        assert "<nav" not in partial and 'data-waiting="1"' in partial
        runner.set_pool("warehouse", 1)
        assert handle.wait(timeout=30).status == "Completed"
    finally:
        runner.set_pool("warehouse", 1)
