"""Packages, and the process's own endpoints: ``/livez``, ``/readyz``, ``/metrics`` and the OpenAPI document.

- ``/livez`` (no auth): ``200`` as long as the event loop serves requests; touches neither Redis nor the database.
- ``/readyz`` (no auth): ``200`` when the database answers and its schema is one this code runs on (its
  migration, or a newer compatible one), and (with a broker configured) Redis answers ``PING``; ``503``
  otherwise or when the checks take over 5 s. The details name no host or URL: they are for probes, the log
  has the rest.
- ``/metrics`` (auth): the process's Prometheus registry (``cloacina_*``, ``cloacina_web_*``).
- ``/api/v1/openapi.json`` (auth) and, with ``CLOACINA_WEB_DOCS=true``, ``/api/v1/docs`` (auth).
"""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloacina.observability.logs import redact
from cloacina.runner.default_runner import DefaultRunner
from cloacina.services.health import check_redis
from cloacina.store.packages import PackageStore
from cloacina.web.auth import require_user
from cloacina.web.deps import Runner
from cloacina.web.errors import ApiError
from cloacina.web.schemas import Check, ErrorBody, Health, PackageList, PackageOut
from cloacina.web.settings import WebSettings

log = logging.getLogger("cloacina.web")
READY_TIMEOUT_S = 5.0
OPENAPI_URL = "/api/v1/openapi.json"

api_router = APIRouter()  # mounted under /api/v1 with the API's auth
root_router = APIRouter()  # /livez, /readyz, /metrics and the docs


@api_router.get("/packages", response_model=PackageList, tags=["packages"])
def list_packages(runner: Runner) -> PackageList:
    """Deployed ``.cloacina`` packages, active and inactive, newest first."""
    return PackageList(packages=[PackageOut(**p) for p in PackageStore(runner.db).list()])


@root_router.get("/livez", response_model=Health, tags=["health"])
async def livez() -> Health:
    """The process's event loop is serving (an async handler answers only from the loop itself)."""
    return Health(ok=True, checks={"loop": Check(ok=True, detail="serving")})


def _database(runner: DefaultRunner) -> Check:
    try:
        runner.db.ping()
        status = runner.db.schema_status()
    except Exception as exc:
        log.warning("readyz: database: %s", redact(f"{type(exc).__name__}: {exc}"))
        return Check(ok=False, detail=f"unreachable ({type(exc).__name__})")
    where = f"schema at migration {status.current or 'none'}"
    if status.compatible:
        return Check(ok=True, detail=f"reachable, {where}")
    log.warning("readyz: %s", redact(status.detail))
    if status.relation == "older":
        return Check(ok=False, detail=f"{where}, this cloacina needs {status.head}: run `cloacina db upgrade`")
    return Check(ok=False, detail=f"{where}, newer than this cloacina's {status.head} and not compatible with it")


def _broker(url: str) -> Check:
    ok, detail = check_redis(url, timeout_s=2.0)
    if not ok:
        log.warning("readyz: broker: %s", detail)  # check_redis redacts the password
    return Check(ok=ok, detail="answers PING" if ok else "unreachable")


def readiness(runner: DefaultRunner | None, settings: WebSettings) -> Health:
    if runner is None:
        return Health(ok=False, checks={"runner": Check(ok=False, detail="starting or stopping")})
    checks = {"database": _database(runner)}
    if settings.broker_url:
        checks["broker"] = _broker(settings.broker_url)
    return Health(ok=all(c.ok for c in checks.values()), checks=checks)


@root_router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(request: Request) -> JSONResponse:
    """Database reachable with a compatible schema; Redis too when a broker is configured."""
    runner = getattr(request.app.state, "runner", None)
    settings = request.app.state.settings
    health = Health(ok=False, checks={"timeout": Check(ok=False, detail=f"checks took over {READY_TIMEOUT_S}s")})
    with anyio.move_on_after(READY_TIMEOUT_S):
        health = await anyio.to_thread.run_sync(readiness, runner, settings, abandon_on_cancel=True)
    return JSONResponse(health.model_dump(), status_code=200 if health.ok else 503)


@root_router.get(
    "/metrics",
    dependencies=[Depends(require_user)],
    response_class=PlainTextResponse,
    responses={401: {"model": ErrorBody, "description": "Missing or wrong credentials."}},
    tags=["health"],
)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@root_router.get(OPENAPI_URL, dependencies=[Depends(require_user)], include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@root_router.get("/api/v1/docs", dependencies=[Depends(require_user)], include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    if not request.app.state.settings.docs:
        raise ApiError(404, "not_found", "API docs are off; set CLOACINA_WEB_DOCS=true")
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title="cloacina API")
