"""``/api/v1/runs``: list runs (filtered, paged), one run with its tasks and attempts, cancel and retry.

The shapes follow ``cloacina runs list/show --json`` (``cloacina.cli.runs``), with times as RFC 3339.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends

from cloacina.engine.states import RunStatus
from cloacina.store.runs import AttemptRecord, RunRecord, TaskRecord
from cloacina.timestamps import as_utc
from cloacina.web.auth import WRITE_RESPONSES, require_writer
from cloacina.web.deps import Limit, NameFilter, Offset, Runner, Settings, canonical_id, not_found
from cloacina.web.errors import ApiError
from cloacina.web.schemas import AttemptOut, CancelResult, ErrorBody, RunCreated, RunDetail, RunOut, RunPage, TaskOut

router = APIRouter(tags=["runs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown run."}}


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((as_utc(end) - as_utc(start)).total_seconds() * 1000))


def run_fields(run: RunRecord) -> dict[str, Any]:
    """The fields of :class:`~cloacina.web.schemas.RunOut` for ``run``."""
    return {
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "trigger_name": run.trigger_name,
        "cron_schedule_id": run.cron_schedule_id,
        "fired_by": run.fired_by,
        "created_at": as_utc(run.created_at),
        "started_at": _utc(run.started_at),
        "completed_at": _utc(run.completed_at),
        "duration_ms": _ms(run.started_at or run.created_at, run.completed_at),
        "deadline_at": _utc(run.deadline_at),
        "error_message": run.error_message,
        "retry_of": getattr(run, "retry_of", None),
        "waiting_reason": run.waiting_reason,
    }


def _attempt(a: AttemptRecord) -> AttemptOut:
    return AttemptOut(
        attempt=a.attempt,
        status=a.status,
        started_at=as_utc(a.started_at),
        completed_at=_utc(a.completed_at),
        duration_ms=a.duration_ms,
        error_message=a.error_message,
        error_kind=a.error_kind,
        worker=a.worker,
    )


def task_out(task: TaskRecord, attempts: list[AttemptRecord]) -> TaskOut:
    return TaskOut(
        task_id=task.task_id,
        status=task.status.value,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        started_at=_utc(task.started_at),
        completed_at=_utc(task.completed_at),
        duration_ms=_ms(task.started_at, task.completed_at),
        next_attempt_at=_utc(task.next_attempt_at),
        error_message=task.error_message,
        error_kind=task.error_kind,
        skip_reason=task.skip_reason,
        attempts=[_attempt(a) for a in attempts],
        input_context=task.input_context,
        output_context=task.output_context,
    )


def run_detail(runner: Runner, run_id: str) -> RunDetail:
    """One run with its tasks and their attempts; 404 if unknown."""
    run = runner.runs.get_run(run_id)
    if run is None:
        raise not_found("run", run_id)
    tasks = runner.runs.get_tasks(run_id)
    return RunDetail(
        **run_fields(run),
        input_context=run.input_context,
        final_context=run.final_context,
        tasks=[task_out(t, runner.runs.get_attempts(run_id, t.task_id)) for t in tasks.values()],
    )


def require_broker(settings: Settings, what: str) -> None:
    """Runs are executed by Celery workers; this process has no worker threads of its own."""
    if not settings.broker_url:
        raise ApiError(
            503,
            "broker_not_configured",
            f"{what} needs the Celery broker: start `cloacina web` with CLOACINA_BROKER_URL set",
        )


@router.get("/runs", response_model=RunPage)
def list_runs(
    runner: Runner,
    status: RunStatus | None = None,
    workflow: NameFilter = None,
    trigger: NameFilter = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> RunPage:
    """Runs, newest first, optionally only those in ``status``, of ``workflow`` or fired by ``trigger``."""
    runs = runner.runs.list_runs(
        workflow_name=workflow,
        status=status.value if status else None,
        trigger_name=trigger,
        limit=limit,
        offset=offset,
    )
    return RunPage(runs=[RunOut(**run_fields(r)) for r in runs], limit=limit, offset=offset)


@router.get("/runs/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
def get_run(run_id: str, runner: Runner) -> RunDetail:
    """Status, times, input and final context, and each task with its status, attempts, errors and timings."""
    return run_detail(runner, canonical_id("run", run_id))


@router.post(
    "/runs/{run_id}/cancel",
    response_model=CancelResult,
    dependencies=[Depends(require_writer)],
    responses={**NOT_FOUND, **WRITE_RESPONSES},
)
def cancel_run(run_id: str, runner: Runner) -> CancelResult:
    """Cancel a run: no new task starts and it ends Cancelled. Cancelling an ended run changes nothing
    (``cancelled`` is false)."""
    rid = canonical_id("run", run_id)
    try:
        cancelled = runner.cancel_run(rid)
    except KeyError:
        raise not_found("run", rid) from None
    run = runner.runs.get_run(rid)
    return CancelResult(run_id=rid, cancelled=cancelled, status=run.status.value if run else "unknown")


@router.post(
    "/runs/{run_id}/retry",
    status_code=201,
    response_model=RunCreated,
    dependencies=[Depends(require_writer)],
    responses={
        **NOT_FOUND,
        **WRITE_RESPONSES,
        409: {"model": ErrorBody, "description": "The run is not Failed or Cancelled."},
        503: {"model": ErrorBody, "description": "No broker configured."},
    },
)
def retry_run(run_id: str, runner: Runner, settings: Settings) -> RunCreated:
    """Re-execute a Failed (or Cancelled) run from its failure: a new run, linked to this one (``retry_of``),
    that reuses the outputs of the tasks that completed."""
    rid = canonical_id("run", run_id)
    if runner.runs.get_run(rid) is None:
        raise not_found("run", rid)
    require_broker(settings, "retrying a run")
    try:
        new_id = runner.retry_run(rid)
    except KeyError:
        raise not_found("run", rid) from None
    except ValueError as exc:
        raise ApiError(409, "not_retryable", str(exc)) from None
    return RunCreated(run_id=new_id)
