"""``DefaultRunnerConfig``: the runner's tunables (cloaca's names), validated on creation and on every assignment.

>>> DefaultRunnerConfig(max_concurrent_tasks=8).max_concurrent_tasks
8
>>> DefaultRunnerConfig(max_concurrent_tasks=0)
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for DefaultRunnerConfig
...

Invalid values raise pydantic's ``ValidationError``, which is a ``ValueError``.

The runner turns its config into the deployment's :class:`~cloacina.deployment.settings.CloacinaSettings`
(:meth:`DefaultRunnerConfig.to_settings`) and builds everything from that, as the services do. The names keep
cloaca's spelling; each maps to one setting (defaults come from the setting unless the runner's differs):

======================================  ===============================================================
``DefaultRunnerConfig``                 ``CloacinaSettings`` (``CLOACINA_*``)
======================================  ===============================================================
``max_concurrent_tasks``                ``max_concurrent_tasks``
``task_timeout_seconds``                ``task_timeout_s``
``workflow_timeout_seconds``            ``workflow_timeout_s``
``scheduler_poll_interval_ms``          none: kept for cloaca code; no cloacina loop ticks (all wait on events)
``db_pool_size``                        ``db_pool_size``
``enable_recovery``                     the runner starts a sweeper (services always do)
``recovery_stale_after_seconds``        ``task_heartbeat_timeout_s`` and ``stale_run_s`` (runner default 60 s)
``enable_trigger_scheduling``           the runner polls triggers (pollers always do)
``trigger_base_poll_interval_ms``       ``trigger_refresh_interval_s`` (÷ 1000)
``trigger_poll_timeout_seconds``        ``trigger_poll_timeout_s``
``trigger_poll_workers``                ``trigger_poll_workers``
``enable_cron_scheduling``              the runner fires cron schedules (pollers always do)
``cron_poll_interval_seconds``          ``cron_poll_interval_s``
``cron_catchup_policy``                 ``cron_catchup_policy``
``cron_max_catchup_executions``         ``cron_max_catchup_executions``
``broker_url``                          ``broker_url`` (unset: ``CLOACINA_BROKER_URL``)
``redis_url``                           ``redis_url`` (unset: ``CLOACINA_REDIS_URL``)
======================================  ===============================================================

>>> s = DefaultRunnerConfig(task_timeout_seconds=5).to_settings(":memory:")
>>> s.task_timeout_s, s.trigger_refresh_interval_s, s.task_heartbeat_timeout_s
(5.0, 1.0, 60.0)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloacina.deployment.settings import CloacinaSettings

RUNNER_RECOVERY_STALE_AFTER_S = 60.0  # an embedded runner waits longer than a poller before adopting work


def _default(setting: str) -> Any:
    """The default of a deployment setting: the one source of a value both names share."""
    return CloacinaSettings.model_fields[setting].default


class DefaultRunnerConfig(BaseModel):
    """Settings of a :class:`cloacina.DefaultRunner`. Durations carry their unit in the name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    max_concurrent_tasks: int = Field(
        _default("max_concurrent_tasks"), ge=1, le=1024, description="Task attempts running at once in-process."
    )
    task_timeout_seconds: float = Field(_default("task_timeout_s"), gt=0, description="Timeout of one task attempt.")
    workflow_timeout_seconds: float | None = Field(
        _default("workflow_timeout_s"), gt=0, description="A run still going after this fails."
    )
    scheduler_poll_interval_ms: int = Field(100, ge=1, le=60_000, description="Accepted for cloaca code; unused.")
    db_pool_size: int = Field(10, ge=1, le=200, description="PostgreSQL connection pool size.")
    enable_recovery: bool = Field(True, description="Resume runs left unfinished by a dead runner.")
    recovery_stale_after_seconds: float = Field(
        RUNNER_RECOVERY_STALE_AFTER_S, gt=0, description="Heartbeat age after which a run is adopted."
    )

    enable_trigger_scheduling: bool = Field(True, description="Poll registered @trigger functions.")
    trigger_base_poll_interval_ms: int = Field(
        round(_default("trigger_refresh_interval_s") * 1000),
        ge=10,
        le=3_600_000,
        description="How often schedule rows are re-read (enabled flags).",
    )
    trigger_poll_timeout_seconds: float = Field(
        _default("trigger_poll_timeout_s"), gt=0, description="A poll running longer is abandoned."
    )
    trigger_poll_workers: int = Field(
        _default("trigger_poll_workers"), ge=1, le=512, description="Threads that run trigger polls."
    )

    enable_cron_scheduling: bool = Field(True, description="Fire registered cron schedules.")
    cron_poll_interval_seconds: float = Field(
        _default("cron_poll_interval_s"), gt=0, description="How often cron schedule rows are re-read."
    )
    cron_catchup_policy: Literal["skip", "run_all"] = Field(
        _default("cron_catchup_policy"), description="Default for missed cron times."
    )
    cron_max_catchup_executions: int = Field(
        _default("cron_max_catchup_executions"), ge=1, description="Cap on missed times run by run_all."
    )

    broker_url: str | None = Field(None, description="Celery broker (Redis) URL: run tasks on Celery workers.")
    redis_url: str | None = Field(None, description="Redis URL for locks and leases (defaults to broker_url).")

    def to_settings(self, database_url: str, *, schema: str | None = None) -> CloacinaSettings:
        """The deployment settings of a runner on ``database_url`` with this config (see the module's table).

        Settings the config has no name for (queue, Redis namespace, visibility timeout...) come from the
        ``CLOACINA_*`` environment, as for the services.
        """
        values: dict[str, Any] = {
            "database_url": database_url,
            "database_schema": schema,
            "db_pool_size": self.db_pool_size,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "task_timeout_s": self.task_timeout_seconds,
            "workflow_timeout_s": self.workflow_timeout_seconds,
            "task_heartbeat_timeout_s": self.recovery_stale_after_seconds,
            "stale_run_s": self.recovery_stale_after_seconds,
            "trigger_refresh_interval_s": self.trigger_base_poll_interval_ms / 1000,
            "trigger_poll_timeout_s": self.trigger_poll_timeout_seconds,
            "trigger_poll_workers": self.trigger_poll_workers,
            "cron_poll_interval_s": self.cron_poll_interval_seconds,
            "cron_catchup_policy": self.cron_catchup_policy,
            "cron_max_catchup_executions": self.cron_max_catchup_executions,
        }
        if self.broker_url is not None:
            values["broker_url"] = self.broker_url
        if self.redis_url is not None:
            values["redis_url"] = self.redis_url
        return CloacinaSettings(**values)
