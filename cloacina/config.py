"""``DefaultRunnerConfig``: the runner's tunables, validated on creation and on every assignment.

>>> DefaultRunnerConfig(max_concurrent_tasks=8).max_concurrent_tasks
8
>>> DefaultRunnerConfig(max_concurrent_tasks=0)
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for DefaultRunnerConfig
...

Invalid values raise pydantic's ``ValidationError``, which is a ``ValueError``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DefaultRunnerConfig(BaseModel):
    """Settings of a :class:`cloacina.DefaultRunner`. Durations carry their unit in the name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    max_concurrent_tasks: int = Field(4, ge=1, le=1024, description="Task attempts running at once in-process.")
    task_timeout_seconds: float = Field(300.0, gt=0, description="Default timeout of one task attempt.")
    workflow_timeout_seconds: float | None = Field(None, gt=0, description="A run still going after this fails.")
    scheduler_poll_interval_ms: int = Field(100, ge=1, le=60_000, description="Scheduler loop tick.")
    db_pool_size: int = Field(10, ge=1, le=200, description="PostgreSQL connection pool size.")
    enable_recovery: bool = Field(True, description="Resume runs left unfinished by a dead runner.")
    recovery_stale_after_seconds: float = Field(60.0, gt=0, description="Heartbeat age after which a run is adopted.")

    enable_trigger_scheduling: bool = Field(True, description="Poll registered @trigger functions.")
    trigger_base_poll_interval_ms: int = Field(
        1000, ge=10, le=3_600_000, description="How often schedule rows are re-read (enabled flags)."
    )
    trigger_poll_timeout_seconds: float = Field(30.0, gt=0, description="A poll running longer is abandoned.")
    trigger_poll_workers: int = Field(8, ge=1, le=512, description="Threads that run trigger polls.")

    enable_cron_scheduling: bool = Field(True, description="Fire registered cron schedules.")
    cron_poll_interval_seconds: float = Field(5.0, gt=0, description="How often cron schedule rows are re-read.")
    cron_catchup_policy: Literal["skip", "run_all"] = Field("skip", description="Default for missed cron times.")
    cron_max_catchup_executions: int = Field(100, ge=1, description="Cap on missed times run by run_all.")

    broker_url: str | None = Field(None, description="Celery broker (Redis) URL: run tasks on Celery workers.")
    redis_url: str | None = Field(None, description="Redis URL for locks and leases (defaults to broker_url).")
