"""The HTTP API of ``cloacina web`` against a real server process (uvicorn started by ``python -m cloacina web``),
on a SQLite file and on PostgreSQL: every endpoint of the contract, every error code, the body limit.

Each backend gets one web process for the module (starting one per test would double the run time), on a
database seeded once by an embedded runner: a completed run, a failed run, a trigger-fired run, a trigger, a cron
schedule and a package. Tests that change something (start, cancel, retry, enable/disable) change objects of
their own or put them back, so no test depends on another's order. The web process has a broker (a private
Redis) but no worker: runs it starts stay Pending, except in the distributed test, which starts a worker.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PG_URL, require_postgres, require_redis_server
from package_fixtures import build_ingest

import cloacina as cloaca
from cloacina.context import context_hash
from cloacina.definitions import registry
from cloacina.packaging.archive import read_archive
from cloacina.store.database import Database
from cloacina.store.packages import PackageStore
from cloacina.store.runs import TriggerClaim
from tests.distributed_harness import (
    RedisServer,
    ServiceProcess,
    Services,
    fresh_schema,
    migrated_schema,
    service_db_url,
)
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(240)
NO_WEB_ENV: dict[str, str | None] = {
    "CLOACINA_WEB_AUTH": None,
    "CLOACINA_WEB_TOKEN": None,
    "CLOACINA_WEB_READONLY_AUTH": None,
    "CLOACINA_WEB_MAX_BODY_BYTES": None,
    "CLOACINA_DATABASE_URL": None,
    "CLOACINA_BROKER_URL": None,
    "CLOACINA_LOG_FORMAT": None,
    "CLOACINA_LOG_LEVEL": None,
}


# -- a web process ------------------------------------------------------------------------------------------
@dataclass
class Web:
    """A running ``cloacina web`` and an HTTP client for it."""

    base: str
    service: ServiceProcess
    headers: dict[str, str]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def ok(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, response.text
        return response.json()


def start_web(
    services: Services,
    db_url: str,
    *,
    name: str = "web",
    env: dict[str, str | None] | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> Web:
    """Start ``cloacina web`` on a free port and wait until ``/livez`` answers."""
    port = free_port()
    service = services.cloacina(
        name, "web", "--host", host, "--port", str(port), "--db", db_url, env={**NO_WEB_ENV, **(env or {})}
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not service.alive:
            raise AssertionError(f"cloacina web exited {service.proc.returncode}:\n{service.log_text()[-3000:]}")
        try:
            return httpx.get(base + "/livez", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 90, message=lambda: f"cloacina web to serve; log:\n{service.log_text()[-3000:]}")
    return Web(base, service, dict(headers or {}))


def assert_error(response: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """``response`` is the JSON error ``{"error", "detail"}`` with ``status``."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if error is not None:
        assert body["error"] == error, body
    return body


def rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 time with its offset (``Z`` or ``+00:00``); naive times are an error."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None and moment.utcoffset() is not None, value
    return moment


# -- the seeded database ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seeded:
    ok_run: str
    failed_run: str
    fired_run: str
    cron_id: str
    package_fingerprint: str


def _declare() -> None:
    with cloaca.WorkflowBuilder("web_ok") as builder:
        builder.description("two steps for the web tests")
        builder.tag("team", "web")

        @cloaca.task(id="extract")
        def extract(ctx: Any) -> Any:
            ctx.set("rows", 3)
            return ctx

        @cloaca.task(id="load", dependencies=["extract"])
        def load(ctx: Any) -> Any:
            ctx.set("loaded", ctx.get("rows"))
            return ctx

    with cloaca.WorkflowBuilder("web_fail"):

        @cloaca.task(id="boom", retry_attempts=1)
        def boom(ctx: Any) -> Any:
            raise RuntimeError("boom on purpose")

    @cloaca.trigger(name="web_trigger", workflow="web_ok", poll_interval="1h")
    def web_trigger() -> None:
        return None


def seed(db_url: str, schema: str | None, tmp: Path) -> Seeded:
    """Runs, a trigger with one fire, a cron schedule and a package, made by an embedded runner (then shut down)."""
    saved = registry.snapshot()
    try:
        _declare()
        config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_recovery=False)
        with cloaca.DefaultRunner(db_url, config, schema=schema) as runner:
            ok = runner.execute("web_ok", {"n": 1})
            failed = runner.execute("web_fail", {"n": 2})
            assert (ok.status, failed.status) == ("Completed", "Failed")
            fired_ctx = {"file": "a.csv"}
            workflow = runner.deployment.workflows.get("web_ok")
            claim = TriggerClaim("web_trigger", context_hash(fired_ctx), dedup=True)
            fired = runner.coordinator.create_run(workflow, fired_ctx, trigger=claim)
            assert fired is not None
            assert runner.wait_for_run(fired, 60).status == "Completed"
            cron_id = runner.register_cron_workflow("web_ok", "0 3 * * *", "UTC")
            ok_id, failed_id = ok.run_id, failed.run_id
    finally:
        registry.restore(saved)
    db = Database(db_url, schema=schema, pool_size=1)
    try:
        archive = read_archive(build_ingest(tmp))
        PackageStore(db).put(archive, None, active=True)
    finally:
        db.dispose()
    return Seeded(ok_id, failed_id, fired, cron_id, archive.fingerprint)


@dataclass
class Site:
    backend: str
    web: Web
    seeded: Seeded
    services: Services
    db_url: str
    broker_url: str


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"web-{request.param}")
    require_redis_server()
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite-file":
            db_url = runner_url = f"sqlite:///{tmp}/cloacina.db"
            schema = None
        else:
            require_postgres()
            schema = stack.enter_context(fresh_schema(PG_URL))
            migrated_schema(PG_URL, schema)
            runner_url, db_url = PG_URL, service_db_url(PG_URL, schema)
        redis = stack.enter_context(RedisServer(tmp))
        seeded = seed(runner_url, schema, tmp)
        services = Services(tmp)
        stack.callback(services.dump_logs)
        stack.callback(services.stop_all)
        web = start_web(services, db_url, env={"CLOACINA_BROKER_URL": redis.url})
        yield Site(request.param, web, seeded, services, db_url, redis.url)
        assert "unhandled error" not in web.service.log_text(), "a request reached the 500 handler"


# -- workflows ----------------------------------------------------------------------------------------------
def test_workflows_come_from_the_catalog(site: Site) -> None:
    names = [w["name"] for w in site.web.ok("/api/v1/workflows")["workflows"]]
    assert {"web_ok", "web_fail"} <= set(names)
    assert names == sorted(names)
    wf = site.web.ok("/api/v1/workflows/web_ok")
    assert wf["description"] == "two steps for the web tests"
    tasks = {t["task_id"]: t for t in wf["tasks"]}
    assert tasks["load"]["dependencies"] == ["extract"]
    assert tasks["extract"]["dependencies"] == []
    assert wf["version"] and wf["origin"]
    rfc3339(wf["updated_at"])


@pytest.mark.parametrize("name", ["nope", "web_ok%00", "x" * 300, "%F0%9F%98%80"])
def test_unknown_workflow_is_404(site: Site, name: str) -> None:
    assert_error(site.web.get(f"/api/v1/workflows/{name}"), 404, "not_found")
    assert_error(site.web.post(f"/api/v1/workflows/{name}/runs", json={"context": {}}), 404, "not_found")


# -- runs ---------------------------------------------------------------------------------------------------
def test_runs_list_filters(site: Site) -> None:
    s = site.seeded
    everything = site.web.ok("/api/v1/runs?limit=1000")
    assert everything["limit"] == 1000 and everything["offset"] == 0
    ids = [r["run_id"] for r in everything["runs"]]
    assert {s.ok_run, s.failed_run, s.fired_run} <= set(ids)
    failed = site.web.ok("/api/v1/runs?status=Failed&limit=1000")["runs"]
    assert s.failed_run in [r["run_id"] for r in failed]
    assert {r["status"] for r in failed} == {"Failed"}
    by_workflow = site.web.ok("/api/v1/runs?workflow=web_fail")["runs"]
    assert [r["run_id"] for r in by_workflow] == [s.failed_run]
    by_trigger = site.web.ok("/api/v1/runs?trigger=web_trigger")["runs"]
    assert [r["run_id"] for r in by_trigger] == [s.fired_run]
    assert by_trigger[0]["trigger_name"] == "web_trigger"
    assert site.web.ok("/api/v1/runs?workflow=web_ok&status=Failed")["runs"] == []
    assert site.web.ok("/api/v1/runs?trigger=no_such_trigger")["runs"] == []


def test_runs_list_pages_newest_first(site: Site) -> None:
    everything = [r["run_id"] for r in site.web.ok("/api/v1/runs?limit=1000")["runs"]]
    created = [rfc3339(r["created_at"]) for r in site.web.ok("/api/v1/runs?limit=1000")["runs"]]
    assert created == sorted(created, reverse=True)
    paged = []
    for offset in range(len(everything)):
        page = site.web.ok(f"/api/v1/runs?limit=1&offset={offset}")
        assert page["limit"] == 1 and page["offset"] == offset
        paged += [r["run_id"] for r in page["runs"]]
    assert paged == everything
    assert site.web.ok(f"/api/v1/runs?offset={len(everything) + 10}")["runs"] == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=-1",
        "limit=1001",
        "limit=abc",
        "limit=1.5",
        "offset=-1",
        "offset=99999999999999999999",
        "status=Bogus",
        "status=failed",
        "workflow=a%00b",
        "trigger=" + "t" * 201,
    ],
)
def test_bad_run_filters_and_paging_are_422(site: Site, query: str) -> None:
    body = assert_error(site.web.get(f"/api/v1/runs?{query}"), 422, "invalid_request")
    assert body["detail"] and {"loc", "msg", "type"} <= set(body["detail"][0])


def test_run_detail(site: Site) -> None:
    run = site.web.ok(f"/api/v1/runs/{site.seeded.ok_run}")
    assert run["run_id"] == site.seeded.ok_run
    assert run["workflow_name"] == "web_ok"
    assert run["status"] == "Completed"
    assert run["input_context"] == {"n": 1}
    assert run["final_context"]["loaded"] == 3
    assert rfc3339(run["created_at"]) <= rfc3339(run["completed_at"])
    assert run["duration_ms"] is not None and run["duration_ms"] >= 0
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert set(tasks) == {"extract", "load"}
    for task in tasks.values():
        assert task["status"] == "Completed"
        assert [a["attempt"] for a in task["attempts"]] == [1]
        assert task["attempts"][0]["status"] == "Completed"
        assert rfc3339(task["started_at"]) <= rfc3339(task["completed_at"])
    assert tasks["load"]["output_context"]["loaded"] == 3


def test_failed_run_detail_has_the_error(site: Site) -> None:
    run = site.web.ok(f"/api/v1/runs/{site.seeded.failed_run.upper()}")  # ids are case-insensitive UUIDs
    assert run["run_id"] == site.seeded.failed_run
    assert run["status"] == "Failed"
    (task,) = run["tasks"]
    assert task["status"] == "Failed"
    assert "boom on purpose" in (task["error_message"] or "")
    assert len(task["attempts"]) == 1
    assert "boom on purpose" in (task["attempts"][0]["error_message"] or "")


@pytest.mark.parametrize("run_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid", "%00", "x" * 500])
def test_unknown_run_is_404(site: Site, run_id: str) -> None:
    assert_error(site.web.get(f"/api/v1/runs/{run_id}"), 404, "not_found")
    assert_error(site.web.post(f"/api/v1/runs/{run_id}/cancel"), 404, "not_found")
    assert_error(site.web.post(f"/api/v1/runs/{run_id}/retry"), 404, "not_found")


# -- starting, cancelling and retrying runs --------------------------------------------------------------------
def test_start_run_by_name(site: Site) -> None:
    response = site.web.post("/api/v1/workflows/web_ok/runs", json={"context": {"x": 1, "nested": {"a": [1, "b"]}}})
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"run_id"}
    run = site.web.ok(f"/api/v1/runs/{response.json()['run_id']}")
    assert run["workflow_name"] == "web_ok"
    assert run["input_context"] == {"x": 1, "nested": {"a": [1, "b"]}}
    assert run["status"] == "Pending"  # no worker in this module: it waits on the broker's queue
    empty = site.web.post("/api/v1/workflows/web_ok/runs")
    assert empty.status_code == 201, empty.text
    assert site.web.ok(f"/api/v1/runs/{empty.json()['run_id']}")["input_context"] == {}


@pytest.mark.parametrize(
    "body",
    [
        '{"context": []}',
        '{"context": "text"}',
        '{"context": 3}',
        '{"context": null}',
        "[]",
        '"context"',
        "not json",
        '{"context": {}, "extra": 1}',
        '{"context": {"s": "\\ud800"}}',  # a lone surrogate parses as JSON but cannot be stored
        '{"context": {',
    ],
)
def test_bad_context_is_422(site: Site, body: str) -> None:
    response = site.web.post(
        "/api/v1/workflows/web_ok/runs", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert_error(response, 422)


def test_oversized_body_is_413(site: Site) -> None:
    big = json.dumps({"context": {"blob": "x" * (1024 * 1024 + 10)}}).encode()
    by_length = site.web.post(
        "/api/v1/workflows/web_ok/runs", content=big, headers={"content-type": "application/json"}
    )
    assert_error(by_length, 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    chunked = site.web.post(
        "/api/v1/workflows/web_ok/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(chunked, 413, "body_too_large")
    big_patch = json.dumps({"enabled": True, "pad": "x" * (2 * 1024 * 1024)}).encode()
    assert_error(site.web.patch("/api/v1/triggers/web_trigger", content=big_patch), 413)
    assert site.web.ok("/api/v1/triggers/web_trigger")["enabled"] is True


def test_cancel_run(site: Site) -> None:
    started = site.web.post("/api/v1/workflows/web_ok/runs", json={"context": {"to": "cancel"}})
    run_id = started.json()["run_id"]
    first = site.web.post(f"/api/v1/runs/{run_id}/cancel")
    assert first.status_code == 200, first.text
    assert first.json() == {"run_id": run_id, "cancelled": True, "status": "Cancelled"}
    assert site.web.ok(f"/api/v1/runs/{run_id}")["status"] == "Cancelled"
    again = site.web.post(f"/api/v1/runs/{run_id}/cancel")
    assert again.json() == {"run_id": run_id, "cancelled": False, "status": "Cancelled"}
    ended = site.web.post(f"/api/v1/runs/{site.seeded.ok_run}/cancel")
    assert ended.json() == {"run_id": site.seeded.ok_run, "cancelled": False, "status": "Completed"}


def test_retry_run(site: Site) -> None:
    response = site.web.post(f"/api/v1/runs/{site.seeded.failed_run}/retry")
    assert response.status_code == 201, response.text
    new_id = response.json()["run_id"]
    assert new_id != site.seeded.failed_run
    retried = site.web.ok(f"/api/v1/runs/{new_id}")
    assert retried["retry_of"] == site.seeded.failed_run
    assert retried["workflow_name"] == "web_fail"
    assert retried["input_context"]["n"] == 2
    assert site.web.ok(f"/api/v1/runs/{site.seeded.failed_run}")["status"] == "Failed"  # the original is kept
    assert_error(site.web.post(f"/api/v1/runs/{site.seeded.ok_run}/retry"), 409, "not_retryable")


# -- triggers and cron ----------------------------------------------------------------------------------------
def test_triggers(site: Site) -> None:
    listed = site.web.ok("/api/v1/triggers")
    assert (listed["limit"], listed["offset"]) == (100, 0)
    trigger = next(t for t in listed["triggers"] if t["trigger_name"] == "web_trigger")
    assert trigger["workflow_name"] == "web_ok"
    assert trigger["poll_interval_ms"] == 3_600_000
    assert trigger["enabled"] is True
    for counter in ("poll_count", "fire_count", "skip_count", "dedup_skip_count", "error_count"):
        assert isinstance(trigger[counter], int)
    assert site.web.ok("/api/v1/triggers/web_trigger") == trigger
    assert site.web.ok("/api/v1/triggers?limit=1&offset=5")["triggers"] == []


def test_trigger_executions(site: Site) -> None:
    page = site.web.ok("/api/v1/triggers/web_trigger/executions")
    (execution,) = page["executions"]
    assert execution["run_id"] == site.seeded.fired_run
    assert execution["status"] == "Completed"
    assert execution["trigger_name"] == "web_trigger"
    assert execution["is_active"] is False
    assert execution["context_hash"] == context_hash({"file": "a.csv"})
    assert site.web.ok("/api/v1/triggers/web_trigger/executions?offset=1")["executions"] == []
    assert_error(site.web.get("/api/v1/triggers/web_trigger/executions?limit=0"), 422)


def test_disable_and_enable_a_trigger(site: Site) -> None:
    off = site.web.patch("/api/v1/triggers/web_trigger", json={"enabled": False})
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False
    assert site.web.ok("/api/v1/triggers/web_trigger")["enabled"] is False
    on = site.web.patch("/api/v1/triggers/web_trigger", json={"enabled": True})
    assert on.json()["enabled"] is True
    assert site.web.ok("/api/v1/triggers/web_trigger")["enabled"] is True


@pytest.mark.parametrize("body", ['{"enabled": "no"}', '{"enabled": 1}', "{}", '{"enabled": true, "x": 1}', "[]", "?"])
def test_bad_patch_is_422(site: Site, body: str) -> None:
    headers = {"content-type": "application/json"}
    assert_error(site.web.patch("/api/v1/triggers/web_trigger", content=body, headers=headers), 422)
    assert_error(site.web.patch(f"/api/v1/cron/{site.seeded.cron_id}", content=body, headers=headers), 422)


@pytest.mark.parametrize("name", ["nope", "a%00b", "t" * 300])
def test_unknown_trigger_is_404(site: Site, name: str) -> None:
    assert_error(site.web.get(f"/api/v1/triggers/{name}"), 404, "not_found")
    assert_error(site.web.get(f"/api/v1/triggers/{name}/executions"), 404, "not_found")
    assert_error(site.web.patch(f"/api/v1/triggers/{name}", json={"enabled": False}), 404, "not_found")


def test_cron(site: Site) -> None:
    cron_id = site.seeded.cron_id
    listed = site.web.ok("/api/v1/cron")
    schedule = next(s for s in listed["schedules"] if s["id"] == cron_id)
    assert (schedule["workflow_name"], schedule["cron_expression"], schedule["timezone"]) == (
        "web_ok",
        "0 3 * * *",
        "UTC",
    )
    assert schedule["enabled"] is True
    due = rfc3339(schedule["next_run_at"])
    assert (due.hour, due.minute) == (3, 0)
    off = site.web.patch(f"/api/v1/cron/{cron_id}", json={"enabled": False})
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False
    on = site.web.patch(f"/api/v1/cron/{cron_id.upper()}", json={"enabled": True})
    assert on.json()["enabled"] is True and on.json()["id"] == cron_id
    assert rfc3339(on.json()["next_run_at"]) >= rfc3339(on.json()["updated_at"])  # enabling starts from now
    assert_error(site.web.patch("/api/v1/cron/00000000-0000-4000-8000-000000000000", json={"enabled": True}), 404)
    assert_error(site.web.patch("/api/v1/cron/not-an-id", json={"enabled": True}), 404)
    assert_error(site.web.get("/api/v1/cron?offset=-3"), 422)


def test_packages(site: Site) -> None:
    packages = site.web.ok("/api/v1/packages")["packages"]
    (package,) = [p for p in packages if p["fingerprint"] == site.seeded.package_fingerprint]
    assert package["name"] == "data-ingest" or package["name"] == "data_ingest"
    assert package["active"] is True
    assert package["size_bytes"] > 0
    assert isinstance(package["manifest"], dict)


# -- the rest of the HTTP surface ------------------------------------------------------------------------------
def test_health_and_metrics(site: Site) -> None:
    assert site.web.ok("/livez")["ok"] is True
    ready = site.web.ok("/readyz")
    assert ready["ok"] is True
    assert ready["checks"]["database"]["ok"] is True
    assert ready["checks"]["broker"]["ok"] is True
    assert site.broker_url not in json.dumps(ready)
    site.web.ok(f"/api/v1/runs/{site.seeded.ok_run}")
    metrics = site.web.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'cloacina_web_requests_total{method="GET",route="/api/v1/runs/{run_id}",status="200"}' in metrics.text
    assert "cloacina_trigger_fires_total" in metrics.text or "cloacina_runs_finished_total" in metrics.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/runs"),
        ("PUT", "/api/v1/triggers/web_trigger"),
        ("GET", "/api/v1/runs/00000000-0000-4000-8000-000000000000/cancel"),
        ("POST", "/api/v1/workflows"),
        ("PATCH", "/api/v1/runs"),
        ("POST", "/livez"),
    ],
)
def test_wrong_method_is_405(site: Site, method: str, path: str) -> None:
    response = site.web.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers.get("allow")


def test_unknown_api_path_is_404(site: Site) -> None:
    assert_error(site.web.get("/api/v1/nothing/here"), 404, "not_found")
    assert_error(site.web.get("/api/v2/runs"), 404)


def test_openapi_document_has_the_contract(site: Site) -> None:
    doc = site.web.ok("/api/v1/openapi.json")
    contract = {
        "/api/v1/workflows": {"get"},
        "/api/v1/workflows/{name}": {"get"},
        "/api/v1/workflows/{name}/runs": {"post"},
        "/api/v1/runs": {"get"},
        "/api/v1/runs/{run_id}": {"get"},
        "/api/v1/runs/{run_id}/cancel": {"post"},
        "/api/v1/runs/{run_id}/retry": {"post"},
        "/api/v1/triggers": {"get"},
        "/api/v1/triggers/{name}": {"get", "patch"},
        "/api/v1/triggers/{name}/executions": {"get"},
        "/api/v1/cron": {"get"},
        "/api/v1/cron/{schedule_id}": {"patch"},
        "/api/v1/packages": {"get"},
        "/livez": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in contract.items():
        assert methods <= set(doc["paths"].get(path, {})), path
    assert "201" in doc["paths"]["/api/v1/workflows/{name}/runs"]["post"]["responses"]
    assert "201" in doc["paths"]["/api/v1/runs/{run_id}/retry"]["post"]["responses"]


# -- starting a run by name in distributed mode ------------------------------------------------------------------
REMOTE_APP = textwrap.dedent(
    '''
    """A worker's app: the web process never imports it."""
    import cloacina as cloaca

    with cloaca.WorkflowBuilder("web_remote"):

        @cloaca.task(id="double")
        def double(ctx):
            ctx.set("n", ctx.get("n") * 2)
            return ctx
    '''
)


def test_start_run_by_name_executed_by_a_worker(site: Site, tmp_path: Path) -> None:
    if site.backend != "postgresql":
        pytest.skip("distributed mode runs on PostgreSQL")
    app = tmp_path / "web_remote_app.py"
    app.write_text(REMOTE_APP)
    env = {"CLOACINA_DATABASE_URL": site.db_url, "CLOACINA_BROKER_URL": site.broker_url}
    worker = site.services.worker("web-worker", str(app), pool="solo", **env)
    wait_until(
        lambda: site.web.get("/api/v1/workflows/web_remote").status_code == 200,
        90,
        message=lambda: f"the worker to catalog web_remote; log:\n{worker.log_text()[-3000:]}",
    )
    response = site.web.post("/api/v1/workflows/web_remote/runs", json={"context": {"n": 21}})
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    finished: Callable[[], dict[str, Any] | None] = lambda: (  # noqa: E731
        run if (run := site.web.ok(f"/api/v1/runs/{run_id}"))["status"] in ("Completed", "Failed") else None
    )
    run = wait_until(finished, 90, message=lambda: f"run {run_id} to end; worker log:\n{worker.log_text()[-3000:]}")
    assert run["status"] == "Completed", run
    assert run["final_context"]["n"] == 42


# -- the last resort ---------------------------------------------------------------------------------------------
def test_an_unexpected_error_is_a_logged_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    """In process: a route that fails unexpectedly (bad input never does: see the module fixture's check)."""
    import anyio

    from cloacina.web.app import create_app
    from cloacina.web.settings import WebSettings

    app = create_app(WebSettings())

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("internal detail: /srv/secret/path")

    async def call() -> httpx.Response:  # no lifespan: this route needs no runner
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/api/v1/boom")

    with caplog.at_level("ERROR", logger="cloacina.web"):
        response = anyio.run(call)
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "unexpected server error; it was logged"}
    assert "/srv/secret/path" not in response.text
    assert any("unhandled error in GET /api/v1/boom" in r.getMessage() and r.exc_info for r in caplog.records)


# -- readiness --------------------------------------------------------------------------------------------------
def test_readyz_reports_an_unreachable_broker_and_an_incompatible_schema(tmp_path: Path) -> None:
    """``/readyz`` is 503 while Redis does not answer or the schema is not one this code runs on; ``/livez``
    stays 200 (it touches neither)."""
    import sqlite3

    services = Services(tmp_path)
    try:
        dead_broker = f"redis://127.0.0.1:{free_port()}/0"
        db_file = tmp_path / "cloacina.db"
        web = start_web(services, f"sqlite:///{db_file}", env={"CLOACINA_BROKER_URL": dead_broker})
        response = web.get("/readyz")
        assert response.status_code == 503, response.text
        checks = response.json()["checks"]
        assert checks["database"]["ok"] is True
        assert checks["broker"] == {"ok": False, "detail": "unreachable"}
        assert web.get("/livez").status_code == 200
        with contextlib.closing(sqlite3.connect(db_file)) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '0003'")  # an older schema
            conn.commit()
        response = web.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["checks"]["database"]["ok"] is False
        assert "cloacina db upgrade" in response.json()["checks"]["database"]["detail"]
        assert web.get("/livez").status_code == 200
    finally:
        services.stop_all()
        services.dump_logs()


@pytest.mark.parametrize("depth", [98, 99, 100, 500, 900, 990, 1100, 20_000])
def test_deeply_nested_context_is_refused_up_front(site: Site, depth: int) -> None:
    """The context object is level 1 and ``deep`` level 2: up to 100 levels in all are accepted."""
    body = '{"context": {"deep": ' + "[" * depth + "]" * depth + "}}"
    response = site.web.post(
        "/api/v1/workflows/web_ok/runs", content=body.encode(), headers={"content-type": "application/json"}
    )
    if depth <= 99:
        assert response.status_code == 201, response.text
    else:
        assert assert_error(response, response.status_code)["error"] in ("invalid_context", "bad_request")
        assert response.status_code in (400, 422)
