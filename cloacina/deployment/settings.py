"""The settings of a deployment: one object, read from the environment (``CLOACINA_*``) or built from a
``DefaultRunnerConfig`` (:meth:`cloacina.runner.config.DefaultRunnerConfig.to_settings`), and passed to the wiring
(:mod:`cloacina.deployment.wiring`) by every process: runner, poller, worker, daemon.

Naming rule: a duration carries its unit in its name (``_s``, ``_ms``); a count says what it counts.

>>> s = CloacinaSettings(database_url="postgresql://db/x", broker_url="redis://localhost:6379/0")
>>> s.effective_redis_url
'redis://localhost:6379/0'
>>> s.display_database_url
'postgresql+psycopg://db/x'
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from cloacina.store.urls import parse_database_url


class CloacinaSettings(BaseSettings):
    """Configuration of the poller, worker and CLI. Every field reads ``CLOACINA_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="CLOACINA_", extra="ignore", validate_default=True, allow_inf_nan=False
    )

    database_url: str = Field("sqlite://cloacina.db", description="Run store (PostgreSQL in production).")
    database_schema: str | None = Field(None, description="PostgreSQL schema of the tables (one per tenant).")
    db_pool_size: int | None = Field(
        None, ge=1, le=200, description="Database connections per process; default: what the process's role needs."
    )
    broker_url: str | None = Field(None, description="Celery broker URL (Redis), e.g. redis://redis:6379/0.")
    redis_url: str | None = Field(None, description="Redis for locks and leases; defaults to broker_url.")
    queue: str = Field("cloacina", description="Celery queue the workflow tasks go to.")
    redis_namespace: str | None = Field(
        None, description="Prefix of every Redis key (locks, leases); default: derived from the database URL."
    )

    # tasks and recovery
    max_concurrent_tasks: int = Field(4, ge=1, le=1024, description="Task attempts running at once (embedded).")
    task_timeout_s: float = Field(300.0, gt=0, description="Default timeout of one task attempt.")
    workflow_timeout_s: float | None = Field(None, gt=0, description="A run still going after this fails.")
    fuse_stretches: bool = Field(
        True, description="Run each sequential stretch of a DAG as one Celery message (one node per stretch)."
    )
    visibility_timeout_s: int = Field(3600, gt=0, description="Redis visibility timeout; above the longest task.")
    task_heartbeat_interval_s: float = Field(5.0, gt=0, description="How often a running task's heartbeat is written.")
    task_heartbeat_timeout_s: float = Field(30.0, gt=0, description="A running task silent this long is lost.")
    stale_run_s: float = Field(30.0, gt=0, description="A run with no progress this long is republished.")
    sweep_interval_s: float = Field(5.0, gt=0, description="How often the sweeper looks for lost work.")

    # triggers, leases, locks
    lock_ttl_s: float = Field(60.0, gt=0, description="TTL of a dedup lock; renewed while the run is active.")
    lease_ttl_s: float = Field(10.0, gt=0, description="Poller membership lease; takeover happens within it.")
    trigger_poll_timeout_s: float = Field(30.0, gt=0, description="A poll running longer is abandoned.")
    trigger_poll_workers: int = Field(8, ge=1, le=512, description="Threads that run trigger polls.")
    trigger_refresh_interval_s: float = Field(
        1.0, ge=0.01, le=3600, description="How often trigger schedule rows are re-read (enabled flags)."
    )

    # cron
    cron_poll_interval_s: float = Field(5.0, gt=0, description="How often cron schedule rows are re-read.")
    cron_catchup_policy: Literal["skip", "run_all"] = Field("skip", description="Default for missed cron times.")
    cron_max_catchup_executions: int = Field(100, ge=1, le=1000, description="Cap on missed times run by run_all.")
    cron_enable_recovery: bool = Field(True, description="Re-fire cron due times claimed but never handed off.")
    cron_recovery_interval_s: float = Field(300.0, gt=0, description="How often cron recovery looks for them.")
    cron_lost_threshold_s: float = Field(600.0, ge=0, description="Age at which a claim without a run is lost.")
    cron_max_recovery_age_s: float = Field(86_400.0, ge=0, description="Older lost due times are not recovered.")
    cron_max_recovery_attempts: int = Field(3, ge=0, description="Re-fires tried per lost due time.")

    # observability
    task_events: bool = Field(
        False,
        description="Force Celery task events on. Off by default, as in Celery: Flower turns them on for the "
        "workers it watches (its enable_events loop).",
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Serve /metrics, /livez, /readyz here.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    log_level: str | None = Field(
        None,
        description="Root log level of services; default WARNING for workers (per-task lines are INFO), INFO "
        "for the others.",
    )

    def service_log_level(self, role: str) -> str:
        """The log level of a ``role`` service: the setting, else WARNING for workers and INFO for the rest."""
        if self.log_level:
            return self.log_level
        return "WARNING" if role == "worker" else "INFO"

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        parse_database_url(value)  # raises a StoreError (a clear message) for unsupported forms
        return value

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis:// URL, got {make_url_safe(value)}")
        return value

    @property
    def effective_redis_url(self) -> str | None:
        return self.redis_url or self.broker_url

    @property
    def effective_redis_namespace(self) -> str:
        """``cloacina:<hash of the database URL>`` unless set: one namespace per deployment (= per database), so
        two deployments sharing a Redis never share dedup locks, leases or poll claims."""
        if self.redis_namespace:
            return self.redis_namespace
        digest = hashlib.sha256(self.display_database_url.encode()).hexdigest()[:10]
        return f"cloacina:{digest}"

    @property
    def display_database_url(self) -> str:
        return parse_database_url(self.database_url).display


def make_url_safe(url: str) -> str:
    """``url`` with any password masked (for error messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
