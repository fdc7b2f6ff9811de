"""Authentication, authorisation and the CSRF rule of ``cloacina web``, against real server processes.

- A server with all three kinds of credential (basic read-write, basic read-only, bearer), on SQLite and
  PostgreSQL: missing/wrong credentials 401, the read-only user 403 on writes, the CSRF rule of
  :mod:`cloacina.web.auth` for basic-auth writes (not for the bearer token), 503 for starting or retrying a run
  without a broker, and no credential in the log.
- A server without credentials: serves on loopback without auth (and says so), and still refuses cross-site
  writes (a page on another site must not drive a local console).
- ``--host`` other than loopback without a credential, and bad credential settings: exit 2 before binding.

Write checks use routes whose target does not exist: 404 means the request passed auth and CSRF.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, require_postgres

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.web.settings import WebSettings
from tests.distributed_harness import REPO_ROOT, Services, fresh_schema, migrated_schema, service_db_url
from tests.support import free_port
from tests.test_web_api import NO_WEB_ENV, Web, assert_error, start_web

pytestmark = pytest.mark.timeout(180)
ADMIN = ("admin", "pä55-wört:with-colon")  # non-ASCII and a colon in the password
VIEWER = ("viewer", "view-only-pw")
TOKEN = "0123456789abcdef0123456789abcdef"
NOBODY = "00000000-0000-4000-8000-000000000000"


def basic(user: str, password: str) -> dict[str, str]:
    raw = f"{user}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _seed(db_url: str, schema: str | None) -> str:
    """A cataloged workflow and one failed run of it (for the no-broker 503s); returns the run id."""
    saved = registry.snapshot()
    try:
        with cloaca.WorkflowBuilder("auth_wf"):

            @cloaca.task(id="fails", retry_attempts=1)
            def fails(ctx: Any) -> Any:
                raise RuntimeError("fails on purpose")

        config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
        with cloaca.DefaultRunner(db_url, config, schema=schema) as runner:
            return runner.execute("auth_wf", {}).run_id
    finally:
        registry.restore(saved)


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql"])
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Web, str]]:
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite-file":
            db_url = f"sqlite:///{tmp}/cloacina.db"
            failed_run = _seed(db_url, None)
        else:
            require_postgres()
            schema = stack.enter_context(fresh_schema(PG_URL))
            migrated_schema(PG_URL, schema)
            failed_run = _seed(PG_URL, schema)
            db_url = service_db_url(PG_URL, schema)
        services = Services(tmp)
        stack.callback(services.dump_logs)
        stack.callback(services.stop_all)
        env: dict[str, str | None] = {
            "CLOACINA_WEB_AUTH": ":".join(ADMIN),
            "CLOACINA_WEB_READONLY_AUTH": ":".join(VIEWER),
            "CLOACINA_WEB_TOKEN": TOKEN,
            "CLOACINA_LOG_LEVEL": "DEBUG",  # every request logged: none may show a credential
        }
        web = start_web(services, db_url, env=env)
        yield web, failed_run
        log = web.service.log_text()
        for secret in (ADMIN[1], VIEWER[1], TOKEN, base64.b64encode(":".join(ADMIN).encode()).decode()):
            assert secret not in log, "a credential was logged"


@pytest.fixture(scope="module")
def open_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp = tmp_path_factory.mktemp("auth-open")
    services = Services(tmp)
    try:
        yield start_web(services, f"sqlite:///{tmp}/cloacina.db")
    finally:
        services.stop_all()
        services.dump_logs()


# -- who may read -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/runs", "/api/v1/workflows", "/metrics", "/api/v1/openapi.json"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(ADMIN[0], "wrong"),
        basic("someone", ADMIN[1]),
        basic(VIEWER[0], ADMIN[1]),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Digest {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=[
        "none",
        "wrong-password",
        "wrong-user",
        "other-users-password",
        "bad-base64",
        "no-colon",
        "wrong-token",
        "empty-bearer",
        "digest",
        "bare-token",
    ],
)
def test_missing_or_wrong_credentials_are_401(secured: tuple[Web, str], path: str, headers: dict[str, str]) -> None:
    web, _ = secured
    response = web.get(path, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize("headers", [basic(*ADMIN), basic(*VIEWER), BEARER], ids=["admin", "viewer", "bearer"])
def test_every_user_reads(secured: tuple[Web, str], headers: dict[str, str]) -> None:
    web, _ = secured
    for path in ("/api/v1/runs", "/api/v1/workflows", "/api/v1/triggers", "/api/v1/cron", "/api/v1/packages"):
        assert web.get(path, headers=headers).status_code == 200, path
    assert web.get("/metrics", headers=headers).status_code == 200
    assert web.get("/api/v1/openapi.json", headers=headers).json()["paths"]


def test_probes_need_no_credentials(secured: tuple[Web, str]) -> None:
    web, _ = secured
    assert web.get("/livez").status_code == 200
    assert web.get("/readyz").status_code == 200


def test_openapi_documents_both_schemes(secured: tuple[Web, str]) -> None:
    web, _ = secured
    doc = web.get("/api/v1/openapi.json", headers=BEARER).json()
    schemes = {s["type"]: s for s in doc["components"]["securitySchemes"].values()}
    assert schemes["http"]["scheme"] in ("basic", "bearer")
    assert {s["scheme"] for s in doc["components"]["securitySchemes"].values()} == {"basic", "bearer"}


# -- who may write ------------------------------------------------------------------------------------------
WRITES = [
    ("POST", f"/api/v1/runs/{NOBODY}/cancel", None),
    ("POST", f"/api/v1/runs/{NOBODY}/retry", None),
    ("POST", "/api/v1/workflows/nope/runs", {"context": {}}),
    ("PATCH", "/api/v1/triggers/nope", {"enabled": False}),
    ("PATCH", f"/api/v1/cron/{NOBODY}", {"enabled": False}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_writers_write_and_the_viewer_may_not(
    secured: tuple[Web, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    web, _ = secured
    assert_error(web.request(method, path, json=body, headers=basic(*ADMIN)), 404, "not_found")
    assert_error(web.request(method, path, json=body, headers=BEARER), 404, "not_found")
    assert_error(web.request(method, path, json=body, headers=basic(*VIEWER)), 403, "forbidden")
    assert_error(web.request(method, path, json=body), 401, "unauthorized")


def test_starting_or_retrying_without_a_broker_is_503(secured: tuple[Web, str]) -> None:
    web, failed_run = secured
    assert web.get("/api/v1/workflows/auth_wf", headers=BEARER).status_code == 200
    body = assert_error(
        web.post("/api/v1/workflows/auth_wf/runs", json={"context": {}}, headers=BEARER), 503, "broker_not_configured"
    )
    assert "CLOACINA_BROKER_URL" in body["detail"]
    assert_error(web.post(f"/api/v1/runs/{failed_run}/retry", headers=BEARER), 503, "broker_not_configured")
    assert web.get(f"/api/v1/runs/{failed_run}", headers=BEARER).json()["status"] == "Failed"


# -- CSRF ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # not a browser: nothing rides on ambient credentials
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),  # typed into the address bar, a bookmark
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),  # another port or subdomain is another origin
        ({"Sec-Fetch-Site": "cross-site", "Origin": "{base}"}, False),  # Sec-Fetch-Site decides when present
        ({"Origin": "{base}"}, True),
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "{base}0"}, False),  # another port
        ({"Origin": "https://{hostport}"}, False),  # another scheme
        ({"X-Cloacina-CSRF": "1"}, True),
        ({"X-Cloacina-CSRF": "1", "Sec-Fetch-Site": "cross-site"}, True),  # a browser cannot send it cross-site
        ({"X-Cloacina-CSRF": ""}, True),  # empty: as if absent, and no browser signal either
        ({"X-Cloacina-CSRF": "", "Origin": "http://evil.example"}, False),
        (
            {"Origin": "https://console.example", "X-Forwarded-Host": "console.example", "X-Forwarded-Proto": "https"},
            True,
        ),
    ],
)
def test_csrf_rule_for_basic_auth(secured: tuple[Web, str], headers: dict[str, str], allowed: bool) -> None:
    web, _ = secured
    hostport = web.base.removeprefix("http://")
    filled = {k: v.format(base=web.base, hostport=hostport) for k, v in headers.items()}
    for method, path, body in WRITES:
        response = web.request(method, path, json=body, headers={**basic(*ADMIN), **filled})
        if allowed:
            assert_error(response, 404, "not_found")
        else:
            assert "X-Cloacina-CSRF" in assert_error(response, 403, "csrf_rejected")["detail"]


def test_bearer_requests_are_not_subject_to_csrf(secured: tuple[Web, str]) -> None:
    web, _ = secured
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
    for method, path, body in WRITES:
        assert_error(web.request(method, path, json=body, headers={**BEARER, **cross}), 404, "not_found")


def test_reads_are_not_subject_to_csrf(secured: tuple[Web, str]) -> None:
    web, _ = secured
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
    assert web.get("/api/v1/runs", headers={**basic(*ADMIN), **cross}).status_code == 200


# -- without credentials -------------------------------------------------------------------------------------
def test_without_credentials_loopback_serves_without_auth(open_web: Web) -> None:
    assert open_web.get("/api/v1/runs").status_code == 200
    assert open_web.get("/metrics").status_code == 200
    assert_error(open_web.post(f"/api/v1/runs/{NOBODY}/cancel"), 404, "not_found")
    assert "WITHOUT authentication" in open_web.service.log_text()


def test_without_credentials_cross_site_writes_are_refused(open_web: Web) -> None:
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        assert_error(open_web.post(f"/api/v1/runs/{NOBODY}/cancel", headers=headers), 403, "csrf_rejected")
        assert_error(
            open_web.patch("/api/v1/triggers/x", json={"enabled": False}, headers=headers), 403, "csrf_rejected"
        )


def test_unknown_workflow_is_404_before_the_broker_is_checked(open_web: Web) -> None:
    assert_error(open_web.post("/api/v1/workflows/nope/runs", json={"context": {}}), 404, "not_found")


# -- refusing to start -----------------------------------------------------------------------------------------
def _web_exit(tmp_path: Path, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {**NO_WEB_ENV, **(env or {})}
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for key, value in merged.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "cloacina", "web", "--db", f"sqlite:///{tmp_path}/c.db", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.invalid"])
def test_non_loopback_without_credentials_exits_2(tmp_path: Path, host: str) -> None:
    port = free_port()
    result = _web_exit(tmp_path, "--host", host, "--port", str(port))
    assert result.returncode == 2, result.stderr
    assert "refusing to serve" in result.stderr and "CLOACINA_WEB_AUTH" in result.stderr
    assert not (tmp_path / "c.db").exists()  # it stopped before opening anything


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"CLOACINA_WEB_AUTH": "no-colon-secret"}, "auth"),
        ({"CLOACINA_WEB_AUTH": "user:"}, "auth"),
        ({"CLOACINA_WEB_READONLY_AUTH": ":pw-secret"}, "readonly_auth"),
        ({"CLOACINA_WEB_TOKEN": "short-secret"}, "token"),
        ({"CLOACINA_WEB_MAX_BODY_BYTES": "-1"}, "max_body_bytes"),
    ],
)
def test_bad_settings_exit_2_without_echoing_them(tmp_path: Path, env: dict[str, str | None], field: str) -> None:
    result = _web_exit(tmp_path, "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    assert field in result.stderr
    value = next(iter(env.values()))
    assert value is not None
    if "secret" in value:
        assert value not in result.stderr and value not in result.stdout


def test_credentials_allow_any_address() -> None:
    WebSettings(host="0.0.0.0", auth="a:b").check_bind()
    WebSettings(host="0.0.0.0", token="t" * 16).check_bind()
    WebSettings(host="127.0.0.1").check_bind()
    with pytest.raises(ValueError, match="refusing"):
        WebSettings(host="0.0.0.0").check_bind()
