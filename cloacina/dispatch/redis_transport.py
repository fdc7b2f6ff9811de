"""kombu's Redis transport, keeping one Redis client per channel instead of building one per command.

kombu's Redis channel builds a new ``redis.Redis`` object for every publish and every acknowledgement
(``Channel.conn_or_acquire``); the object is cheap to use but not to build: redis-py copies its table of response
callbacks into it each time. On the benchmark machine that was about 70 µs of CPU per message published and per
message acknowledged, in clients and in worker main processes alike. The client built here draws its connections
from the very same pool, and redis-py clients are safe to share between threads, so it is built once per channel
and again only when kombu replaces the channel's pool (after a connection loss).

Selected by :func:`cloacina.dispatch.celery_app.celery_config` for ``redis://`` broker URLs; ``rediss://`` and
Sentinel URLs keep kombu's own transports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    """A Redis channel whose commands share one client (per connection pool)."""

    _shared_client: tuple[Any, Any] | None = None

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared[0] is not pool:
            shared = self._shared_client = (pool, self._create_client())  # type: ignore[attr-defined]
        yield shared[1]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
