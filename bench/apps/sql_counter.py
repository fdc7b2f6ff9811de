"""Per-process SQL statement and transaction counters for the benchmarks, off unless asked for.

Worker processes of ``bench/bench_distributed.py`` import this through their bench app. When the environment
variable ``BENCH_SQL_COUNT_DIR`` is set, :func:`install_from_env` counts every statement at psycopg's cursor (so
the statements cloacina's hot path sends through psycopg directly are counted with SQLAlchemy's), attaches
SQLAlchemy event listeners to every ``Engine`` of the process (``begin``, ``commit``, ``rollback``), and a daemon
thread in each process (each prefork child gets its own after the fork) rewrites ``<dir>/<pid>.json`` with the
running totals every 50 ms while they change. The benchmark reads those files before and after a phase and takes
the difference.

Nothing here touches cloacina's code: the hooks sit on psycopg's ``Cursor`` and SQLAlchemy's ``Engine`` classes,
so they see the statements of cloacina's store and of Celery's database result backend alike (not those of a
connection passed to :func:`uncounted`: the benchmark's own monitoring). ``BEGIN`` is issued by the driver and
is not a statement here; a transaction is counted when SQLAlchemy begins one (also the implicit "autobegin"),
whether it then ends in ``COMMIT``, ``ROLLBACK`` or the pool's reset on return, and for every statement run on a
connection in autocommit (``autocommit_statements``: each is its own transaction; SQLAlchemy's begin, commit and
rollback events on such a connection reach no server and are not counted). ``connects`` counts new database
connections and ``first_connects`` new engines connecting for the first time: psycopg's dialect runs one
transaction on each new connection and SQLAlchemy one more on an engine's first, outside the listeners' view.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

ENV_VAR = "BENCH_SQL_COUNT_DIR"
FLUSH_INTERVAL_S = 0.05
FIELDS = ("statements", "transactions", "autocommit_statements", "commits", "rollbacks", "connects", "first_connects")


class Counter:
    """Statement and transaction totals of this process (reset in a forked child)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.values = dict.fromkeys(FIELDS, 0)
        self.version = 0
        self.flusher: threading.Thread | None = None

    def add(self, field: str) -> None:
        if self.pid != os.getpid():  # forked without the at-fork hook (should not happen): start afresh
            self._reset()
        with self.lock:
            self.values[field] += 1
            self.version += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


COUNTER = Counter()
_installed = False


def _autocommit(conn: Connection) -> bool:
    """Whether ``conn``'s driver connection is in autocommit (each statement its own transaction)."""
    try:
        return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
    except Exception:
        return False


def uncounted(conn: Any) -> Any:
    """Leave ``conn``'s statements out of the counts (the benchmark's monitoring connection); returns it."""
    conn._bench_uncounted = True
    return conn


def _count_statement(cursor: Any) -> None:
    if getattr(cursor.connection, "_bench_uncounted", False):
        return
    COUNTER.add("statements")
    if getattr(cursor.connection, "autocommit", False):
        COUNTER.add("autocommit_statements")
        COUNTER.add("transactions")
    _ensure_flusher()


def _counting(method: Any) -> Any:
    def counted(cursor: Any, *args: Any, **kwargs: Any) -> Any:
        _count_statement(cursor)
        return method(cursor, *args, **kwargs)

    return counted


def _on_begin(conn: Connection) -> None:
    if not _autocommit(conn):  # SQLAlchemy "begins" autocommit connections too; the server sees no transaction
        COUNTER.add("transactions")


def _on_connect(*_args: Any) -> None:
    COUNTER.add("connects")


def _on_first_connect(*_args: Any) -> None:
    COUNTER.add("first_connects")


def _on_commit(conn: Connection) -> None:
    if not _autocommit(conn):
        COUNTER.add("commits")


def _on_rollback(conn: Connection) -> None:
    if not _autocommit(conn):
        COUNTER.add("rollbacks")


def _write(directory: Path, counter: Counter) -> int:
    with counter.lock:
        version, values = counter.version, dict(counter.values)
    tmp = directory / f".{counter.pid}.tmp"
    tmp.write_text(json.dumps({"pid": counter.pid, **values}))
    os.replace(tmp, directory / f"{counter.pid}.json")
    return version


def _flush_forever(directory: Path, counter: Counter) -> None:
    written = -1
    while True:
        if counter.version != written:
            written = _write(directory, counter)
        time.sleep(FLUSH_INTERVAL_S)


def flush_now(**_kwargs: Any) -> None:
    """Write this process's totals now (at exit: a prefork child leaves through ``os._exit``, past ``atexit``)."""
    directory = os.environ.get(ENV_VAR)
    if directory and COUNTER.pid == os.getpid() and COUNTER.version:
        with contextlib.suppress(OSError):
            _write(Path(directory), COUNTER)


def _ensure_flusher() -> None:
    directory = os.environ.get(ENV_VAR)
    if not directory or COUNTER.flusher is not None:
        return
    with COUNTER.lock:
        if COUNTER.flusher is not None:
            return
        COUNTER.flusher = threading.Thread(
            target=_flush_forever, args=(Path(directory), COUNTER), name="bench-sql-counter", daemon=True
        )
    COUNTER.flusher.start()


def install() -> Counter:
    """Count every SQL statement and transaction of this process (also written to files if ``$BENCH_SQL_COUNT_DIR``
    is set); idempotent."""
    global _installed
    if not _installed:
        _installed = True
        psycopg.Cursor.execute = _counting(psycopg.Cursor.execute)  # type: ignore[method-assign]
        psycopg.Cursor.executemany = _counting(psycopg.Cursor.executemany)  # type: ignore[method-assign]
        event.listen(Engine, "begin", _on_begin)
        event.listen(Engine, "commit", _on_commit)
        event.listen(Engine, "rollback", _on_rollback)
        event.listen(Pool, "connect", _on_connect)
        event.listen(Pool, "first_connect", _on_first_connect)
        os.register_at_fork(after_in_child=COUNTER._reset)
        atexit.register(flush_now)
        try:
            from celery.signals import worker_process_shutdown
        except ImportError:
            pass
        else:
            worker_process_shutdown.connect(flush_now, weak=False)
    return COUNTER


def install_from_env() -> None:
    """Install the counters when ``$BENCH_SQL_COUNT_DIR`` is set (worker processes of the benchmark)."""
    if os.environ.get(ENV_VAR):
        install()


def read_dir(directory: Path) -> dict[int, dict[str, int]]:
    """The latest totals every process wrote into ``directory``, by pid."""
    totals: dict[int, dict[str, int]] = {}
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        totals[int(data["pid"])] = {field: int(data.get(field, 0)) for field in FIELDS}
    return totals
