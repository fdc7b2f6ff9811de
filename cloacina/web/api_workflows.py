"""``/api/v1/workflows``: the catalog of workflows (every process that registers workflows records them), and
starting a run of one by name: its code need not be imported here, Celery workers that have it run it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cloacina.context import Context, canonical_json
from cloacina.store.catalog import CatalogEntry, CatalogStore
from cloacina.timestamps import as_utc
from cloacina.web.api_runs import require_broker
from cloacina.web.auth import WRITE_RESPONSES, require_writer
from cloacina.web.deps import Runner, Settings, not_found, require_name
from cloacina.web.errors import ApiError
from cloacina.web.schemas import CatalogTaskOut, ErrorBody, RunCreated, StartRunRequest, WorkflowList, WorkflowOut

router = APIRouter(tags=["workflows"])
MAX_CONTEXT_DEPTH = 100  # the context object is level 1; task code and workers copy it recursively
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown workflow."}}


def workflow_out(entry: CatalogEntry) -> WorkflowOut:
    return WorkflowOut(
        name=entry.name,
        version=entry.version,
        description=entry.description,
        tags=dict(entry.tags),
        tasks=[
            CatalogTaskOut(
                task_id=t.task_id,
                dependencies=list(t.dependencies),
                max_attempts=t.max_attempts,
                retry=dict(t.retry),
                trigger_rule=t.trigger_rule,
                timeout_s=t.timeout_s,
                description=t.description,
            )
            for t in entry.tasks
        ],
        origin=entry.origin,
        updated_at=as_utc(entry.updated_at),
        max_active_runs=entry.max_active_runs,
    )


def _entry(runner: Runner, name: str) -> CatalogEntry:
    entry = CatalogStore(runner.db).get_workflow(require_name("workflow", name))
    if entry is None:
        raise not_found("workflow", name)
    return entry


def _too_deep(value: Any, limit: int) -> bool:
    """Does ``value`` nest lists and objects more than ``limit`` levels deep? (Iterative: no recursion limit.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _checked_context(context: dict[str, Any]) -> dict[str, Any]:
    """The context as it will be stored; 422 for what JSON parsing lets through but a run cannot hold."""
    if _too_deep(context, MAX_CONTEXT_DEPTH):
        raise ApiError(422, "invalid_context", f"context nests more than {MAX_CONTEXT_DEPTH} levels deep")
    try:
        data = Context(context).to_dict()
        canonical_json(data).encode("utf-8")  # lone surrogates ("\ud800") parse but cannot be stored
    except (TypeError, ValueError, RecursionError) as exc:
        raise ApiError(422, "invalid_context", str(exc)) from None
    return data


@router.get("/workflows", response_model=WorkflowList)
def list_workflows(runner: Runner) -> WorkflowList:
    """Every cataloged workflow, by name."""
    return WorkflowList(workflows=[workflow_out(e) for e in runner.list_catalog()])


@router.get("/workflows/{name}", response_model=WorkflowOut, responses=NOT_FOUND)
def get_workflow(name: str, runner: Runner) -> WorkflowOut:
    """One workflow: version, description, tags, task graph and origin."""
    return workflow_out(_entry(runner, name))


@router.post(
    "/workflows/{name}/runs",
    status_code=201,
    response_model=RunCreated,
    dependencies=[Depends(require_writer)],
    responses={
        **NOT_FOUND,
        **WRITE_RESPONSES,
        409: {"model": ErrorBody, "description": "The workflow cannot be started (e.g. its package is gone)."},
        503: {"model": ErrorBody, "description": "No broker configured."},
    },
)
def start_run(name: str, runner: Runner, settings: Settings, body: StartRunRequest | None = None) -> RunCreated:
    """Start a run of workflow ``name`` with ``{"context": {...}}`` (or no body: an empty context)."""
    entry = _entry(runner, name)
    context = _checked_context(body.context if body is not None else {})
    require_broker(settings, "starting a run")
    try:
        run_id = runner.start_run(entry.name, context)
    except KeyError:
        raise not_found("workflow", name) from None
    except ValueError as exc:
        raise ApiError(409, "not_startable", str(exc)) from None
    return RunCreated(run_id=run_id)
