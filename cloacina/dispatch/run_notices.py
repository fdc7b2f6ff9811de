"""``run ended`` notices over Redis pub/sub: the process that ends a run says so; waiting clients hear it.

A client of a distributed deployment (``DefaultRunner(..., broker_url=...)``) waiting in ``execute()`` or
``RunHandle.wait()`` would otherwise poll the database until the run ends. Workers (and pollers, whose sweeper
may end a run) publish the run id on one channel of the deployment's Redis namespace; the client listens on a
thread and wakes the waiter. Pub/sub is not durable, so waiting keeps a slow database poll as a fallback: a lost
notice costs latency, never correctness.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis

from cloacina.backoff import Backoff

log = logging.getLogger("cloacina.notices")
RECONNECT_BACKOFF = Backoff(initial_s=0.1, max_s=5.0)


class RunEndNotices:
    """Publishes and listens for run-ended notices on ``<namespace>:runs-ended``."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.channel = f"{namespace}:runs-ended"
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, run_id: str) -> None:
        """Tell listeners ``run_id`` ended. Never raises: the waiters' fallback poll covers a lost notice."""
        try:
            self.client.publish(self.channel, run_id)
        except redis.RedisError as exc:
            log.warning("could not publish the end of run %s (waiters will poll): %s", run_id, exc)

    @property
    def listening(self) -> bool:
        """A subscription is active now: notices published from here on are heard."""
        return self._subscribed.is_set()

    def listen(self, on_ended: Callable[[str], None]) -> None:
        """Call ``on_ended(run_id)`` for every notice, on a daemon thread, until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("already listening")
        self._thread = threading.Thread(target=self._loop, args=(on_ended,), name="cloacina-run-notices", daemon=True)
        self._thread.start()

    def _loop(self, on_ended: Callable[[str], None]) -> None:
        failures = 0
        while not self._stop.is_set():
            pubsub = redis.client.PubSub(self.client.connection_pool, ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._subscribed.set()
                failures = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        on_ended(data.decode() if isinstance(data, bytes) else str(data))
            except redis.RedisError as exc:
                self._subscribed.clear()
                delay = RECONNECT_BACKOFF.delay(failures)
                failures += 1
                log.warning("run-end notices unavailable (waiters poll meanwhile), retrying in %.1fs: %s", delay, exc)
                self._stop.wait(delay)
            except Exception:  # a waiter callback bug must not end the listener
                log.exception("run-end notice handling failed")
            finally:
                self._subscribed.clear()
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
