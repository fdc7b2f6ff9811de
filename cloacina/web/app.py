"""``create_app(settings)``: the web process's ASGI app.

- ``/api/v1/...``: the HTTP API (:mod:`cloacina.web.api_workflows`, :mod:`~cloacina.web.api_runs`,
  :mod:`~cloacina.web.api_triggers`, :mod:`~cloacina.web.api_pools`, :mod:`~cloacina.web.api_system`), every
  route behind :func:`cloacina.web.auth.require_user`, every state-changing one behind
  :func:`~cloacina.web.auth.require_writer`.
- ``/livez``, ``/readyz``, ``/metrics``, ``/api/v1/openapi.json``.
- ``/``: the console (:data:`cloacina.web.console.router`).

The app holds one :class:`~cloacina.runner.default_runner.DefaultRunner` in client mode, opened at startup: it
polls no trigger, fires no cron schedule, sweeps nothing and runs no task; with a broker configured it publishes
the runs it starts to the Celery workers. Errors are JSON (:mod:`cloacina.web.errors`); bodies over
``max_body_bytes`` get 413.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloacina.observability.metrics import Metrics
from cloacina.runner.config import DefaultRunnerConfig
from cloacina.runner.default_runner import DefaultRunner
from cloacina.web import api_pools, api_runs, api_system, api_triggers, api_workflows, console
from cloacina.web.auth import Authenticator, require_user
from cloacina.web.errors import BodyLimit, install_error_handlers
from cloacina.web.schemas import ErrorBody
from cloacina.web.settings import WebSettings

API_PREFIX = "/api/v1"
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A body that cannot be decoded, a malformed Content-Length."},
    401: {"model": ErrorBody, "description": "Missing or wrong credentials."},
    413: {"model": ErrorBody, "description": "Request body over the limit."},
    422: {"model": ErrorBody, "description": "Invalid path, query or body values."},
}


def open_runner(settings: WebSettings) -> DefaultRunner:
    """The web process's runner: client mode (no trigger polling, no cron, no recovery sweeps, no task threads)."""
    config = DefaultRunnerConfig(
        enable_trigger_scheduling=False,
        enable_cron_scheduling=False,
        enable_recovery=False,
        broker_url=settings.broker_url,
    )
    return DefaultRunner(settings.database_url, config)


class WebMetrics(Metrics):
    """The ``cloacina_*`` series plus the web process's own ``cloacina_web_*``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter(
            "cloacina_web_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cloacina_web_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=self.registry,
        )


class RequestMetrics:
    """ASGI middleware: counts and times requests by route template (unmatched paths as ``<unmatched>``)."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = route_template(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The matched route's path with its parameters as ``{name}`` (a bounded label), else ``<unmatched>``.

    >>> route_template({"route": object(), "path": "/api/v1/runs/42/cancel", "path_params": {"run_id": "42"}})
    '/api/v1/runs/{run_id}/cancel'
    >>> route_template({"path": "/nope"})
    '<unmatched>'
    """
    if scope.get("route") is None:
        return "<unmatched>"
    names = {str(v): k for k, v in scope.get("path_params", {}).items()}
    return "/".join(f"{{{names[part]}}}" if part in names else part for part in str(scope["path"]).split("/"))


def _version() -> str:
    try:
        return version("cloacina")
    except PackageNotFoundError:
        return "0"


def create_app(settings: WebSettings, *, runner: DefaultRunner | None = None) -> FastAPI:
    """The ASGI app. ``runner``: use this one (and leave it open at shutdown) instead of opening one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runner = runner if runner is not None else await anyio.to_thread.run_sync(open_runner, settings)
        try:
            yield
        finally:
            opened: DefaultRunner | None = app.state.runner
            app.state.runner = None
            if runner is None and opened is not None:
                await anyio.to_thread.run_sync(opened.shutdown)

    app = FastAPI(
        title="cloacina",
        version=_version(),
        description="Workflows, runs, triggers, cron schedules and packages of a cloacina deployment.",
        openapi_url=None,  # served by api_system behind auth
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runner = None
    app.state.authenticator = Authenticator(settings)
    app.state.metrics = WebMetrics()
    install_error_handlers(app)

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_user)], responses=COMMON_RESPONSES)
    api.include_router(api_workflows.router)
    api.include_router(api_runs.router)
    api.include_router(api_triggers.router)
    api.include_router(api_pools.router)
    api.include_router(api_system.api_router)
    app.include_router(api)
    app.include_router(api_system.root_router)
    app.include_router(console.router)

    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: before anything reads a body
    return app
