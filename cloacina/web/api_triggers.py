"""``/api/v1/triggers`` and ``/api/v1/cron``: trigger schedules with their counters and last error, their
executions, cron schedules with their next due times, and switching either on or off.

Reads and writes go to the store directly (as ``cloacina triggers``/``cloacina cron`` do): the pollers pick up
an enabled flag at their next re-read of the schedule rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends

from cloacina.runner.cron_api import parse_schedule_id, schedule_dicts
from cloacina.scheduling import cron_math
from cloacina.store.cron import CronScheduleRecord
from cloacina.timestamps import as_utc, utcnow
from cloacina.web.auth import WRITE_RESPONSES, require_writer
from cloacina.web.deps import Limit, Offset, Runner, not_found, require_name
from cloacina.web.schemas import (
    CronList,
    CronOut,
    EnabledPatch,
    ErrorBody,
    TriggerExecutionList,
    TriggerExecutionOut,
    TriggerList,
    TriggerOut,
)

router = APIRouter()
TRIGGER_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown trigger."}}
CRON_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown cron schedule."}}


def _schedule(runner: Runner, name: str) -> dict[str, Any]:
    found = runner.triggers.get_schedule(require_name("trigger", name))
    if found is None:
        raise not_found("trigger", name)
    return found


@router.get("/triggers", response_model=TriggerList, tags=["triggers"])
def list_triggers(runner: Runner, limit: Limit = 100, offset: Offset = 0) -> TriggerList:
    """Trigger schedules, newest first, with their poll/fire/skip/error counters and last error."""
    rows = runner.triggers.list_schedules(limit=limit, offset=offset)
    return TriggerList(triggers=[TriggerOut(**r) for r in rows], limit=limit, offset=offset)


@router.get("/triggers/{name}", response_model=TriggerOut, responses=TRIGGER_404, tags=["triggers"])
def get_trigger(name: str, runner: Runner) -> TriggerOut:
    return TriggerOut(**_schedule(runner, name))


@router.patch(
    "/triggers/{name}",
    response_model=TriggerOut,
    responses={**TRIGGER_404, **WRITE_RESPONSES},
    dependencies=[Depends(require_writer)],
    tags=["triggers"],
)
def patch_trigger(name: str, patch: EnabledPatch, runner: Runner) -> TriggerOut:
    """Enable or disable polling of a trigger (``{"enabled": false}``); survives restarts."""
    _schedule(runner, name)
    runner.triggers.set_enabled(name, patch.enabled)
    return TriggerOut(**_schedule(runner, name))


@router.get(
    "/triggers/{name}/executions", response_model=TriggerExecutionList, responses=TRIGGER_404, tags=["triggers"]
)
def trigger_executions(name: str, runner: Runner, limit: Limit = 100, offset: Offset = 0) -> TriggerExecutionList:
    """Fires of the trigger that started a run, newest first, with the run's status."""
    _schedule(runner, name)
    rows = runner.triggers.execution_history(name, limit=limit, offset=offset)
    return TriggerExecutionList(executions=[TriggerExecutionOut(**r) for r in rows], limit=limit, offset=offset)


# -- cron ---------------------------------------------------------------------------------------------------
def _cron_out(record: CronScheduleRecord) -> CronOut:
    return CronOut.model_validate({k: as_utc(v) if isinstance(v, datetime) else v for k, v in record.to_dict().items()})


@router.get("/cron", response_model=CronList, tags=["cron"])
def list_cron(runner: Runner, limit: Limit = 100, offset: Offset = 0) -> CronList:
    """Cron schedules (instances included), newest first, with their next and last due times."""
    rows = schedule_dicts(runner.deployment.cron, None, limit, offset)
    return CronList(schedules=[CronOut(**r) for r in rows], limit=limit, offset=offset)


@router.patch(
    "/cron/{schedule_id}",
    response_model=CronOut,
    responses={**CRON_404, **WRITE_RESPONSES},
    dependencies=[Depends(require_writer)],
    tags=["cron"],
)
def patch_cron(schedule_id: str, patch: EnabledPatch, runner: Runner) -> CronOut:
    """Enable or disable a cron schedule. Enabling starts from now: due times passed while disabled are not run
    (as ``DefaultRunner.set_cron_schedule_enabled``)."""
    store = runner.deployment.cron
    try:
        sid = parse_schedule_id(schedule_id)
    except ValueError:
        raise not_found("cron schedule", schedule_id) from None
    current = store.get_schedule(sid)
    if current is None:
        raise not_found("cron schedule", schedule_id)
    if patch.enabled and not current.enabled:
        following = cron_math.next_due(current.cron_expression, current.timezone, utcnow())
        store.set_enabled(sid, True, next_run_at=following)
    elif patch.enabled != current.enabled:
        store.set_enabled(sid, patch.enabled)
    updated = store.get_schedule(sid)
    if updated is None:  # deleted meanwhile
        raise not_found("cron schedule", schedule_id)
    return _cron_out(updated)
