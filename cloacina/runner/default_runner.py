"""``DefaultRunner``: the one object users hold.

Embedded (default): the store plus a thread pool, trigger poller, cron scheduler and recovery sweeper, all in
this process. With ``DefaultRunnerConfig(broker_url=...)`` (or ``CLOACINA_BROKER_URL``) it is a client of a
distributed deployment instead: runs are published to Celery workers and polled for in SQL; triggers and cron
are left to the ``cloacina poller`` replicas.

>>> import cloacina as cloaca
>>> with cloaca.WorkflowBuilder("doc_runner") as b:
...     @cloaca.task(id="double")
...     def double(ctx):
...         ctx.set("n", ctx.get("n") * 2)
...         return ctx
>>> with cloaca.DefaultRunner(":memory:") as runner:
...     result = runner.execute("doc_runner", cloaca.Context({"n": 21}))
>>> result.status, result.final_context.get("n")
('Completed', 42)
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Literal

from cloacina.backoff import Backoff
from cloacina.context import Context, coerce_context
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.deployment.wiring import Deployment
from cloacina.execution.coordinator import RunCoordinator
from cloacina.packaging.loader import PackageLoader
from cloacina.runner.config import DefaultRunnerConfig
from cloacina.runner.cron_api import CronAPI
from cloacina.runner.errors import (
    RunnerShutDownError,
    RunnerStartError,
    SchemaSetupError,
    WorkflowTimeoutError,
    operation,
)
from cloacina.runner.pool_api import PoolAPI
from cloacina.runner.results import RunHandle, WorkflowResult
from cloacina.runner.trigger_api import TriggerAPI
from cloacina.scheduling.cron import CronScheduler
from cloacina.scheduling.cron_recovery import CronRecovery
from cloacina.scheduling.cron_triggers import register_cron_triggers
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.store.catalog import CatalogEntry
from cloacina.store.database import Database
from cloacina.store.run_end_listener import RunEndChannel
from cloacina.store.runs import RunEnd, RunStore
from cloacina.store.triggers import TriggerStore
from cloacina.store.urls import check_schema_args

log = logging.getLogger("cloacina.runner")
WAIT_POLL_BACKOFF = Backoff(initial_s=0.002, max_s=0.25)  # wait_for_run's polls of a run finished elsewhere
NOTICE_FALLBACK_POLL_S = 1.0  # while run-ended notices are heard, the database is only a fallback
_LIVE_RUNNERS: weakref.WeakSet[DefaultRunner] = weakref.WeakSet()  # shut down at interpreter exit


@atexit.register
def _shutdown_live_runners() -> None:
    for runner in list(_LIVE_RUNNERS):
        try:
            runner.shutdown()
        except Exception:
            log.exception("error shutting down a DefaultRunner at exit")


class DefaultRunner(TriggerAPI, CronAPI, PoolAPI):
    """Executes workflows and (unless disabled) polls triggers and fires cron schedules.

    ``database_url``: ``"postgres://..."``/``"postgresql://..."``, or SQLite: ``"sqlite://file.db"``,
    ``"sqlite:///abs/file.db"``, a bare path (``/...``, ``./...``, ``*.db``, ``*.sqlite``, ``*.sqlite3``), a
    ``file:`` URI, or ``":memory:"`` (private to this runner). Starting migrates the database; any failure is a
    ``RuntimeError`` (``Failed to create DefaultRunner: ...``). Live runners are shut down at interpreter exit.
    """

    def __init__(
        self,
        database_url: str = ":memory:",
        config: DefaultRunnerConfig | None = None,
        *,
        schema: str | None = None,
    ) -> None:
        if not isinstance(database_url, str):
            raise TypeError(f"database_url must be a str, got {type(database_url).__name__}")
        if config is not None and not isinstance(config, DefaultRunnerConfig):
            raise TypeError(f"config must be a DefaultRunnerConfig, got {type(config).__name__}")
        if schema is not None:
            check_schema_args(database_url, schema)
        self._closed = True  # until started: shutdown() of a half-built runner does nothing
        self._services: list[Any] = []
        self.config = config or DefaultRunnerConfig()
        try:
            self.settings = self.config.to_settings(database_url, schema=schema)
            self.deployment = Deployment(self.settings, role="runner")
        except Exception as exc:
            raise RunnerStartError(exc) from exc
        try:
            self.deployment.prepare_schema(migrate=True)  # connects, logs in, creates and migrates the schema
        except Exception as exc:
            self._closed = False
            self.shutdown(0)
            if schema is not None:
                raise SchemaSetupError(schema, exc, secrets=self.deployment.db.url.secrets) from exc
            raise RunnerStartError(exc) from exc
        try:
            self._start(self.deployment)
        except Exception as exc:
            self._closed = False
            self.shutdown(0)
            raise RunnerStartError(exc) from exc
        _LIVE_RUNNERS.add(self)

    def _start(self, deployment: Deployment) -> None:
        self.broker_url = self.settings.broker_url
        self._waiters: dict[str, threading.Event] = {}
        self._waiters_lock = threading.Lock()
        self._closed = False
        self.trigger_scheduler: TriggerScheduler | None = None
        self.cron_scheduler: CronScheduler | None = None
        self.cron_recovery: CronRecovery | None = None
        self.coordinator.add_run_finished_listener(self._on_run_finished)
        deployment.workflows.record_registered()  # the workflow catalog: what this process's code declared
        self._notices: RunEndChannel | None = None
        if self.broker_url:  # runs end in the workers: they say so on Redis
            self._notices = deployment.run_notices
            self._notices.listen(self._wake)
        self._start_services()

    # -- the deployment's parts, by the names the management APIs and tests use --------------------------------
    @property
    def db(self) -> Database:
        return self.deployment.db

    @property
    def runs(self) -> RunStore:
        return self.deployment.runs

    @property
    def triggers(self) -> TriggerStore:
        return self.deployment.triggers

    @property
    def packages(self) -> PackageLoader:
        return self.deployment.packages

    @property
    def coordinator(self) -> RunCoordinator:
        return self.deployment.coordinator

    # -- construction helpers (cloaca API) --------------------------------------------------------------
    @staticmethod
    def with_config(database_url: str, config: DefaultRunnerConfig) -> DefaultRunner:
        """A runner with ``config`` (a :class:`DefaultRunnerConfig`)."""
        if not isinstance(config, DefaultRunnerConfig):
            raise TypeError(f"config must be a DefaultRunnerConfig, got {type(config).__name__}")
        return DefaultRunner(database_url, config)

    @staticmethod
    def with_schema(database_url: str, schema: str) -> DefaultRunner:
        """A runner whose tables live in PostgreSQL schema ``schema`` (created and migrated if missing): one per
        tenant. ``ValueError`` unless the URL is ``postgres://``/``postgresql://`` and the name is non-empty
        Unicode letters, digits and ``_`` (folded to lower case, as PostgreSQL folds unquoted names). If the
        database cannot be reached, refuses the login or the schema cannot be created:
        :class:`~cloacina.runner.errors.SchemaSetupError`, a ``RuntimeError`` saying
        ``Failed to set up schema '<schema>': <cause>`` (no password).

        The signature is exactly cloaca's (code inspects it); :meth:`with_schema_config` takes a config too.
        """
        check_schema_args(database_url, schema)
        return DefaultRunner(database_url, schema=schema)

    @staticmethod
    def with_schema_config(database_url: str, schema: str, config: DefaultRunnerConfig) -> DefaultRunner:
        """:meth:`with_schema` with ``config`` (a :class:`DefaultRunnerConfig`); cloacina extension. E.g.
        ``DefaultRunner.with_schema_config(url, "tenant_a", DefaultRunnerConfig(max_concurrent_tasks=8))``."""
        if not isinstance(config, DefaultRunnerConfig):
            raise TypeError(f"config must be a DefaultRunnerConfig, got {type(config).__name__}")
        check_schema_args(database_url, schema)
        return DefaultRunner(database_url, config, schema=schema)

    def __enter__(self) -> DefaultRunner:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.shutdown()
        return False

    def _start_services(self) -> None:
        """Register declared triggers; start the trigger poller, cron scheduler and sweeper the config enables."""
        known = self._register_known_triggers()
        if self.broker_url:
            log.info("runner is a client of the distributed deployment; triggers and cron run in the pollers")
            return
        if self.config.enable_trigger_scheduling:
            scheduler = self.deployment.trigger_scheduler()
            for definition in known:
                scheduler.add(definition)
            registry.add_trigger_listener(scheduler.add)
            scheduler.start()
            self.trigger_scheduler = scheduler
            self._services.append(_ListenerRemover(scheduler))
        if self.config.enable_cron_scheduling:
            register_cron_triggers(self.deployment.cron, self.settings.cron_catchup_policy)  # @trigger(cron=...)
            self.cron_scheduler = self.deployment.cron_scheduler()
            self.cron_scheduler.start()
            self._services.append(self.cron_scheduler)
            if self.config.cron_enable_recovery:
                self.cron_recovery = self.deployment.cron_recovery()
                self.cron_recovery.start()
                self._services.append(self.cron_recovery)
        if self.config.enable_recovery and not self.db.url.is_memory:
            sweeper = self.deployment.sweeper()
            try:
                report = sweeper.run_once()  # adopt what a previous, dead runner left unfinished
                if report:
                    log.warning("recovered unfinished work at start: %s", report)
            except Exception:
                log.exception("initial recovery sweep failed; the periodic sweep will retry")
            sweeper.start()
            self._services.append(sweeper)

    # -- workflows ----------------------------------------------------------------------------------------
    def _workflow(self, workflow: str | Workflow) -> Workflow:
        return self.deployment.workflows.get(workflow)

    def list_catalog(self) -> list[CatalogEntry]:
        """The workflow catalog: every workflow a process of this deployment recorded (its newest version), by
        name. In broker mode any of them can be started by name, without its code."""
        self._check_open()
        return self.deployment.catalog.list_workflows()

    # -- execution API ----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RunnerShutDownError("this DefaultRunner has been shut down")

    def start_run(self, workflow_name: str | Workflow, context: Context | Mapping[str, Any] | None = None) -> str:
        """Create a run and start it; returns its id. The run fails at ``workflow_timeout_seconds``."""
        return self._start_run(workflow_name, context, watch_deadline=True)

    def _start_run(
        self, workflow_name: str | Workflow, context: Context | Mapping[str, Any] | None, *, watch_deadline: bool
    ) -> str:
        self._check_open()
        # In broker mode a workflow this process never imported comes from the catalog (with its package).
        found = self.deployment.workflows.find(workflow_name)
        self.deployment.workflows.record([found.workflow])  # once per process and version (declared late)
        ctx = coerce_context(context)
        deadline_s = self.config.workflow_timeout_seconds
        run_id = self.coordinator.create_run(
            found.workflow, ctx.to_dict(), deadline_s=deadline_s, package_fingerprint=found.package_fingerprint
        )
        assert run_id is not None  # no dedup claim, so creation cannot be refused
        if deadline_s and watch_deadline:
            self.deployment.dispatcher.watch_deadline(run_id, deadline_s)
        return run_id

    @operation("Workflow execution failed")
    def execute(
        self,
        workflow_name: str | Workflow,
        context: Context | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> WorkflowResult:
        """Run ``workflow_name`` with ``context`` and wait until it is Completed or Failed (a failing task gives
        ``status == "Failed"``, never an exception). A run cancelled meanwhile (``cancel_run``, our extension)
        gives ``status == "Cancelled"``.

        ``ValueError`` for an unknown workflow or a runner that was shut down;
        :class:`~cloacina.runner.errors.WorkflowTimeoutError` (a ``ValueError`` and a ``TimeoutError``) when
        ``workflow_timeout_seconds`` passes first (the run is failed) or ``timeout`` seconds, if given, pass.
        """
        # No deadline timer here (one per run, held for an hour by default): this call's own wait ends at the
        # deadline and fails the run then; the run row's deadline lets the sweeper fail it if this thread dies.
        run_id = self._start_run(workflow_name, context, watch_deadline=False)
        deadline_s = self.config.workflow_timeout_seconds
        try:
            result = self.wait_for_run(run_id, timeout if timeout is not None else deadline_s)
        except WorkflowTimeoutError:
            if timeout is None and deadline_s is not None:
                self.coordinator.expire_run(run_id, deadline_s)  # the deadline watcher may not have run yet
            raise
        if result.status != "Completed":  # failed: by its deadline? (read only then: execute() stays one read)
            self._raise_if_expired(run_id, result)
        return result

    def _raise_if_expired(self, run_id: str, result: WorkflowResult) -> None:
        run = self.runs.get_run(run_id)
        if (
            run is not None
            and run.deadline_at is not None
            and run.completed_at is not None
            and run.completed_at >= run.deadline_at
        ):
            raise WorkflowTimeoutError(
                f"Workflow execution failed: run {run_id} timed out after "
                f"{self.config.workflow_timeout_seconds}s ({result.error_message})",
                run_id=run_id,
            )

    def execute_async(
        self, workflow_name: str | Workflow, context: Context | Mapping[str, Any] | None = None
    ) -> RunHandle:
        """Start ``workflow_name`` and return at once with a handle (``run_id``, ``wait(timeout)``)."""
        return RunHandle(self.start_run(workflow_name, context), self.wait_for_run, self._run_status)

    def _run_status(self, run_id: str) -> str:
        run = self.runs.get_run(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id!r}")
        return str(run.status)

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """Block until run ``run_id`` has ended (Completed, Failed, or Cancelled) and return its result."""
        event = threading.Event()
        with self._waiters_lock:
            self._waiters[run_id] = event
        deadline = None if timeout is None else time.monotonic() + timeout
        # Runs finished in this process set the event at once; so does a run-ended notice from a Celery worker.
        # Runs finished elsewhere without a notice (another runner on the same database, a lost notice) are
        # noticed by polling: quickly at first, then every 0.25 s; every second while notices are heard.
        try:
            for poll_s in WAIT_POLL_BACKOFF.delays():
                run = self.runs.get_run(run_id)
                if run is None:
                    raise KeyError(f"unknown run {run_id!r}")
                if run.status.is_terminal:
                    return WorkflowResult.from_record(run)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WorkflowTimeoutError(
                        f"Workflow execution failed: run {run_id} timed out: still {run.status} after {timeout}s",
                        run_id=run_id,
                    )
                if self._notices is not None and self._notices.listening:
                    poll_s = NOTICE_FALLBACK_POLL_S
                if event.wait(poll_s if remaining is None else min(remaining, poll_s)):
                    event.clear()
            raise AssertionError("unreachable: the backoff never ends")
        finally:
            with self._waiters_lock:
                self._waiters.pop(run_id, None)

    # -- run control ---------------------------------------------------------------------------------------
    @operation("Run cancellation failed")
    def cancel_run(self, run_id: str) -> bool:
        """Cancel run ``run_id``: it ends ``Cancelled`` at once, no task of it starts afterwards, a task still
        running finishes but its result is discarded, and its trigger's dedup key is free again (a fire of the
        same context starts a new run). Clients waiting for it get a result with ``status == "Cancelled"``.

        ``True`` if this call cancelled it; ``False`` if it had already ended (Completed, Failed or Cancelled);
        ``KeyError`` for an unknown run id.
        """
        self._check_open()
        return self.coordinator.cancel_run(run_id)

    @operation("Run retry failed")
    def retry_run(self, run_id: str) -> str:
        """Re-execute a Failed or Cancelled run from its failure; returns the new run's id.

        The new run (``get_run(new_id)``; its record's ``retry_of`` names the original) has the original's input;
        tasks that completed keep their outputs and are not run again (unless a task they depend on runs again),
        the others run afresh. The original run is unchanged. ``KeyError`` for an unknown run, ``ValueError`` for
        a run that is not Failed or Cancelled. Wait for it with ``wait_for_run(new_id)``.
        """
        self._check_open()
        deadline_s = self.config.workflow_timeout_seconds
        new_id = self.coordinator.retry_run(run_id, deadline_s=deadline_s)
        if deadline_s:
            self.deployment.dispatcher.watch_deadline(new_id, deadline_s)
        return new_id

    def _on_run_finished(self, ended: RunEnd) -> None:
        self._wake(ended.run_id)
        if self.broker_url and ended.lock_token and ended.trigger_name and ended.context_hash:
            # A run this client ended (cancelled, or failed at its deadline) gives its trigger's Redis dedup lock
            # back at once, as the worker ending a run does (SQL freed the key in the ending transaction).
            locks = self.deployment.locks
            try:
                locks.release(locks.dedup_key(ended.trigger_name, ended.context_hash), ended.lock_token)
            except Exception as exc:  # the lock expires on its own; SQL already freed the key
                log.warning("could not release the dedup lock of run %s: %s", ended.run_id, exc)

    def _wake(self, run_id: str) -> None:
        with self._waiters_lock:
            event = self._waiters.get(run_id)
        if event is not None:
            event.set()

    def get_run(self, run_id: str) -> WorkflowResult | None:
        run = self.runs.get_run(run_id)
        return WorkflowResult.from_record(run) if run else None

    # -- lifecycle --------------------------------------------------------------------------------------
    def shutdown(self, wait_s: float = 5.0) -> None:
        """Stop schedulers (no new runs), let running work finish for up to ``wait_s``, close the database.

        Runs still unfinished after that stay in the store; a runner started later on the same database (or
        another one sharing it) resumes them. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        _LIVE_RUNNERS.discard(self)
        for service in reversed(self._services):
            try:
                service.stop()
            except Exception:
                log.exception("error stopping %s", service)
        self.deployment.close(wait_s)

    def __repr__(self) -> str:
        return "DefaultRunner(thread_separated_async_runtime)"


class _ListenerRemover:
    """Stops a trigger scheduler and detaches it from the registry."""

    def __init__(self, scheduler: TriggerScheduler) -> None:
        self.scheduler = scheduler

    def stop(self) -> None:
        registry.remove_trigger_listener(self.scheduler.add)
        self.scheduler.stop()
