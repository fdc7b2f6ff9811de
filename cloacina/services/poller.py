"""``cloacina poller``: the distributed trigger and cron service. Run two or more replicas.

Each replica: polls the triggers it owns (rendezvous over live pollers, at most one poll per interval across all
replicas), takes the Redis dedup lock and the SQL claim for each fire, publishes the run's canvas to Celery,
fires cron due times (claimed once in SQL), re-fires cron due times claimed without a run (cron recovery),
sweeps lost work (one replica at a time), renews its lease and the dedup locks of runs it fired, and serves
``/livez``, ``/readyz`` and ``/metrics`` (:attr:`PollerService.probes`).

A database or Redis outage is logged and retried; the service keeps running and catches up when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cloacina.definitions import registry
from cloacina.deployment.readiness import wait_until_ready
from cloacina.deployment.settings import CloacinaSettings
from cloacina.deployment.wiring import Deployment
from cloacina.observability.metrics import Metrics
from cloacina.scheduling.cron_triggers import register_cron_triggers
from cloacina.scheduling.distributed_gate import DistributedGate
from cloacina.scheduling.leases import PollerMembership
from cloacina.scheduling.trigger_poller import TriggerScheduler
from cloacina.services.health import poller_probes

log = logging.getLogger("cloacina.poller")
PACKAGE_SYNC_INTERVAL_S = 15.0


class PollerService:
    """One poller replica."""

    def __init__(self, settings: CloacinaSettings, *, metrics: Metrics | None = None) -> None:
        if not settings.broker_url:
            raise ValueError("the poller needs CLOACINA_BROKER_URL (Redis) to publish runs")
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.stop_event = threading.Event()
        # /livez: the maintenance loop ticked recently (a pass may wait on Redis or database timeouts during an
        # outage, hence the minute); /readyz: that, and the connections work (cloacina.services.health).
        self.probes = poller_probes(self.metrics, settings, max_tick_age_s=max(60.0, 6 * self.maintenance_period_s))
        self._threads: list[threading.Thread] = []
        self._deployment: Deployment | None = None
        self._membership: PollerMembership | None = None
        self._triggers: TriggerScheduler | None = None
        self._loops: list[Any] = []
        self._package_triggers: dict[str, set[str]] = {}

    @property
    def maintenance_period_s(self) -> float:
        """How often the lease and the dedup locks of active runs are renewed."""
        return min(self.settings.lease_ttl_s / 3, self.settings.lock_ttl_s / 3)

    # -- the parts, once started ---------------------------------------------------------------------------
    @property
    def deployment(self) -> Deployment:
        if self._deployment is None:
            raise RuntimeError("the poller has not been started")
        return self._deployment

    @property
    def membership(self) -> PollerMembership:
        if self._membership is None:
            raise RuntimeError("the poller has not been started")
        return self._membership

    @property
    def triggers(self) -> TriggerScheduler:
        if self._triggers is None:
            raise RuntimeError("the poller has not been started")
        return self._triggers

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        deployment = self._deployment = Deployment(s, role="poller")
        deployment.prepare_schema(migrate=False, stop=self.stop_event)  # nothing works without the database
        deployment.workflows.record_registered()  # the workflow catalog: what the --app declared
        wait_until_ready("redis", deployment.locks.client.ping, self.stop_event)
        membership = self._membership = PollerMembership(deployment.locks, s.lease_ttl_s)
        membership.renew()
        deployment.owner = f"poller-{membership.poller_id}"  # names this replica in the runs it creates
        # Runs the sweeper ends here (deadline passed) wake their waiting clients too.
        deployment.coordinator.add_run_finished_listener(lambda ended: deployment.run_notices.publish(ended.run_id))
        self.gate = DistributedGate(deployment.locks, membership, deployment.db, s.lock_ttl_s)
        triggers = self._triggers = deployment.trigger_scheduler(gate=self.gate)
        triggers.add_listener(self.metrics.observe_trigger_event)
        for definition in registry.triggers():
            triggers.add(definition)
        registry.add_trigger_listener(triggers.add)
        # Packages deployed to the database registry (by `cloacina daemon` or `package deploy --db`) are polled
        # by every replica, so ownership can spread them; runs of theirs are resolved by fingerprint.
        self.sync_packages()
        register_cron_triggers(deployment.cron, s.cron_catchup_policy)  # @trigger(cron=...) are cron schedules
        cron = deployment.cron_scheduler()
        sweeper = deployment.sweeper(may_sweep=self._sweeper_turn)
        loops: list[Any] = [triggers, cron, sweeper]
        if s.cron_enable_recovery:  # re-fires cron due times claimed without a run (safe in every replica)
            loops.append(deployment.cron_recovery())
        for loop in loops:
            loop.start()
            self._loops.append(loop)
        self._spawn(self._maintenance_loop, "cloacina-poller-maintenance")
        log.info(
            "poller %s started: %d triggers, database %s",
            membership.poller_id,
            len(triggers.trigger_names),
            s.display_database_url,
        )

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweeper_turn(self) -> bool:
        """One replica sweeps per interval (a Redis key); the sweeps themselves are safe in parallel anyway."""
        locks = self.deployment.locks
        ttl_ms = int(self.settings.sweep_interval_s * 1000 * 0.9)
        return locks.acquire(locks.key("sweeper"), ttl_ms, token=self.membership.poller_id) is not None

    def sync_packages(self) -> None:
        """Poll the triggers of every active package in the registry; stop those of deactivated ones."""
        packages = self.deployment.packages
        assert packages.store is not None
        active = {p["fingerprint"] for p in packages.store.list(active_only=True)}
        for fingerprint in sorted(active - set(self._package_triggers)):
            try:
                loaded = packages.load(fingerprint)  # re-validated before any import
            except Exception as exc:
                log.error("package %s cannot be loaded; its triggers are not polled here: %s", fingerprint[:12], exc)
                continue
            self.deployment.workflows.record_package(loaded.workflows.values(), fingerprint)
            polled = [t for t in loaded.triggers if t.cron is None]
            crons = [t for t in loaded.triggers if t.cron is not None]  # a package's @trigger(cron=...): schedules
            if crons:
                register_cron_triggers(self.deployment.cron, self.settings.cron_catchup_policy, crons)
            for definition in polled:
                self.triggers.add(definition)
            self._package_triggers[fingerprint] = {t.name for t in polled}
        for fingerprint in sorted(set(self._package_triggers) - active):
            for name in self._package_triggers.pop(fingerprint):
                self.triggers.remove(name)

    def _maintenance_loop(self) -> None:
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
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
            try:
                self.gate.renew_locks()
            except Exception as exc:
                log.warning("dedup lock renewal failed: %s", exc)
            self.metrics.tick()
            self.stop_event.wait(self.maintenance_period_s)

    # -- stop ---------------------------------------------------------------------------------------------
    def stop(self, wait_s: float = 10.0) -> None:
        self.stop_event.set()
        for loop in self._loops:
            try:
                loop.stop(wait_s)
            except Exception:
                log.exception("error stopping %s", type(loop).__name__)
        if self._triggers is not None:
            registry.remove_trigger_listener(self._triggers.add)
        if self._membership is not None:
            self._membership.leave()
        if self._deployment is not None:
            self._deployment.close()
