"""The poller replicas' side of deduplication and sharing: who polls, and the Redis fast path for fires.

``DistributedGate`` implements :class:`cloacina.scheduling.poll_gate.PollGate`:

- ``may_poll``: this replica owns the trigger (rendezvous over live pollers) and won the per-interval claim.
- ``before_fire``: ``SET <namespace>:dedup:{trigger}:{hash} <token> NX PX <lock_ttl>``. If the key is held, a run
  for that item is active (or was, moments ago): skip without touching SQL. The SQL claim is still made for
  every fire that gets past here, and SQL decides.
- ``after_fire``: a created run keeps its lock (the worker that ends the run releases it with the token, which
  is stored on the trigger-execution row); a fire SQL refused gives the lock back at once.
- ``renew_locks``: extends the locks of runs that are still active (one SQL query and one Redis pipeline per
  pass) and forgets ended ones. A lock whose release was lost expires after ``lock_ttl_s`` at the latest.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from cloacina.definitions.trigger import TriggerDefinition
from cloacina.scheduling.leases import PollerMembership
from cloacina.scheduling.redis_locks import TokenLocks
from cloacina.store.database import Database
from cloacina.store.models import TriggerExecution

log = logging.getLogger("cloacina.gate")


class DistributedGate:
    """Ownership, poll claims and dedup locks for one poller replica."""

    def __init__(self, locks: TokenLocks, membership: PollerMembership, db: Database, lock_ttl_s: float) -> None:
        self.locks = locks
        self.membership = membership
        self.db = db
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self._held: dict[str, tuple[str, str]] = {}  # run_id -> (key, token)
        self._lock = threading.Lock()

    def may_poll(self, definition: TriggerDefinition) -> bool:
        if not self.membership.owns(definition.name):
            return False
        return self.membership.claim_poll(definition.name, definition.poll_interval_ms)

    def before_fire(self, definition: TriggerDefinition, context_hash: str) -> tuple[bool, str | None]:
        try:
            token = self.locks.acquire(self.locks.dedup_key(definition.name, context_hash), self.lock_ttl_ms)
        except Exception as exc:  # Redis down: fall through to SQL, which is the arbiter anyway
            log.warning("dedup lock unavailable (%s); relying on SQL", exc)
            return True, None
        return (token is not None), token

    def after_fire(
        self, definition: TriggerDefinition, context_hash: str, token: str | None, run_id: str | None
    ) -> None:
        if token is None:
            return
        key = self.locks.dedup_key(definition.name, context_hash)
        if run_id is None:
            try:
                self.locks.release(key, token)
            except Exception as exc:
                log.warning("could not give back dedup lock %s: %s", key, exc)
            return
        with self._lock:
            self._held[run_id] = (key, token)

    def renew_locks(self) -> int:
        """Extend the locks of active runs; forget the ones whose run ended. Returns how many were extended."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return 0
        with self.db.session() as s:
            active = set(
                s.scalars(
                    select(TriggerExecution.run_id).where(
                        TriggerExecution.run_id.in_(list(held)), TriggerExecution.dedup_active.is_(True)
                    )
                ).all()
            )
        ended = [run_id for run_id in held if run_id not in active]
        with self._lock:
            for run_id in ended:
                self._held.pop(run_id, None)
        live = [(run_id, held[run_id]) for run_id in held if run_id in active]
        results = self.locks.extend_many([kt for _, kt in live], self.lock_ttl_ms) if live else []
        for (run_id, (key, _)), ok in zip(live, results, strict=True):
            if not ok:  # expired and possibly taken by another fire; SQL still guards, just stop renewing
                log.info("dedup lock %s was lost while run %s is active", key, run_id)
                with self._lock:
                    self._held.pop(run_id, None)
        return sum(results)
