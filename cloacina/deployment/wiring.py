"""``Deployment``: the one place that builds a process's objects from one :class:`CloacinaSettings`.

Every process of a deployment (embedded runner, runner client, poller, worker, daemon) builds the same objects
the same way: the database and its stores, the package loader, the workflow catalog, the Redis locks, the
dispatcher (threads, or Celery when a broker is configured), the heartbeats and the run coordinator. A process
then starts the loops its role needs (trigger poller, cron, sweeper) from the factories here.

::

    deployment = Deployment(CloacinaSettings(database_url="sqlite://app.db"), role="runner")
    deployment.prepare_schema()             # migrate (runner) or require the migration (services)
    run_id = deployment.coordinator.create_run(workflow, {"n": 1})
    deployment.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cached_property
from typing import Literal

from cloacina.deployment.readiness import wait_until_ready
from cloacina.deployment.settings import CloacinaSettings
from cloacina.deployment.workflows import WorkflowCatalog
from cloacina.dispatch.celery_app import CeleryOptions, publisher_app
from cloacina.dispatch.celery_dispatcher import CeleryDispatcher
from cloacina.dispatch.run_notices import RunEndNotices
from cloacina.dispatch.threads import ThreadDispatcher
from cloacina.errors import StoreError
from cloacina.execution.coordinator import RunCoordinator
from cloacina.execution.dispatcher import Dispatcher, PlanOnly
from cloacina.execution.heartbeat import AttemptHeartbeats
from cloacina.packaging.loader import PackageLoader, install_resolver, uninstall_resolver
from cloacina.scheduling.cron import CronScheduler
from cloacina.scheduling.cron_recovery import CronRecovery
from cloacina.scheduling.poll_gate import PollGate
from cloacina.scheduling.redis_locks import TokenLocks
from cloacina.scheduling.sweeper import Sweeper
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.store.catalog import CatalogStore
from cloacina.store.cron import CronStore
from cloacina.store.database import Database
from cloacina.store.packages import PackageStore
from cloacina.store.recovery import RecoveryStore
from cloacina.store.run_end_listener import PgRunEndNotices, RunEndChannel
from cloacina.store.runs import RunStore
from cloacina.store.triggers import TriggerStore

log = logging.getLogger("cloacina.deployment")
Role = Literal["runner", "poller", "worker", "tool"]
# Database connections a process of each role needs when ``db_pool_size`` is not set.
DEFAULT_POOL_SIZE: dict[str, int] = {"runner": 10, "poller": 4, "worker": 2, "tool": 1}


def celery_options(settings: CloacinaSettings) -> CeleryOptions:
    """The Celery side of ``settings`` (``ValueError`` without a broker URL)."""
    if not settings.broker_url:
        raise ValueError("CLOACINA_BROKER_URL is not set: distributed mode needs a Redis broker URL")
    return CeleryOptions(
        broker_url=settings.broker_url,
        result_url=settings.effective_redis_url or settings.broker_url,
        queue=settings.queue,
        visibility_timeout_s=settings.visibility_timeout_s,
        task_events=settings.task_events,
        fuse_stretches=settings.fuse_stretches,
    )


def _always() -> bool:
    return True


class Deployment:
    """The objects of one process, built from ``settings`` for ``role``.

    ``role`` picks the dispatcher and the pool size: a ``runner`` executes tasks on its own threads unless a
    broker is configured (then it publishes to Celery, as a ``poller`` does); a ``worker`` runs the canvas
    nodes Celery hands it; a ``tool`` (CLI commands) executes nothing.
    """

    def __init__(self, settings: CloacinaSettings, *, role: Role, owner: str | None = None) -> None:
        self.settings = settings
        self.role = role
        self.owner = owner
        self.pool_size = settings.db_pool_size or DEFAULT_POOL_SIZE[role]
        if role == "poller":  # every poll thread may record its statistics at once
            self.pool_size = max(self.pool_size, settings.trigger_poll_workers)
        self.db = Database(settings.database_url, schema=settings.database_schema, pool_size=self.pool_size)
        self.runs = RunStore(self.db)
        self.triggers = TriggerStore(self.db)
        self.cron = CronStore(self.db)
        self.recovery = RecoveryStore(self.db)
        # Workflows of .cloacina packages, by fingerprint: the registry table is read only when a run or a
        # trigger names a package this process has not loaded yet.
        self.packages = PackageLoader(PackageStore(self.db))
        install_resolver(self.packages)
        # The catalog of workflows (store.catalog): processes that execute no task plan runs from it.
        self.catalog = CatalogStore(self.db)
        executes = role == "worker" or (role == "runner" and not settings.broker_url)
        self.workflows = WorkflowCatalog(
            self.packages, self.catalog, plans_only=not executes, strict_versions=role == "worker"
        )
        self._closed = False

    # -- schema -----------------------------------------------------------------------------------------------
    def prepare_schema(self, *, migrate: bool, stop: threading.Event | None = None) -> None:
        """Migrate the schema (``migrate=True``: embedded runners own their database), or wait until the
        database answers and require it to be migrated already (services; ``SchemaNotMigratedError`` if not)."""
        if not migrate:
            wait_until_ready("database", self.db.check_migrated, stop or threading.Event())
            return
        try:
            self.db.upgrade()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot prepare database {self.db.url.display}: {exc}") from exc

    # -- execution --------------------------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """Runs go to Celery workers (a broker is configured)."""
        return bool(self.settings.broker_url)

    @cached_property
    def celery_options(self) -> CeleryOptions:
        return celery_options(self.settings)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        if self.role == "tool":
            return PlanOnly()  # tools execute nothing
        if self.distributed:
            # A worker publishes what its finishes make Ready (most of it straight from its node, see
            # cloacina.dispatch.celery_app); a poller or client publishes new and recovered runs.
            return CeleryDispatcher(
                publisher_app(self.celery_options), self.settings.queue, fuse=self.settings.fuse_stretches
            )
        return ThreadDispatcher(self.settings.max_concurrent_tasks)

    @cached_property
    def heartbeats(self) -> AttemptHeartbeats:
        s = self.settings
        # Beat well inside the recovery window, so a live task is never mistaken for a lost one.
        return AttemptHeartbeats(self.runs, min(s.task_heartbeat_interval_s, s.task_heartbeat_timeout_s / 3))

    @cached_property
    def coordinator(self) -> RunCoordinator:
        return RunCoordinator(
            self.runs,
            self.workflows.resolve,
            default_task_timeout_s=self.settings.task_timeout_s,
            worker_name=self.owner,
            dispatcher=self.dispatcher,
            track_attempt=self.heartbeats.track,
            # A peeked task Ready longer than this records its start first: the sweeper may have republished it.
            defer_start_within_s=self.settings.stale_run_s / 2,
        )

    @cached_property
    def locks(self) -> TokenLocks:
        """Redis locks in the deployment's namespace (``ValueError`` without a Redis URL)."""
        redis_url = self.settings.effective_redis_url
        if not redis_url:
            raise ValueError("no Redis configured: set CLOACINA_BROKER_URL (or CLOACINA_REDIS_URL)")
        return TokenLocks.from_url(redis_url, self.settings.effective_redis_namespace)

    @cached_property
    def run_notices(self) -> RunEndChannel:
        """Run-ended notices: PostgreSQL's own (its trigger notifies as the run ends, so publishing costs the
        workers nothing), else the deployment's Redis pub/sub (``ValueError`` without a Redis URL)."""
        if self.db.dialect == "postgresql":
            return PgRunEndNotices(self.db)
        return RunEndNotices(self.locks.client, self.settings.effective_redis_namespace)

    # -- loops ------------------------------------------------------------------------------------------------
    def trigger_scheduler(self, *, gate: PollGate | None = None) -> TriggerScheduler:
        s = self.settings
        return TriggerScheduler(
            self.triggers,
            self.coordinator,
            self.workflows.get,
            poll_timeout_s=s.trigger_poll_timeout_s,
            refresh_interval_s=s.trigger_refresh_interval_s,
            poll_workers=s.trigger_poll_workers,
            run_deadline_s=s.workflow_timeout_s,
            gate=gate,
        )

    def cron_scheduler(self) -> CronScheduler:
        s = self.settings
        return CronScheduler(
            self.cron,
            self.coordinator,
            self.workflows.get,
            poll_interval_s=s.cron_poll_interval_s,
            max_catchup_executions=s.cron_max_catchup_executions,
            run_deadline_s=s.workflow_timeout_s,
        )

    def cron_recovery(self) -> CronRecovery:
        s = self.settings
        return CronRecovery(
            self.cron,
            self.coordinator,
            self.workflows.get,
            interval_s=s.cron_recovery_interval_s,
            lost_threshold_s=s.cron_lost_threshold_s,
            max_age_s=s.cron_max_recovery_age_s,
            max_attempts=s.cron_max_recovery_attempts,
            run_deadline_s=s.workflow_timeout_s,
        )

    def sweeper(self, *, may_sweep: Callable[[], bool] | None = None) -> Sweeper:
        s = self.settings
        return Sweeper(
            self.recovery,
            self.coordinator,
            self.dispatcher.resume_run,
            heartbeat_timeout_s=s.task_heartbeat_timeout_s,
            stale_run_s=s.stale_run_s,
            interval_s=min(s.sweep_interval_s, s.stale_run_s / 2),
            may_sweep=may_sweep if may_sweep is not None else _always,
            publish_tasks=self.dispatcher.tasks_ready,
        )

    # -- end --------------------------------------------------------------------------------------------------
    def close(self, wait_s: float = 5.0) -> None:
        """Let running attempts finish for up to ``wait_s``, then release every resource. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if "dispatcher" in self.__dict__:
            self.dispatcher.shutdown(wait_s)
        if "heartbeats" in self.__dict__:
            self.heartbeats.stop()
        if "run_notices" in self.__dict__:
            self.run_notices.stop()
        if "locks" in self.__dict__:
            self.locks.client.close()
        uninstall_resolver(self.packages)
        self.db.dispose()
