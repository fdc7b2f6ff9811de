"""The JSON shapes of the HTTP API (``/api/v1``), as pydantic models: requests are strict (unknown keys are a
422), responses are what the OpenAPI document promises. Times are RFC 3339 in UTC (``2024-07-06T02:00:00Z``).

Lists come wrapped in an object named after what they hold (``{"runs": [...], "limit": 50, "offset": 0}``), so
fields can be added later without breaking clients. The console (``cloacina.web.console``) may fetch the same
shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

# -- requests ----------------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRunRequest(_Request):
    """``POST /api/v1/workflows/{name}/runs``: the run's input context (a JSON object; default empty)."""

    context: dict[str, Any] = Field(default_factory=dict, description="Input context: a JSON object.")


class EnabledPatch(_Request):
    """``PATCH`` of a trigger or cron schedule."""

    enabled: StrictBool


class PoolPut(_Request):
    """``PUT /api/v1/pools/{name}``: the pool's slots (0 pauses its tasks) and, optionally, its description."""

    slots: int = Field(ge=0, le=2**31 - 1, description="Slots of the pool; 0 pauses its tasks.")
    description: str | None = Field(
        default=None, max_length=2000, pattern=r"^[^\x00]*$", description="What the pool protects (no NUL)."
    )

    @field_validator("slots", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        """A JSON integer, ``4.0`` included (JSON Schema's integers), never a bool or a string."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("slots must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("slots must be a whole number")
            return int(value)
        return value


# -- errors and health ------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="A short snake_case code, e.g. not_found, invalid_request.")
    detail: Any = Field(description="What went wrong: text, or for invalid_request a list of problems.")


class Check(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    ok: bool
    checks: dict[str, Check] = Field(default_factory=dict)


# -- workflows --------------------------------------------------------------------------------------------


class CatalogTaskOut(BaseModel):
    task_id: str
    dependencies: list[str]
    max_attempts: int
    retry: dict[str, Any]
    trigger_rule: dict[str, Any] | None
    timeout_s: float | None
    description: str


class WorkflowOut(BaseModel):
    name: str
    version: str
    description: str
    tags: dict[str, str]
    tasks: list[CatalogTaskOut]
    origin: str = Field(description='"app:<module>", "package:<fingerprint>" or "code".')
    updated_at: datetime
    max_active_runs: int | None = Field(
        None, description="Runs of the workflow active at once; more wait, first in first out. Null: no limit."
    )


class WorkflowList(BaseModel):
    workflows: list[WorkflowOut]


# -- runs ---------------------------------------------------------------------------------------------------


class AttemptOut(BaseModel):
    attempt: int
    status: str
    started_at: datetime
    completed_at: datetime | None
    duration_ms: int | None
    error_message: str | None
    error_kind: str | None
    worker: str | None = Field(None, description='The process that ran the attempt: "<host>:<pid>".')


class TaskOut(BaseModel):
    task_id: str
    status: str
    attempt: int
    max_attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: int | None
    next_attempt_at: datetime | None
    error_message: str | None
    error_kind: str | None
    skip_reason: str | None
    attempts: list[AttemptOut]
    input_context: dict[str, Any] | None
    output_context: dict[str, Any] | None


class RunOut(BaseModel):
    run_id: str
    workflow_name: str
    workflow_version: str
    status: str
    trigger_name: str | None = Field(description="The poll trigger whose fire started the run, if one did.")
    cron_schedule_id: str | None = Field(
        None, description="The cron schedule whose due time started the run, if one did (see /api/v1/cron)."
    )
    fired_by: str | None = Field(
        None, description="What started the run, for display: the trigger's name, `cron:<expression>`, or null."
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: int | None
    deadline_at: datetime | None
    error_message: str | None
    retry_of: str | None = Field(None, description="The run this one re-executes, if it is a retry.")
    waiting_reason: str | None = Field(
        None,
        description="Why this Pending run has not started: its workflow's `max_active_runs` is reached (it starts, "
        "first in first out, when a slot frees). Null for every run that is not waiting.",
    )


class RunDetail(RunOut):
    input_context: dict[str, Any]
    final_context: dict[str, Any] | None
    tasks: list[TaskOut]


class RunPage(BaseModel):
    runs: list[RunOut]
    limit: int
    offset: int


class RunCreated(BaseModel):
    run_id: str


class CancelResult(BaseModel):
    run_id: str
    cancelled: bool = Field(description="True if this request cancelled the run; false if it had already ended.")
    status: str


# -- triggers, cron, packages --------------------------------------------------------------------------------


class TriggerOut(BaseModel):
    id: str
    trigger_name: str
    workflow_name: str
    poll_interval_ms: int
    allow_concurrent: bool
    enabled: bool
    last_poll_at: datetime | None
    next_poll_at: datetime | None
    last_fire_at: datetime | None
    poll_count: int
    fire_count: int
    skip_count: int
    dedup_skip_count: int
    error_count: int
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TriggerList(BaseModel):
    triggers: list[TriggerOut]
    limit: int
    offset: int


class TriggerExecutionOut(BaseModel):
    id: str
    schedule_id: str | None
    trigger_name: str
    workflow_name: str
    run_id: str
    status: str
    context_hash: str
    is_active: bool = Field(description="The run is active and holds the trigger's dedup key for its context.")
    started_at: datetime
    completed_at: datetime | None
    error_message: str | None


class TriggerExecutionList(BaseModel):
    executions: list[TriggerExecutionOut]
    limit: int
    offset: int


class CronOut(BaseModel):
    id: str
    workflow_name: str
    cron_expression: str
    timezone: str
    enabled: bool
    catchup_policy: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    instance_name: str | None
    params: dict[str, Any] | None


class CronList(BaseModel):
    schedules: list[CronOut]
    limit: int
    offset: int


class PackageOut(BaseModel):
    fingerprint: str
    name: str
    version: str
    manifest: dict[str, Any]
    size_bytes: int
    source_path: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


class PackageList(BaseModel):
    packages: list[PackageOut]


# -- pools --------------------------------------------------------------------------------------------------


class PoolOut(BaseModel):
    name: str
    slots: int
    used: int = Field(description="Slots taken by the pool's Running tasks.")
    waiting: int = Field(description="The pool's Ready tasks (waiting for a slot, or just made Ready).")
    description: str | None
    created_at: datetime
    updated_at: datetime


class PoolList(BaseModel):
    pools: list[PoolOut]
