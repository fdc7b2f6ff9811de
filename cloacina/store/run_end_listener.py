"""Hearing that a run ended: PostgreSQL ``LISTEN`` on the channel the store's run-ended trigger notifies.

Migration 0005 makes PostgreSQL itself announce every run that becomes Completed or Failed, inside the
transaction that ends it (so a rolled-back end is never announced, and no writer has to remember to publish).
:class:`PgRunEndNotices` holds one dedicated connection that listens on the channel of its schema and calls
``on_ended(run_id)`` for each notification. Notifications are not stored: a client that was disconnected misses
the ones sent meanwhile, so waiters keep a slow database poll as a fallback (a lost notice costs latency, never
correctness), and :attr:`listening` says whether notices are being heard right now.

:class:`RunEndChannel` is what waiters and publishers need from any such channel; the Redis pub/sub one in
:mod:`cloacina.dispatch.run_notices` serves deployments whose database cannot notify (SQLite).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import psycopg
from sqlalchemy.engine import make_url

from cloacina.backoff import Backoff
from cloacina.store.database import Database

log = logging.getLogger("cloacina.notices")
RECONNECT_BACKOFF = Backoff(initial_s=0.1, max_s=5.0)
STOP_CHECK_S = 0.5  # how long one wait for notifications lasts before the stop flag is looked at again


class RunEndChannel(Protocol):
    """Announces and hears run ends."""

    @property
    def listening(self) -> bool:
        """Whether notices published from now on are heard."""
        ...

    def publish(self, run_id: str) -> None:
        """Announce that ``run_id`` ended (never raises)."""
        ...

    def listen(self, on_ended: Callable[[str], None]) -> None:
        """Call ``on_ended(run_id)`` for every notice, on a daemon thread, until :meth:`stop`."""
        ...

    def stop(self) -> None: ...


def run_end_channel(schema: str) -> str:
    """The notification channel of the tables in ``schema`` (the same expression as migration 0005's trigger)."""
    return "cloacina_ended_" + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()[:16]


class PgRunEndNotices:
    """Run-ended notices from PostgreSQL's trigger; :meth:`publish` is a no-op (the database announces)."""

    def __init__(self, db: Database) -> None:
        if db.dialect != "postgresql":
            raise ValueError("PostgreSQL run-end notices need a PostgreSQL database")
        self._conninfo = make_url(db.url.sqlalchemy_url).set(drivername="postgresql").render_as_string(False)
        self._schema = db.schema
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    def publish(self, run_id: str) -> None:
        """Nothing to do: the transaction that ended ``run_id`` has notified already."""

    def listen(self, on_ended: Callable[[str], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("already listening")
        self._thread = threading.Thread(target=self._loop, args=(on_ended,), name="cloacina-run-ends", daemon=True)
        self._thread.start()

    def _loop(self, on_ended: Callable[[str], None]) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    schema = self._schema
                    if schema is None:  # the schema the store's statements find workflow_runs in
                        row = conn.execute(
                            "SELECT COALESCE((SELECT n.nspname FROM pg_class c JOIN pg_namespace n"
                            " ON n.oid = c.relnamespace WHERE c.oid = to_regclass('workflow_runs')), current_schema())"
                        ).fetchone()
                        schema = str(row[0]) if row and row[0] else "public"
                    conn.execute(f'LISTEN "{run_end_channel(schema)}"')
                    self._subscribed.set()
                    failures = 0
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=STOP_CHECK_S):
                            self._deliver(on_ended, notice.payload)
            except psycopg.Error as exc:
                self._subscribed.clear()
                delay = RECONNECT_BACKOFF.delay(failures)
                failures += 1
                log.warning("run-end notices unavailable (waiters poll meanwhile), retrying in %.1fs: %s", delay, exc)
                self._stop.wait(delay)
            finally:
                self._subscribed.clear()

    @staticmethod
    def _deliver(on_ended: Callable[[str], None], run_id: str) -> None:
        try:
            on_ended(run_id)
        except Exception:  # a waiter callback bug must not end the listener
            log.exception("run-end notice handling failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=2 * STOP_CHECK_S + 1)
