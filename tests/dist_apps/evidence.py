"""The side channel of the distributed tests: what really ran, written by the tasks and triggers themselves.

Rows go straight to PostgreSQL (``DIST_EVIDENCE_URL``, the test's schema, never through the test's TCP proxy and
never through Redis), so they survive a Redis restart and a simulated database outage of the services:

- ``ev_executions``: one row per execution of a task function, inserted when it starts and completed when it
  returns (a SIGKILLed execution keeps ``ended_at`` NULL), with the process and process group that ran it.
- ``ev_polls``: one row per call of a trigger's poll function.
- ``ev_inbox``: the items the inbox triggers fire (``done_at`` is set by the last task of an item's run).

The test creates the tables with :data:`DDL` before it starts any service.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

DDL = (
    "CREATE TABLE ev_inbox (item integer PRIMARY KEY, shard integer NOT NULL, done_at double precision)",
    "CREATE TABLE ev_executions (id bigserial PRIMARY KEY, item integer, run_key text NOT NULL, task text NOT NULL,"
    " pid integer NOT NULL, pgid integer NOT NULL, started_at double precision NOT NULL,"
    " ended_at double precision)",
    "CREATE TABLE ev_polls (id bigserial PRIMARY KEY, trigger text NOT NULL, pid integer NOT NULL,"
    " pgid integer NOT NULL, at double precision NOT NULL)",
)

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DIST_EVIDENCE_URL"], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def _execute(sql: str, params: tuple[Any, ...]) -> Any:
    for attempt in range(5):  # evidence must not be lost to a blip of our own connection
        try:
            with _conn().cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        except psycopg.OperationalError:
            _local.conn = None
            if attempt == 4:
                raise
            time.sleep(0.2)  # back-off before the next attempt to write (a retry delay, not a synchronisation)
    return None


def execution_started(item: int | None, run_key: str, task: str) -> int:
    rows = _execute(
        "INSERT INTO ev_executions (item, run_key, task, pid, pgid, started_at) VALUES (%s, %s, %s, %s, %s, %s)"
        " RETURNING id",
        (item, run_key, task, os.getpid(), os.getpgid(0), time.time()),
    )
    return int(rows[0][0])


def execution_ended(execution_id: int) -> None:
    _execute("UPDATE ev_executions SET ended_at = %s WHERE id = %s", (time.time(), execution_id))


def poll_recorded(trigger: str) -> None:
    _execute(
        "INSERT INTO ev_polls (trigger, pid, pgid, at) VALUES (%s, %s, %s, %s)",
        (trigger, os.getpid(), os.getpgid(0), time.time()),
    )


def pending_items(shard: int) -> list[int]:
    rows = _execute("SELECT item FROM ev_inbox WHERE shard = %s AND done_at IS NULL", (shard,))
    return [int(r[0]) for r in rows]


def mark_done(item: int) -> None:
    _execute("UPDATE ev_inbox SET done_at = %s WHERE item = %s AND done_at IS NULL", (time.time(), item))


def claim_next_item() -> int | None:
    """Claim the lowest pending ``ev_inbox`` item (marking it fired) and return it; ``None`` when none is left.
    Claimed in the statement that reads it, so each item is fired exactly once whatever happens to its run."""
    rows = _execute(
        "UPDATE ev_inbox SET done_at = %s WHERE item = (SELECT min(item) FROM ev_inbox WHERE done_at IS NULL)"
        " AND done_at IS NULL RETURNING item",
        (time.time(),),
    )
    return int(rows[0][0]) if rows else None


# The execution row fanout_app writes (once) before a worker kills itself between a finish and its publish.
KILL_MARK = "killed-before-publish"
