"""Poller replicas: who polls which trigger, and at most one poll per interval across all replicas.

- **Membership lease**: each poller holds the token-owned key ``<namespace>:poller:<id>`` (TTL ``lease_ttl_s``,
  renewed every third of it) and is listed in the sorted set ``<namespace>:pollers`` scored by lease expiry.
  A poller that dies drops out when its lease expires: others take its triggers over within one lease period.
  (Each poller keeps the expiry it last read for every member and treats a member as gone from that moment,
  rather than at its own next renewal, which would add up to a third of a lease.)
- **Ownership**: rendezvous hashing over the live members; every poller computes the same owner for a trigger,
  so the triggers spread evenly and move minimally when membership changes.
- **Poll claim**: before polling, the owner takes ``<namespace>:poll:<trigger>`` with ``SET NX PX interval``.
  During a membership change two pollers may briefly both think they own a trigger; the claim makes sure only
  one of them polls it in that interval.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

from cloacina.scheduling.redis_locks import TokenLocks

log = logging.getLogger("cloacina.leases")


def rendezvous_owner(name: str, members: list[str]) -> str | None:
    """The member with the highest hash of (member, name): the same answer on every machine."""
    if not members:
        return None
    return max(members, key=lambda m: hashlib.sha256(f"{m}|{name}".encode()).digest())


class PollerMembership:
    """This poller's lease and its view of the live pollers."""

    def __init__(self, locks: TokenLocks, lease_ttl_s: float = 10.0, poller_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.locks = locks
        self.lease_ttl_s = lease_ttl_s
        self.poller_id = poller_id or uuid.uuid4().hex[:12]
        self.clock = clock
        self._token: str | None = None
        self._expiries: dict[str, float] = {}  # member -> lease expiry (clock time) as last read from Redis
        self._lock = threading.Lock()

    @property
    def members_key(self) -> str:
        return self.locks.key("pollers")

    @property
    def key(self) -> str:
        return self.locks.key("poller", self.poller_id)

    def renew(self) -> list[str]:
        """Take or extend our lease, publish it, and refresh the member list. Returns the live members."""
        ttl_ms = int(self.lease_ttl_s * 1000)
        if self._token is None or not self.locks.extend(self.key, self._token, ttl_ms):
            if self._token is not None:
                log.warning("poller %s lost its lease; taking it again", self.poller_id)
            self._token = self.locks.acquire(self.key, ttl_ms) or self._token
        now = self.clock()
        client = self.locks.client
        pipe = client.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.poller_id: now + self.lease_ttl_s})
        pipe.zremrangebyscore(self.members_key, "-inf", now)
        pipe.zrangebyscore(self.members_key, now, "+inf", withscores=True)
        expiries = {(m.decode() if isinstance(m, bytes) else m): float(score) for m, score in pipe.execute()[2]}
        with self._lock:
            self._expiries = expiries
        return self.members()

    def members(self) -> list[str]:
        """The live members: those whose lease, as last read, has not expired yet (always including us)."""
        now = self.clock()
        with self._lock:
            live = {m for m, expires in self._expiries.items() if expires > now}
        live.add(self.poller_id)
        return sorted(live)

    def owns(self, name: str) -> bool:
        return rendezvous_owner(name, self.members()) == self.poller_id

    def claim_poll(self, trigger_name: str, interval_ms: int) -> bool:
        """At most one poll of ``trigger_name`` per ``interval_ms`` across every replica."""
        # A little under the interval, so the owner's own next poll (scheduled exactly one interval later) is
        # never refused because of clock jitter between its timer and Redis' expiry.
        ttl = max(1, int(interval_ms * 0.9))
        return self.locks.acquire(self.locks.key("poll", trigger_name), ttl, token=self.poller_id) is not None

    def leave(self) -> None:
        """Give the lease back so others take over at once (graceful shutdown)."""
        try:
            if self._token is not None:
                self.locks.release(self.key, self._token)
            self.locks.client.zrem(self.members_key, self.poller_id)
        except Exception as exc:
            log.warning("could not leave the poller group cleanly: %s", exc)
