"""The console's pages: server-rendered HTML over the same data (and the same functions) as the JSON API.

Every page needs an authenticated user (:func:`cloacina.web.auth.require_user`); the switches and buttons on
them call the JSON API with ``fetch`` (``static/console.js``), where :func:`~cloacina.web.auth.require_writer`
and the CSRF rule apply. A page with live parts answers ``?partial=1`` with just those parts, which the script
fetches every couple of seconds and swaps in place.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.catalog import CatalogStore
from cloacina.store.packages import PackageStore
from cloacina.web.api_pools import list_pools
from cloacina.web.api_runs import list_runs, run_detail
from cloacina.web.api_triggers import list_cron, list_triggers
from cloacina.web.api_workflows import list_workflows
from cloacina.web.auth import Principal, User
from cloacina.web.console import workers
from cloacina.web.console.dag import layout_dag
from cloacina.web.console.rendering import render
from cloacina.web.deps import MAX_NAME, Runner, Settings, canonical_id, storable_name
from cloacina.web.errors import ApiError
from cloacina.web.schemas import PackageOut, RunDetail

router = APIRouter(include_in_schema=False)

REFRESH_MS = 2000
PAGE_SIZE = 50
NAV = (
    ("/runs", "Runs"),
    ("/triggers", "Triggers"),
    ("/cron", "Cron"),
    ("/pools", "Pools"),
    ("/packages", "Packages"),
    ("/workers", "Workers"),
)
TERMINAL_RUN = tuple(s.value for s in RunStatus if s.is_terminal)
RETRYABLE_RUN = tuple(s for s in ("Failed", "Cancelled") if s in {r.value for r in RunStatus})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Partial = Annotated[bool, Query(description="Only the live part of the page.")]


def page(
    template: str, principal: Principal, section: str, title: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    html = render(
        template, principal=principal, nav=NAV, section=section, page_title=title, refresh_ms=REFRESH_MS, **context
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def fragment(template: str, principal: Principal, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(template, principal=principal, **context), headers=SECURITY_HEADERS)


def error_page(principal: Principal, status_code: int, title: str, message: str) -> HTMLResponse:
    return page("error.html", principal, "", title, status_code=status_code, message=message)


@router.get("/")
def home(_user: User) -> RedirectResponse:
    return RedirectResponse("/runs", status_code=303)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    user: User,
    runner: Runner,
    settings: Settings,
    status: str = "",
    workflow: Annotated[str, Query(max_length=MAX_NAME)] = "",
    trigger: Annotated[str, Query(max_length=MAX_NAME)] = "",
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    partial: Partial = False,
) -> HTMLResponse:
    """Runs, newest first, filtered by status, workflow and trigger; the table refreshes itself."""
    statuses = [s.value for s in RunStatus]
    if status and status not in statuses:
        return error_page(
            user, 400, "Bad filter", f"Unknown status {status[:40]!r}: pick one of {', '.join(statuses)}."
        )
    if not (storable_name(workflow) and storable_name(trigger)):
        return error_page(user, 400, "Bad filter", "Names cannot contain NUL characters.")
    found = list_runs(
        runner,
        status=RunStatus(status) if status else None,
        workflow=workflow or None,
        trigger=trigger or None,
        limit=PAGE_SIZE,
        offset=offset,
    ).runs
    filters = {"status": status, "workflow": workflow, "trigger": trigger}

    def url(at: int, **extra: Any) -> str:
        query = {k: v for k, v in filters.items() if v} | ({"offset": at} if at else {}) | extra
        return "/runs" + (f"?{urlencode(query)}" if query else "")

    table: dict[str, Any] = {
        "runs": found,
        "offset": offset,
        "prev_url": url(max(offset - PAGE_SIZE, 0)) if offset else None,
        "next_url": url(offset + PAGE_SIZE) if len(found) == PAGE_SIZE else None,
    }
    if partial:
        return fragment("_runs_table.html", user, **table)
    trigger_names = sorted(t.trigger_name for t in list_triggers(runner, limit=1000, offset=0).triggers)
    return page(
        "runs.html",
        user,
        "/runs",
        "Runs",
        statuses=statuses,
        filters=filters,
        workflow_names=[w.name for w in list_workflows(runner).workflows],
        trigger_names=trigger_names,
        table_url=url(offset, partial=1),
        can_start=bool(settings.broker_url),
        **table,
    )


def _dag_context(runner: Runner, run: RunDetail) -> dict[str, Any]:
    """The DAG of ``run``, laid out from the catalog's graph of its version (or of the workflow's newest
    version; a task the catalog does not know is drawn without edges)."""
    catalog = CatalogStore(runner.db)
    entry = catalog.get_version(run.workflow_name, run.workflow_version) or catalog.get_workflow(run.workflow_name)
    known = {t.task_id: t.dependencies for t in entry.tasks} if entry else {}
    depends_on = {t.task_id: [d for d in known.get(t.task_id, [])] for t in run.tasks}
    return {
        "dag": layout_dag(depends_on),
        "depends_on": depends_on,
        "task_status": {t.task_id: t.status for t in run.tasks},
        "task_attempts": {t.task_id: len(t.attempts) for t in run.tasks},
        "terminal_statuses": TERMINAL_RUN,
        "retryable_statuses": RETRYABLE_RUN,
        "task_statuses": [s.value for s in TaskStatus],
    }


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, user: User, runner: Runner, settings: Settings, partial: Partial = False) -> HTMLResponse:
    """One run: its facts, the DAG coloured by task status, every task's attempts; refreshes itself."""
    try:
        run = run_detail(runner, canonical_id("run", run_id))
    except ApiError as exc:
        if exc.status != 404:
            raise
        return error_page(user, 404, "Run not found", f"There is no run {run_id[:80]!r}.")
    context = _dag_context(runner, run) | {"can_start": bool(settings.broker_url)}
    if partial:
        return fragment("_run_live.html", user, run=run, **context)
    return page("run.html", user, "/runs", f"Run {run.run_id[:8]}", run=run, **context)


@router.get("/triggers", response_class=HTMLResponse)
def triggers_page(user: User, runner: Runner, partial: Partial = False) -> HTMLResponse:
    """Triggers with their counters, last error and an enable switch."""
    triggers = sorted(list_triggers(runner, limit=1000, offset=0).triggers, key=lambda t: t.trigger_name)
    if partial:
        return fragment("_triggers_table.html", user, triggers=triggers)
    return page("triggers.html", user, "/triggers", "Triggers", triggers=triggers)


@router.get("/cron", response_class=HTMLResponse)
def cron_page(user: User, runner: Runner, partial: Partial = False) -> HTMLResponse:
    """Cron schedules with their next due times and an enable switch."""
    schedules = list_cron(runner, limit=1000, offset=0).schedules
    schedules.sort(key=lambda c: (c.workflow_name, c.instance_name or "", c.cron_expression, c.id))
    if partial:
        return fragment("_cron_table.html", user, schedules=schedules)
    return page("cron.html", user, "/cron", "Cron schedules", schedules=schedules)


@router.get("/pools", response_class=HTMLResponse)
def pools_page(user: User, runner: Runner, partial: Partial = False) -> HTMLResponse:
    """Task pools with their slots, the slots in use and the tasks waiting for one; refreshes itself."""
    pools = list_pools(runner).pools
    if partial:
        return fragment("_pools_table.html", user, pools=pools)
    return page("pools.html", user, "/pools", "Task pools", pools=pools)


@router.get("/packages", response_class=HTMLResponse)
def packages_page(user: User, runner: Runner) -> HTMLResponse:
    """Deployed packages and the workflow catalog."""
    packages = [PackageOut(**p) for p in PackageStore(runner.db).list()]
    return page(
        "packages.html",
        user,
        "/packages",
        "Packages and workflows",
        packages=packages,
        workflows=list_workflows(runner).workflows,
    )


def _web_link(url: str | None) -> str | None:
    """``url`` if it is an http(s) address (never a ``javascript:`` one in an ``href``)."""
    return url if url and url.lower().startswith(("http://", "https://")) else None


@router.get("/workers", response_class=HTMLResponse)
def workers_page(user: User, runner: Runner, settings: Settings) -> HTMLResponse:
    """Celery workers answering a ping, recent activity per process, and a link to Flower."""
    distributed = bool(settings.broker_url)
    pinged = workers.ping(runner.deployment) if distributed else workers.PingResult([])
    return page(
        "workers.html",
        user,
        "/workers",
        "Workers",
        distributed=distributed,
        answering=pinged.answering,
        ping_error=pinged.error,
        ping_timeout_s=workers.PING_TIMEOUT_S,
        flower_url=_web_link(settings.flower_url),
        activity=workers.recent_activity(runner.db),
        window_label="hour",
    )
