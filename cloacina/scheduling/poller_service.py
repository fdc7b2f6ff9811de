"""``cloacina poller``: the distributed trigger and cron service. Run two or more replicas.

Each replica: polls the triggers it owns (rendezvous over live pollers, at most one poll per interval across all
replicas), takes the Redis dedup lock and the SQL claim for each fire, publishes the run's canvas to Celery,
fires cron due times (claimed once in SQL), sweeps lost work (one replica at a time), renews its lease and the
dedup locks of runs it fired, and serves ``/healthz`` and ``/metrics``.

A database or Redis outage is logged and retried; the service keeps running and catches up when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.dispatch.celery_app import create_app
from cloacina.dispatch.publisher import CanvasPublisher
from cloacina.dispatch.worker_context import resolve_registered_workflow
from cloacina.errors import SchemaNotMigratedError
from cloacina.execution.coordinator import RunCoordinator
from cloacina.packaging.loader import PackageLoader, install_resolver
from cloacina.scheduling.cron import CronScheduler
from cloacina.scheduling.distributed_gate import DistributedGate
from cloacina.scheduling.leases import PollerMembership
from cloacina.scheduling.redis_locks import TokenLocks
from cloacina.scheduling.sweeper import Sweeper
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.settings import CloacinaSettings
from cloacina.store.cron import CronStore
from cloacina.store.database import Database
from cloacina.store.packages import PackageStore
from cloacina.store.recovery import RecoveryStore
from cloacina.store.runs import RunStore
from cloacina.store.triggers import TriggerStore

log = logging.getLogger("cloacina.poller")
PACKAGE_SYNC_INTERVAL_S = 15.0


def wait_until_ready(
    name: str, check: Callable[[], None], stop: threading.Event, max_wait_s: float | None = None
) -> None:
    """Call ``check`` until it stops raising connection errors, backing off up to 10 s between tries.

    ``SchemaNotMigratedError`` is not retried: an unmigrated database needs an operator, not patience.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            check()
            return
        except SchemaNotMigratedError:
            raise
        except Exception as exc:
            if stop.is_set() or (max_wait_s is not None and waited >= max_wait_s):
                raise
            log.warning("%s not reachable (%s); retrying in %.1fs", name, str(exc).splitlines()[0], delay)
            stop.wait(delay)
            waited += delay
            delay = min(10.0, delay * 2)


class PollerService:
    """One poller replica."""

    def __init__(self, settings: CloacinaSettings, *, metrics: Any | None = None) -> None:
        if not settings.broker_url:
            raise ValueError("the poller needs CLOACINA_BROKER_URL (Redis) to publish runs")
        self.settings = settings
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.last_tick = 0.0
        self.healthy_parts: dict[str, str] = {}
        self._threads: list[threading.Thread] = []

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.db = Database(s.database_url, pool_size=max(4, s.trigger_poll_workers))
        wait_until_ready("database", self.db.check_migrated, self.stop_event)
        redis_url = s.effective_redis_url
        assert redis_url is not None
        self.locks = TokenLocks.from_url(redis_url, s.effective_redis_namespace)
        wait_until_ready("redis", lambda: self.locks.client.ping(), self.stop_event)
        self.membership = PollerMembership(self.locks, s.lease_ttl_s)
        self.membership.renew()
        self.app = create_app(s)
        self.store = RunStore(self.db)
        self.publisher = CanvasPublisher(self.app, self.store, resolve_registered_workflow, s.queue)
        self.coordinator = RunCoordinator(
            self.store,
            resolve_registered_workflow,
            default_task_timeout_s=s.task_timeout_s,
            worker_name=f"poller-{self.membership.poller_id}",
            publish_run=self.publisher.publish_run,
        )
        self.gate = DistributedGate(self.locks, self.membership, self.db, s.lock_ttl_s)
        self.triggers = TriggerScheduler(
            TriggerStore(self.db),
            self.coordinator,
            self._workflow_by_name,
            poll_timeout_s=s.trigger_poll_timeout_s,
            poll_workers=s.trigger_poll_workers,
            gate=self.gate,
        )
        if self.metrics is not None:
            self.triggers.add_listener(self.metrics.observe_trigger_event)
        for definition in registry.triggers():
            self.triggers.add(definition)
        registry.add_trigger_listener(self.triggers.add)
        # Packages deployed to the database registry (by `cloacina daemon` or `package deploy --db`) are polled
        # by every replica, so ownership can spread them; runs of theirs are resolved by fingerprint.
        self.package_store = PackageStore(self.db)
        self.packages = PackageLoader(self.package_store)
        install_resolver(self.packages)
        self._package_triggers: dict[str, set[str]] = {}
        self.sync_packages()
        self.cron = CronScheduler(CronStore(self.db), self.coordinator, self._workflow_by_name)
        self.sweeper = Sweeper(
            RecoveryStore(self.db),
            self.coordinator,
            lambda run_id: self.publisher.republish(run_id, self.coordinator),
            heartbeat_timeout_s=s.task_heartbeat_timeout_s,
            stale_run_s=s.stale_run_s,
            interval_s=s.sweep_interval_s,
            may_sweep=self._sweeper_turn,
        )
        self.triggers.start()
        self.cron.start()
        self.sweeper.start()
        self._spawn(self._maintenance_loop, "cloacina-poller-maintenance")
        log.info(
            "poller %s started: %d triggers, database %s",
            self.membership.poller_id,
            len(self.triggers.trigger_names),
            s.display_database_url,
        )

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @staticmethod
    def _workflow_by_name(name: str) -> Workflow:
        return registry.get_workflow(name)

    def _sweeper_turn(self) -> bool:
        """One replica sweeps per interval (a Redis key); the sweeps themselves are safe in parallel anyway."""
        ttl_ms = int(self.settings.sweep_interval_s * 1000 * 0.9)
        return self.locks.acquire(self.locks.key("sweeper"), ttl_ms, token=self.membership.poller_id) is not None

    def sync_packages(self) -> None:
        """Poll the triggers of every active package in the registry; stop those of deactivated ones."""
        active = {p["fingerprint"] for p in self.package_store.list(active_only=True)}
        for fingerprint in sorted(active - set(self._package_triggers)):
            try:
                loaded = self.packages.load(fingerprint)  # re-validated before any import
            except Exception as exc:
                log.error("package %s cannot be loaded; its triggers are not polled here: %s", fingerprint[:12], exc)
                continue
            for definition in loaded.triggers:
                self.triggers.add(definition)
            self._package_triggers[fingerprint] = {t.name for t in loaded.triggers}
        for fingerprint in sorted(set(self._package_triggers) - active):
            for name in self._package_triggers.pop(fingerprint):
                self.triggers.remove(name)

    def _maintenance_loop(self) -> None:
        period = min(self.settings.lease_ttl_s / 3, self.settings.lock_ttl_s / 3)
        next_package_sync = time.monotonic() + PACKAGE_SYNC_INTERVAL_S
        while not self.stop_event.is_set():
            if time.monotonic() >= next_package_sync:
                next_package_sync = time.monotonic() + PACKAGE_SYNC_INTERVAL_S
                try:
                    self.sync_packages()
                except Exception as exc:
                    log.warning("package sync failed (will retry): %s", exc)
            try:
                self.membership.renew()
                self.healthy_parts["redis"] = "ok"
            except Exception as exc:
                self.healthy_parts["redis"] = f"error: {str(exc).splitlines()[0]}"
                log.warning("lease renewal failed: %s", exc)
            try:
                self.gate.renew_locks()
                self.healthy_parts["database"] = "ok"
            except Exception as exc:
                self.healthy_parts["database"] = f"error: {str(exc).splitlines()[0]}"
                log.warning("dedup lock renewal failed: %s", exc)
            self.last_tick = time.time()
            if self.metrics is not None:
                self.metrics.tick()
            self.stop_event.wait(period)

    # -- health and stop ----------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        period = min(self.settings.lease_ttl_s / 3, self.settings.lock_ttl_s / 3)
        ticking = time.time() - self.last_tick < 3 * period + 5
        parts_ok = all(v == "ok" for v in self.healthy_parts.values())
        details = {"loop": "ticking" if ticking else "stalled", **self.healthy_parts}
        details["poller_id"] = getattr(getattr(self, "membership", None), "poller_id", None)
        details["members"] = self.membership.members() if hasattr(self, "membership") else []
        return ticking and parts_ok, details

    def stop(self, wait_s: float = 10.0) -> None:
        self.stop_event.set()
        for service in ("triggers", "cron", "sweeper"):
            obj = getattr(self, service, None)
            if obj is not None:
                try:
                    obj.stop(wait_s) if service != "cron" else obj.stop(timeout_s=wait_s)
                except Exception:
                    log.exception("error stopping %s", service)
        if hasattr(self, "triggers"):
            registry.remove_trigger_listener(self.triggers.add)
        if hasattr(self, "membership"):
            self.membership.leave()
        if hasattr(self, "db"):
            self.db.dispose()
