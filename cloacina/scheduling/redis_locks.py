"""Token-owned Redis locks: the dedup fast path and poller leases.

A lock is ``SET key token NX PX ttl``; release and extend are Lua scripts that act only if the key still holds
the caller's token, so a lock that expired and was taken by someone else is never deleted or extended by the
previous owner (the bug class RQ's ``DEL``-based release has). Locks may be lost at any time (TTL, Redis
restart): they only save work. Correctness comes from SQL (the partial unique index on active trigger runs)::

    import redis
    locks = TokenLocks(redis.Redis())
    token = locks.acquire("cloacina:dedup:t:abc", ttl_ms=60_000)
    locks.release("cloacina:dedup:t:abc", token)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import redis

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

KEY_PREFIX = "cloacina"


def dedup_key(trigger_name: str, context_hash: str) -> str:
    """The Redis key guarding one (trigger, context hash)."""
    return f"{KEY_PREFIX}:dedup:{trigger_name}:{context_hash}"


def new_token() -> str:
    return secrets.token_hex(16)


class TokenLocks:
    """Acquire, release and extend token-owned keys on one Redis connection pool.

    ``namespace`` prefixes every key it builds (:meth:`key`), so deployments sharing one Redis never see each
    other's locks, leases or poll claims.
    """

    def __init__(self, client: redis.Redis, namespace: str = KEY_PREFIX) -> None:
        self.client = client
        self.namespace = namespace
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)

    @classmethod
    def from_url(cls, url: str, namespace: str = KEY_PREFIX) -> TokenLocks:
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
        return cls(client, namespace)

    def key(self, *parts: str) -> str:
        """``<namespace>:<part>:<part>...``"""
        return ":".join((self.namespace, *parts))

    def dedup_key(self, trigger_name: str, context_hash: str) -> str:
        """The key guarding one (trigger, context hash) in this namespace."""
        return self.key("dedup", trigger_name, context_hash)

    def acquire(self, key: str, ttl_ms: int, token: str | None = None) -> str | None:
        """Take ``key`` for ``ttl_ms``; returns the token, or ``None`` if someone holds it."""
        token = token or new_token()
        return token if self.client.set(key, token, nx=True, px=max(1, int(ttl_ms))) else None

    def release(self, key: str, token: str) -> bool:
        """Delete ``key`` if it still holds ``token``."""
        return bool(self._release(keys=[key], args=[token]))

    def extend(self, key: str, token: str, ttl_ms: int) -> bool:
        """Reset the TTL of ``key`` to ``ttl_ms`` if it still holds ``token``; ``False`` if the lock was lost."""
        return bool(self._extend(keys=[key], args=[token, max(1, int(ttl_ms))]))

    def extend_many(self, items: Iterable[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """Extend several (key, token) locks in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for key, token in items:
            self._extend(keys=[key], args=[token, max(1, int(ttl_ms))], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def holder(self, key: str) -> Any:
        value = self.client.get(key)
        return value.decode() if isinstance(value, bytes) else value
