"""Distributed benchmark: cloacina against plain Celery and durable Celery, same shapes and workers, as JSON.

Systems, all started by this script in its own process tree with the same workers at every topology of
``--topologies`` (``WxC``: W prefork workers x C children each; default ``1x2,2x2``, both in one invocation):

- ``celery``: plain Celery, results in Redis; the client waits on the final result (Redis pub/sub).
- ``celery_db``: the same tasks with Celery's SQLAlchemy result backend on PostgreSQL (a pool in every worker
  process, ``result_extended``); the client polls the final result every 20 ms.
- ``cloacina``: ``cloacina worker`` processes and a ``DefaultRunner`` client (``start_run`` + ``wait_for_run``).

Profiles (``--profile``; the full list is in the output's ``config.profile_settings``):

- ``defaults`` (the default, the headline: what users get): no tuning on either side. The Celery apps are what a
  Celery user writes: JSON, ``task_acks_late=True``, and Celery's defaults for the rest (prefetch multiplier 4,
  no ``task_reject_on_worker_lost``, task events off); workers run as ``celery -A <app> worker -c N``. cloacina's
  workers run as ``cloacina worker --app bench.apps.cloacina_bench_app --concurrency N`` with only
  ``CLOACINA_DATABASE_URL`` and ``CLOACINA_BROKER_URL`` set, and the client's environment has no ``CLOACINA_*``
  variable: log level and task events are whatever cloacina ships. Both sides' workers get ``-n <name>@%h``
  (two workers on one host need distinct node names; the script waits for them by name).
- ``tuned`` (the "same guarantees" view; the configuration of earlier versions of this script): the Celery apps
  get cloacina's delivery settings (``acks_late`` + ``reject_on_worker_lost``, prefetch 1, visibility timeout
  3600), every worker logs at WARNING (``--loglevel=WARNING``; ``CLOACINA_LOG_LEVEL=WARNING``) and task events
  are off for all three, or on for all three with ``--task-events`` (``CLOACINA_TASK_EVENTS`` in the workers'
  and the client's environment). ``--task-events`` is refused with ``--profile defaults``.

Any ``CLOACINA_*`` variable of the calling shell is removed first (listed in ``config.cleared_env``).

Shapes: ``chain3`` (a -> b -> c), ``chain10`` (a -> s1 -> ... -> s9), ``single`` (a), ``diamond``
(a -> b1..b4 -> d) and ``fanout16`` (a -> w0..w15 -> z); the task bodies return their input. Celery composes
them as ``chain(...)`` and ``chain(first.s(ctx), chord([step.s()] * k, join.s()))``; cloacina declares them as
workflows (bench/apps/cloacina_bench_app.py). Per topology, shape and system:

- throughput: ``--runs`` runs (``--wide-runs``, default half, for diamond and fanout16) submitted at once after
  a warm-up from one client thread (or ``--submitters``), then awaited; runs/s until the client saw the last one
  finish; ``submit_seconds`` is the part spent sending;
- send -> first-task-start latency over ``--latency-samples`` sequential runs (or as many as fit in
  ``--latency-budget-s``): the client notes ``time.time()`` before sending a run whose input carries a token; the
  run's first task writes its own ``time.time()`` to the private Redis under that token
  (bench/apps/latency_probe.py); ``submit_p50_ms`` is the part spent in the client's send call;
- CPU per run over the throughput phase, by process kind, from ``/proc/<pid>/stat`` (utime + stime) before and
  after: this client, worker main processes, worker children, the private redis-server, and the PostgreSQL
  backends connected to the system's own database;
- SQL per task over the throughput phase: statements and transactions counted by SQLAlchemy event listeners in
  every worker process (bench/apps/sql_counter.py, switched on by ``BENCH_SQL_COUNT_DIR``) and in this client;
  cross-checked once per topology and system against ``pg_stat_database`` (xact_commit + xact_rollback of the
  system's own database from before its start to after its last backend exited: PostgreSQL 15 flushes a
  backend's counters at most once a second, and on exit, so a per-phase delta would be short);
- Redis commands per run (``total_commands_processed`` of the private Redis).

Output: ``headline`` first, ``{topology: {shape: {x_celery, x_celery_db, latency_p50_x_celery, cpu_ms_per_run:
{system: ms}, runs_per_s: {system: runs/s}}}}``: cloacina's runs/s over plain and durable Celery's, cloacina's
latency p50 over Celery's, total CPU per run of each system; medians over ``--rounds`` with ``ranges``
(min, max) when there is more than one round. Then ``topologies.<WxC>``: ``results`` (first round, in full),
``ratios`` (of the first round: each system over Celery, cloacina over celery_db, latency p50s), and with
rounds > 1 ``rounds`` (each round's summary) and ``ratios_over_rounds`` (median, min, max of every ratio), and
``sql_cross_check``. Rounds are the outer loop, topologies next, systems inner. ``--scaling`` is gone:
``--topologies 1x2,2x2,1x4 --shapes chain3 --systems celery,cloacina`` gives the curve it gave (with latency
too; ``--latency-samples 0`` leaves that out).

Infrastructure: a private ``redis-server`` on a free port (``BENCH_REDIS_URL`` with its own database number if
redis-server is not installed), one PostgreSQL database per database-backed system, created on the server of
``BENCH_PG_URL`` (default postgresql://postgres@127.0.0.1:5432/test), shared by the topologies and rounds and
dropped at the end. Everything started is stopped on the way out, Ctrl-C and errors included. Worker logs go to
``--logs``.

Usage: python bench/bench_distributed.py [--profile defaults|tuned] [--topologies 1x2,2x2] [--runs 400]
       [--wide-runs 200] [--latency-samples 100] [--shapes chain3,single,diamond,chain10,fanout16]
       [--systems celery,celery_db,cloacina] [--rounds 1] [--quick] [--task-events (tuned only)]
       [--latency-budget-s 20] [--warmup N] [--submitters 1] [--logs bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import redis
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.apps import latency_probe, sql_counter  # noqa: E402  (needs ROOT on sys.path)

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
FALLBACK_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
SHAPE_TASKS = {"chain3": 3, "single": 1, "diamond": 6, "chain10": 10, "fanout16": 18}
WIDE_SHAPES = frozenset({"diamond", "fanout16"})  # throughput phases of --wide-runs runs (default: half --runs)
SYSTEMS = ("celery", "celery_db", "cloacina")
PROFILES = ("defaults", "tuned")
PROFILE_SETTINGS = {  # what each profile configures, printed in the output's config
    "defaults": {
        "celery_app": "JSON serializer, task_acks_late=True (and a queue name per system); Celery's defaults for "
        "the rest: prefetch multiplier 4, no task_reject_on_worker_lost, task events off",
        "celery_db_app": "the same plus the SQLAlchemy result backend on PostgreSQL: database_engine_options pool 2 "
        "(+2 overflow) per process, result_extended, own table names",
        "celery_workers": "celery -A bench.apps.bare_celery_app:app worker -c N -n <name>@%h (prefork, log level "
        "WARNING: Celery's defaults)",
        "cloacina_workers": "cloacina worker --app bench.apps.cloacina_bench_app --concurrency N -n <name>@%h with "
        "CLOACINA_DATABASE_URL and CLOACINA_BROKER_URL only (log level and task events: cloacina's shipped defaults)",
        "cloacina_client": "DefaultRunner(db_url, DefaultRunnerConfig(broker_url=...)), no CLOACINA_* variable",
    },
    "tuned": {
        "celery_app": "JSON, task_acks_late + task_reject_on_worker_lost, worker_prefetch_multiplier=1, "
        "visibility_timeout 3600, result_expires 3600, worker_hijack_root_logger=False, task events as "
        "--task-events (sent events from the client, task events from the workers)",
        "celery_db_app": "the same plus the SQLAlchemy result backend as in defaults",
        "celery_workers": "celery -A bench.apps.bare_celery_app:app worker -c N -Q <queue> --pool=prefork "
        "--loglevel=WARNING -n <name>@%h",
        "cloacina_workers": "cloacina worker --app bench.apps.cloacina_bench_app --concurrency N --pool=prefork "
        "-n <name>@%h with CLOACINA_LOG_LEVEL=WARNING and CLOACINA_TASK_EVENTS as --task-events (cloacina's "
        "own prefetch 1, acks_late and reject_on_worker_lost are not settings)",
        "cloacina_client": "DefaultRunner as in defaults, CLOACINA_TASK_EVENTS as --task-events in its environment",
    },
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
RUN_TIMEOUT_S = 600.0


# -- small helpers ------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 20.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    finally:  # also when interrupted while waiting
        for proc in procs:  # prefork children left behind by a killed main process share its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_workers(broker_url: str, names: list[str], procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    from celery import Celery

    app = Celery("bench_ping", broker=broker_url, set_as_current=False)
    wanted = set(names)
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with code {proc.returncode} during start-up; see the logs")
            replies = app.control.ping(timeout=0.5) or []
            seen = {name.split("@")[0] for reply in replies for name in reply}
            if wanted <= seen:
                return
        raise RuntimeError(f"workers {sorted(wanted - seen)} did not answer within {timeout_s}s; see the logs")
    finally:
        app.close()


# -- process CPU from /proc -----------------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()  # fields after "pid (comm)": state ppid ... utime(11) stime(12)


def _cpu_s(pid: int) -> float | None:
    fields = _proc_stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(parents: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and int(fields[1]) in parents:
                found.append(int(entry.name))
    return found


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CpuSnapshot = dict[str, dict[int, float]]


def _cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Seconds of CPU per kind between two snapshots; a process that appeared in between counts in full."""
    delta = {}
    for kind, pids in after.items():
        start = before.get(kind, {})
        delta[kind] = sum(max(0.0, used - start.get(pid, 0.0)) for pid, used in pids.items())
    return delta


# -- infrastructure -------------------------------------------------------------------------------------------------
@dataclass
class RedisServer:
    """A private redis-server on a free port, or (without redis-server) a database number of a shared Redis."""

    logs: Path
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            self.url = FALLBACK_REDIS_URL
            redis.Redis.from_url(self.url).flushdb()
            return
        port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="bench-redis-")
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--dir", self.workdir, "--maxclients", "2000"]
        self.proc = _spawn(args, dict(os.environ), self.logs / "redis.log")
        self.url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("private redis-server did not start; see redis.log") from None
                time.sleep(0.05)
        client.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def commands_processed(self) -> int:
        client = self.client()
        try:
            return int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushdb()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc], 10)
        elif self.url:
            with contextlib.suppress(redis.RedisError):
                self.flush()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def describe(self) -> str:
        return f"private redis-server {self.url}" if self.proc is not None else f"shared Redis {self.url} (flushed)"


@dataclass
class Postgres:
    """Databases of their own on the server of ``BENCH_PG_URL``, dropped at the end; and a monitor connection."""

    admin_url: str
    prefix: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)
    monitor: psycopg.Connection[Any] | None = None

    def connect(self) -> None:
        self.monitor = sql_counter.uncounted(psycopg.connect(self.admin_url, autocommit=True))

    def create(self, suffix: str) -> str:
        """Create database ``<prefix>_<suffix>``; returns its postgresql:// URL."""
        name = f"{self.prefix}_{suffix}"
        assert self.monitor is not None
        self.monitor.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def version(self) -> str:
        assert self.monitor is not None
        row = self.monitor.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def backend_pids(self, database: str) -> list[int]:
        assert self.monitor is not None
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def wait_no_backends(self, database: str, timeout_s: float = 15.0) -> None:
        """Wait until no backend is connected to ``database`` (they flush their statistics as they exit)."""
        deadline = time.monotonic() + timeout_s
        while self.backend_pids(database) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)

    def xact_commit(self, database: str) -> int:
        assert self.monitor is not None
        self.monitor.execute("SELECT pg_stat_clear_snapshot()")
        row = self.monitor.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
        return int(row[0]) if row else 0

    def drop_all(self) -> None:
        if self.monitor is None:
            return
        for name in reversed(self.created):
            try:
                self.monitor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error as exc:
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
        self.created.clear()
        self.monitor.close()
        self.monitor = None


# -- systems --------------------------------------------------------------------------------------------------------
class System(Protocol):
    name: str
    database: str | None  # PostgreSQL database of the system, if it has one
    worker_procs: list[subprocess.Popen[bytes]]
    sql_dir: Path | None

    def start(self) -> None: ...
    def submit(self, shape: str, ctx: dict[str, Any]) -> Any: ...
    def wait(self, handle: Any, timeout_s: float) -> None: ...
    def stop(self) -> None: ...
    def cleanup(self) -> None: ...


@dataclass
class Topology:
    workers: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.concurrency}"


class CelerySystem:
    """Plain Celery workers (``celery -A bench.apps.bare_celery_app:app worker``) and a client app."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        result_url: str,
        topology: Topology,
        logs: Path,
        *,
        profile: str,
        task_events: bool,
        database: str | None = None,
    ) -> None:
        self.name = name
        self.profile = profile
        self.task_events = task_events
        self.redis_url = redis_url
        self.result_url = result_url
        self.topology = topology
        self.logs = logs
        self.database = database
        self.durable = result_url.startswith("db+")
        self.queue = f"bench_{name}"
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.sql_dir: Path | None = Path(tempfile.mkdtemp(prefix="bench-sql-")) if self.durable else None
        self.app: Any = None
        self.tasks: dict[str, Any] = {}

    def start(self) -> None:
        from bench.apps.bare_celery_app import make_app

        db_pool = 2
        self.app, self.tasks = make_app(
            self.redis_url, self.result_url, self.queue, db_pool, profile=self.profile, task_events=self.task_events
        )
        if self.durable:
            # Celery pools connections only in forked processes: let this client pool too, as a server would.
            self.app.backend.session_manager.forked = True
            self.app.backend.ResultSession().close()  # creates the result tables before the workers race to
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BENCH_BROKER_URL": self.redis_url,
            "BENCH_RESULT_URL": self.result_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_DB_POOL": str(db_pool),
            "BENCH_PROFILE": self.profile,
            "BENCH_TASK_EVENTS": "1" if self.task_events else "",
            "BENCH_REDIS_URL": self.redis_url,
        }
        if self.sql_dir is not None:
            env[sql_counter.ENV_VAR] = str(self.sql_dir)
        names = [f"{self.name}{self.topology.label}n{i}" for i in range(self.topology.workers)]
        # defaults: `celery -A <app> worker -c N` (the app's default queue is the system's; -n names the node, as
        # anyone running two workers on one host must); tuned: as before, pool and log level spelled out.
        cmd = [sys.executable, "-m", "celery", "-A", "bench.apps.bare_celery_app:app", "worker"]
        cmd += ["-c", str(self.topology.concurrency)]
        if self.profile == "tuned":
            cmd += ["-Q", self.queue, "--pool=prefork", "--loglevel=WARNING"]
        for name in names:
            self.worker_procs.append(_spawn([*cmd, "-n", f"{name}@%h"], env, self.logs / f"{name}.log"))
        _wait_workers(self.redis_url, names, self.worker_procs, 90)

    def canvas(self, shape: str, ctx: dict[str, Any]) -> Any:
        from celery import chain, chord

        first, step, join = self.tasks["first"], self.tasks["step"], self.tasks["join"]
        if shape == "chain3":
            return chain(first.s(ctx), step.s(), step.s())
        if shape == "chain10":
            return chain(first.s(ctx), *(step.s() for _ in range(9)))
        if shape == "single":
            return first.s(ctx)
        if shape == "diamond":
            return chain(first.s(ctx), chord([step.s() for _ in range(4)], join.s()))
        if shape == "fanout16":
            return chain(first.s(ctx), chord([step.s() for _ in range(16)], join.s()))
        raise ValueError(shape)

    def submit(self, shape: str, ctx: dict[str, Any]) -> Any:
        return self.canvas(shape, ctx).apply_async()

    def wait(self, handle: Any, timeout_s: float) -> None:
        handle.get(timeout=timeout_s, interval=0.02 if self.durable else 0.5)

    def stop(self) -> None:
        _stop(self.worker_procs)
        self.worker_procs = []
        if self.app is not None:
            if self.durable:
                for engine in list(self.app.backend.session_manager._engines.values()):
                    engine.dispose()
            self.app.close()
            self.app = None

    def cleanup(self) -> None:
        if self.sql_dir is not None:
            shutil.rmtree(self.sql_dir, ignore_errors=True)


class CloacinaSystem:
    """``cloacina worker`` processes and a ``DefaultRunner`` client on the system's own database."""

    def __init__(
        self,
        redis_url: str,
        db_url: str,
        database: str,
        topology: Topology,
        logs: Path,
        *,
        profile: str,
        task_events: bool,
    ) -> None:
        self.name = "cloacina"
        self.profile = profile
        self.redis_url = redis_url
        self.db_url = db_url
        self.database: str | None = database
        self.topology = topology
        self.logs = logs
        self.task_events = task_events
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.sql_dir: Path | None = Path(tempfile.mkdtemp(prefix="bench-sql-"))
        self.runner: Any = None

    def start(self) -> None:
        import cloacina as cloaca
        from bench.apps import cloacina_bench_app  # noqa: F401  (registers the workflows in this process)

        # main() removed every CLOACINA_* variable from this process: with the defaults profile the client and
        # the workers see only the connection settings, so cloacina's shipped defaults decide the rest.
        tuning: dict[str, str] = {}
        if self.profile == "tuned":
            # The client sends Celery's task-sent events only when task events are on, as the Celery clients.
            tuning = {"CLOACINA_LOG_LEVEL": "WARNING", "CLOACINA_TASK_EVENTS": "true" if self.task_events else "false"}
            os.environ["CLOACINA_TASK_EVENTS"] = tuning["CLOACINA_TASK_EVENTS"]
        self.runner = cloaca.DefaultRunner(self.db_url, cloaca.DefaultRunnerConfig(broker_url=self.redis_url))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CLOACINA_DATABASE_URL": self.db_url,
            "CLOACINA_BROKER_URL": self.redis_url,
            **tuning,
            "BENCH_REDIS_URL": self.redis_url,
            sql_counter.ENV_VAR: str(self.sql_dir),
        }
        names = [f"cloacina{self.topology.label}n{i}" for i in range(self.topology.workers)]
        cmd = [sys.executable, "-m", "cloacina", "worker", "--app", "bench.apps.cloacina_bench_app"]
        cmd += ["--concurrency", str(self.topology.concurrency)]
        if self.profile == "tuned":
            cmd += ["--pool=prefork"]
        for name in names:
            self.worker_procs.append(_spawn([*cmd, "-n", f"{name}@%h"], env, self.logs / f"{name}.log"))
        _wait_workers(self.redis_url, names, self.worker_procs, 90)

    def submit(self, shape: str, ctx: dict[str, Any]) -> Any:
        from bench.apps.cloacina_bench_app import WORKFLOWS

        return self.runner.start_run(WORKFLOWS[shape], ctx)

    def wait(self, handle: Any, timeout_s: float) -> None:
        result = self.runner.wait_for_run(handle, timeout=timeout_s)
        if result.status != "Completed":
            raise RuntimeError(f"cloacina run {handle} ended {result.status}")

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()
            self.runner = None
        _stop(self.worker_procs)
        self.worker_procs = []
        os.environ.pop("CLOACINA_TASK_EVENTS", None)  # the tuned profile's, for this client only

    def cleanup(self) -> None:
        if self.sql_dir is not None:
            shutil.rmtree(self.sql_dir, ignore_errors=True)


# -- measurements ---------------------------------------------------------------------------------------------------
@dataclass
class SessionCheck:
    """What the SQL cross-check of one system's session needs from its start."""

    client_before: dict[str, int]
    xact_before: int
    tasks: int = 0
    worker_totals: dict[str, int] = field(default_factory=dict)


@dataclass
class Bench:
    redis: RedisServer
    pg: Postgres
    client_sql: sql_counter.Counter
    submitters: int = 1

    def cpu_snapshot(self, system: System) -> CpuSnapshot:
        mains = {p.pid for p in system.worker_procs}
        snap: CpuSnapshot = {"client": {os.getpid(): _self_cpu_s()}, "worker_main": {}, "worker_children": {}}
        for kind, pids in (("worker_main", list(mains)), ("worker_children", _children(mains))):
            for pid in pids:
                used = _cpu_s(pid)
                if used is not None:
                    snap[kind][pid] = used
        if self.redis.pid is not None:
            used = _cpu_s(self.redis.pid)
            snap["redis"] = {self.redis.pid: used or 0.0}
        if system.database is not None:
            snap["postgres_backends"] = {}
            for pid in self.pg.backend_pids(system.database):
                used = _cpu_s(pid)
                if used is not None:
                    snap["postgres_backends"][pid] = used
        return snap

    def sql_snapshot(self, system: System) -> dict[str, dict[str, int]]:
        workers: dict[str, int] = dict.fromkeys(sql_counter.FIELDS, 0)
        if system.sql_dir is not None:
            for values in sql_counter.read_dir(system.sql_dir).values():
                for key in sql_counter.FIELDS:
                    workers[key] += values[key]
        return {"workers": workers, "client": self.client_sql.snapshot()}

    def session_stopped(self, system: System, check: SessionCheck) -> None:
        """Read the workers' SQL totals over their whole life (they wrote them as they exited)."""
        check.worker_totals = self.sql_snapshot(system)["workers"]

    def session_begin(self, system: System) -> SessionCheck:
        xacts = self.pg.xact_commit(system.database) if system.database is not None else 0
        return SessionCheck(client_before=self.client_sql.snapshot(), xact_before=xacts)

    def session_end(self, system: System, check: SessionCheck) -> dict[str, Any]:
        """Transactions PostgreSQL counted on the system's database over its whole session, against the
        transactions the SQLAlchemy listeners counted in the client and the workers over the same session."""
        assert system.database is not None
        self.pg.wait_no_backends(system.database)
        pg_xacts = self.pg.xact_commit(system.database) - check.xact_before
        client_now = self.client_sql.snapshot()
        client = client_now["transactions"] - check.client_before["transactions"]
        workers = check.worker_totals.get("transactions", 0)
        unseen = 0  # one transaction per new connection and one per engine's first connect (dialect set-up)
        for key in ("connects", "first_connects"):
            unseen += client_now[key] - check.client_before[key] + check.worker_totals.get(key, 0)
        tasks = max(1, check.tasks)
        return {
            "tasks": check.tasks,
            "pg_stat_database_xacts": pg_xacts,
            "sqlalchemy_transactions": {"client": client, "workers": workers},
            "connection_setup_transactions": unseen,
            "sqlalchemy_plus_setup_transactions": client + workers + unseen,
            "pg_xacts_per_task": _r(pg_xacts / tasks, 2),
            "sqlalchemy_transactions_per_task": _r((client + workers) / tasks, 2),
        }

    def run_batch(self, system: System, shape: str, count: int, tag: str) -> None:
        handles = [system.submit(shape, {tag: i}) for i in range(count)]
        for handle in handles:
            system.wait(handle, RUN_TIMEOUT_S)

    def throughput(self, system: System, shape: str, runs: int, warmup: int) -> dict[str, Any]:
        self.run_batch(system, shape, warmup, "warm")
        time.sleep(0.3)  # let the workers go idle and the SQL counter files catch up
        sql_before = self.sql_snapshot(system)
        redis_before = self.redis.commands_processed()
        cpu_before = self.cpu_snapshot(system)
        start = time.perf_counter()
        if self.submitters > 1:
            with ThreadPoolExecutor(self.submitters, thread_name_prefix="bench-submit") as pool:
                handles = list(pool.map(lambda i: system.submit(shape, {"i": i}), range(runs)))
        else:
            handles = [system.submit(shape, {"i": i}) for i in range(runs)]
        submitted = time.perf_counter() - start
        for handle in handles:
            system.wait(handle, RUN_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        cpu_after = self.cpu_snapshot(system)
        redis_after = self.redis.commands_processed()
        result: dict[str, Any] = {
            "runs": runs,
            "seconds": _r(elapsed),
            "submit_seconds": _r(submitted),
            "runs_per_s": _r(runs / elapsed, 1),
        }
        cpu = _cpu_delta(cpu_before, cpu_after)
        per_run = {kind: _r(1000 * used / runs) for kind, used in cpu.items()}
        per_run["total"] = _r(1000 * sum(cpu.values()) / runs)
        result["cpu_ms_per_run"] = per_run
        result["redis_commands_per_run"] = _r((redis_after - redis_before) / runs, 1)
        time.sleep(0.3)  # the counter files are rewritten every 50 ms
        sql_after = self.sql_snapshot(system)
        tasks = runs * SHAPE_TASKS[shape]
        sql: dict[str, Any] = {}
        w0, w1 = sql_before["workers"], sql_after["workers"]
        c0, c1 = sql_before["client"], sql_after["client"]
        if system.sql_dir is not None:
            for key in ("statements", "transactions", "autocommit_statements", "commits", "rollbacks", "connects"):
                sql[f"worker_{key}_per_task"] = _r((w1[key] - w0[key]) / tasks, 2)
        if system.database is not None:
            for key in ("statements", "transactions"):
                sql[f"client_{key}_per_run"] = _r((c1[key] - c0[key]) / runs, 2)
        if sql:
            result["sql"] = sql
        return result

    def latency(self, system: System, shape: str, samples: int, budget_s: float) -> dict[str, Any]:
        """Send -> first-task-start of ``samples`` sequential runs (each waited for before the next), stopping
        early once ``budget_s`` is spent."""
        client = self.redis.client()
        lat_ms: list[float] = []
        submit_ms: list[float] = []
        deadline = time.monotonic() + budget_s
        try:
            for _ in range(samples):
                if lat_ms and time.monotonic() > deadline:
                    break
                token = uuid.uuid4().hex
                sent = time.time()
                handle = system.submit(shape, {latency_probe.TOKEN_KEY: token})
                submit_ms.append((time.time() - sent) * 1000)
                system.wait(handle, 60)
                raw = client.get(latency_probe.key(token))
                if raw is None:
                    raise RuntimeError(f"{system.name} {shape}: the first task recorded no start time")
                client.delete(latency_probe.key(token))
                lat_ms.append((float(raw) - sent) * 1000)
        finally:
            client.close()
        if not lat_ms:
            return {"samples": 0}
        return {
            "samples": len(lat_ms),
            "budget_hit": len(lat_ms) < samples,
            "submit_p50_ms": _r(statistics.median(submit_ms), 2),
            "p50_ms": _r(statistics.median(lat_ms), 2),
            "p90_ms": _r(_pct(lat_ms, 0.90), 2),
            "p99_ms": _r(_pct(lat_ms, 0.99), 2),
            "max_ms": _r(max(lat_ms), 2),
        }


def _make_system(
    name: str,
    topology: Topology,
    redis_url: str,
    databases: dict[str, tuple[str, str]],
    logs: Path,
    *,
    profile: str,
    task_events: bool,
) -> System:
    opts: dict[str, Any] = {"profile": profile, "task_events": task_events}
    if name == "celery":
        return CelerySystem("celery", redis_url, redis_url, topology, logs, **opts)
    if name == "celery_db":
        url, database = databases["celery_db"]
        result_url = "db+" + make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return CelerySystem("celery_db", redis_url, result_url, topology, logs, database=database, **opts)
    if name == "cloacina":
        url, database = databases["cloacina"]
        return CloacinaSystem(redis_url, url, database, topology, logs, **opts)
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")


@contextlib.contextmanager
def _running(system: System, redis_server: RedisServer, after_stop: Callable[[], None] | None = None) -> Iterator[None]:
    """Start ``system``; on the way out stop it, run ``after_stop`` and remove what it left (keys, count files)."""
    try:
        system.start()
        yield
    finally:
        try:
            system.stop()
            if after_stop is not None:
                after_stop()
        finally:
            system.cleanup()
            redis_server.flush()  # no broker, result or probe keys carried over to the next system


def _ratios(results: dict[str, dict[str, Any]], shapes: list[str]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    for shape in shapes:
        by_system = results.get(shape, {})

        def rps(system: str, by_system: dict[str, Any] = by_system) -> float | None:
            entry = by_system.get(system)
            return entry["throughput"]["runs_per_s"] if entry else None

        def p50(system: str, by_system: dict[str, Any] = by_system) -> float | None:
            entry = by_system.get(system)
            return entry["latency"].get("p50_ms") if entry and "latency" in entry else None

        out: dict[str, Any] = {}
        base, base_lat = rps("celery"), p50("celery")
        for system in ("celery_db", "cloacina"):
            value, lat = rps(system), p50(system)
            if base and value:
                out[f"{system}_vs_celery_runs_per_s"] = _r(value / base)
            if base_lat and lat:
                out[f"{system}_vs_celery_latency_p50"] = _r(lat / base_lat, 2)
        durable, ours = rps("celery_db"), rps("cloacina")
        if durable and ours:
            out["cloacina_vs_celery_db_runs_per_s"] = _r(ours / durable)
        lat_durable, lat_ours = p50("celery_db"), p50("cloacina")
        if lat_durable and lat_ours:
            out["cloacina_vs_celery_db_latency_p50"] = _r(lat_ours / lat_durable, 2)
        ratios[shape] = out
    return ratios


def _cpu_total(entry: dict[str, Any] | None) -> float | None:
    return entry["throughput"]["cpu_ms_per_run"]["total"] if entry else None


def _round_summary(results: dict[str, dict[str, Any]], shapes: list[str]) -> dict[str, Any]:
    """One round's headline figures: runs/s, latency p50 and CPU per run per shape and system, and the ratios."""
    summary: dict[str, Any] = {}
    for shape in shapes:
        summary[shape] = {
            name: {
                "runs_per_s": entry["throughput"]["runs_per_s"],
                "latency_p50_ms": entry.get("latency", {}).get("p50_ms"),
                "cpu_ms_per_run": _cpu_total(entry),
            }
            for name, entry in results.get(shape, {}).items()
        }
    summary["ratios"] = _ratios(results, shapes)
    return summary


def _ratios_over_rounds(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Each ratio's median, minimum and maximum over the rounds (the machine's speed drifts between systems)."""
    out: dict[str, Any] = {}
    for shape in per_round[0]:
        out[shape] = {}
        for key in per_round[0][shape]:
            values = sorted(r[shape][key] for r in per_round if key in r.get(shape, {}))
            out[shape][key] = {"median": _r(statistics.median(values)), "min": values[0], "max": values[-1]}
    return out


def _median_range(values: list[float | None], digits: int = 3) -> tuple[float | None, list[float] | None]:
    """Median of the values present, and [min, max] of them (None without values)."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return None, None
    return _r(statistics.median(present), digits), [round(present[0], digits), round(present[-1], digits)]


def _headline(rounds: list[dict[str, dict[str, Any]]], shapes: list[str], systems: list[str]) -> dict[str, Any]:
    """One topology's table row per shape: cloacina's runs/s over each Celery's, its latency p50 over Celery's,
    CPU per run of each system, and runs/s; medians over the rounds, with ``ranges`` (min, max) when rounds > 1."""
    ratio_keys = {
        "x_celery": "cloacina_vs_celery_runs_per_s",
        "x_celery_db": "cloacina_vs_celery_db_runs_per_s",
        "latency_p50_x_celery": "cloacina_vs_celery_latency_p50",
    }
    ratios = [_ratios(r, shapes) for r in rounds]
    out: dict[str, Any] = {}
    for shape in shapes:
        row: dict[str, Any] = {}
        ranges: dict[str, Any] = {}
        for name, key in ratio_keys.items():
            row[name], ranges[name] = _median_range([r[shape].get(key) for r in ratios], 2)
        cpu: dict[str, Any] = {}
        rps: dict[str, Any] = {}
        for system in systems:
            entries = [r.get(shape, {}).get(system) for r in rounds]
            cpu[system], ranges[f"cpu_ms_per_run.{system}"] = _median_range([_cpu_total(e) for e in entries], 2)
            rps[system], ranges[f"runs_per_s.{system}"] = _median_range(
                [e["throughput"]["runs_per_s"] if e else None for e in entries], 1
            )
        row["cpu_ms_per_run"] = cpu
        row["runs_per_s"] = rps
        if len(rounds) > 1:
            row["ranges"] = {k: v for k, v in ranges.items() if v is not None}
        out[shape] = row
    return out


def _parse_topologies(spec: str) -> list[Topology]:
    """``"1x2,2x2"`` -> workers x concurrency pairs."""
    topologies = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        workers, sep, concurrency = part.partition("x")
        if not sep or not workers.isdigit() or not concurrency.isdigit() or int(workers) < 1 or int(concurrency) < 1:
            raise ValueError(f"bad topology {part!r}: expected WORKERSxCONCURRENCY, e.g. 2x2")
        topologies.append(Topology(int(workers), int(concurrency)))
    if not topologies:
        raise ValueError("no topology given")
    return topologies


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="defaults",
        help="defaults: both sides as shipped, no tuning (the headline); tuned: the Celery apps get cloacina's "
        "guarantees (prefetch 1, reject_on_worker_lost) and every worker logs at WARNING with task events as "
        "--task-events says",
    )
    parser.add_argument(
        "--runs", type=int, default=400, help="runs submitted at once per throughput phase (narrow shapes)"
    )
    parser.add_argument(
        "--wide-runs",
        type=int,
        default=None,
        help=f"runs per throughput phase of the wide shapes ({', '.join(sorted(WIDE_SHAPES))}; default: runs/2)",
    )
    parser.add_argument("--latency-samples", type=int, default=100, help="sequential runs for the latency figures")
    parser.add_argument("--shapes", default=",".join(SHAPE_TASKS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--topologies",
        default="1x2,2x2",
        help="WORKERSxCONCURRENCY list: every system runs every shape at each (prefork workers x children each)",
    )
    parser.add_argument(
        "--latency-budget-s",
        type=float,
        default=20.0,
        help="stop sampling latency of a shape and system after this long (celery_db's chords wait ~1 s per run "
        "for chord_unlock)",
    )
    parser.add_argument(
        "--submitters", type=int, default=1, help="client threads submitting the throughput runs (default: one)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per shape (default: runs/10, 5..30)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: at most 30 runs, 10 latency samples, 5 s budget"
    )
    parser.add_argument(
        "--task-events", action="store_true", help="tuned profile only: send Celery task events (all systems)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every topology and system this many times (fresh workers each round) and report medians, min "
        "and max over the rounds; a shared machine's speed drifts while the systems run one after another",
    )
    parser.add_argument("--logs", default="bench/results", help="directory for worker and redis logs")
    args = parser.parse_args()
    if args.task_events and args.profile != "tuned":
        parser.error("--task-events is a tuning flag: use it with --profile tuned")
    if args.quick:
        args.runs, args.latency_samples = min(args.runs, 30), min(args.latency_samples, 10)
        args.latency_budget_s = min(args.latency_budget_s, 5.0)
    wide_runs = args.wide_runs if args.wide_runs is not None else max(1, args.runs // 2)
    if args.quick:
        wide_runs = min(wide_runs, 30)
    shapes = [s for s in args.shapes.split(",") if s]
    systems = [s for s in args.systems.split(",") if s]
    for shape in shapes:
        if shape not in SHAPE_TASKS:
            parser.error(f"unknown shape {shape!r}; choose from {', '.join(SHAPE_TASKS)}")
    for system in systems:
        if system not in SYSTEMS:
            parser.error(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    try:
        topologies = _parse_topologies(args.topologies)
    except ValueError as exc:
        parser.error(str(exc))
    if len({t.label for t in topologies}) != len(topologies):
        parser.error("a topology is listed twice")
    runs_of = {shape: wide_runs if shape in WIDE_SHAPES else args.runs for shape in shapes}
    warmup_of = {
        shape: args.warmup if args.warmup is not None else max(5, min(30, runs // 10))
        for shape, runs in runs_of.items()
    }
    logs = (ROOT / args.logs) if not Path(args.logs).is_absolute() else Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    # No CLOACINA_* variable of the caller's shell reaches the client or the workers: the defaults profile sets
    # only the connection settings, the tuned one those and its own (CloacinaSystem.start).
    cleared_env = sorted(k for k in os.environ if k.startswith("CLOACINA_"))
    for key in cleared_env:
        del os.environ[key]
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    began = time.perf_counter()
    client_sql = sql_counter.install()
    output: dict[str, Any] = {
        "config": {
            "profile": args.profile,
            "profile_settings": PROFILE_SETTINGS[args.profile],
            "topologies": [t.label for t in topologies],
            "runs": runs_of,
            "warmup_runs": warmup_of,
            "latency_samples": args.latency_samples,
            "latency_budget_s": args.latency_budget_s,
            "submitters": args.submitters,
            "pool": "prefork",
            "shapes": {s: SHAPE_TASKS[s] for s in shapes},
            "systems": systems,
            "task_events": args.task_events if args.profile == "tuned" else "shipped default of each side",
            "rounds": args.rounds,
            "cleared_env": cleared_env,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    redis_server = RedisServer(logs)
    pg = Postgres(PG_URL)
    with contextlib.ExitStack() as stack:
        stack.callback(redis_server.stop)
        redis_server.start()
        stack.callback(pg.drop_all)
        pg.connect()
        import celery

        output["config"].update(celery=celery.__version__, redis=redis_server.describe(), postgresql=pg.version())
        databases = {}
        for name in ("celery_db", "cloacina"):
            if name in systems:
                url = pg.create(name)
                databases[name] = (url, make_url(url).database or "")
        bench = Bench(redis_server, pg, client_sql, args.submitters)
        rounds: dict[str, list[dict[str, dict[str, Any]]]] = {t.label: [] for t in topologies}
        cross_check: dict[str, dict[str, Any]] = {t.label: {} for t in topologies}
        for round_index in range(args.rounds):  # rounds outermost: drift spreads over every topology alike
            for topology in topologies:
                results: dict[str, dict[str, Any]] = {shape: {} for shape in shapes}
                for name in systems:
                    system = _make_system(
                        name,
                        topology,
                        redis_server.url,
                        databases,
                        logs,
                        profile=args.profile,
                        task_events=args.task_events,
                    )
                    check = bench.session_begin(system)
                    with _running(
                        system, redis_server, lambda system=system, check=check: bench.session_stopped(system, check)
                    ):
                        for shape in shapes:
                            runs, warmup = runs_of[shape], warmup_of[shape]
                            entry = {"throughput": bench.throughput(system, shape, runs, warmup)}
                            if args.latency_samples > 0:
                                entry["latency"] = bench.latency(
                                    system, shape, args.latency_samples, args.latency_budget_s
                                )
                            results[shape][name] = entry
                            samples = entry["latency"]["samples"] if "latency" in entry else 0
                            check.tasks += (warmup + runs + samples) * SHAPE_TASKS[shape]
                    if system.database is not None and round_index == 0:
                        cross_check[topology.label][name] = bench.session_end(system, check)
                rounds[topology.label].append(results)
        output["headline"] = {label: _headline(per_round, shapes, systems) for label, per_round in rounds.items()}
        by_topology: dict[str, Any] = {}
        for label, per_round in rounds.items():
            entry: dict[str, Any] = {"results": per_round[0], "ratios": _ratios(per_round[0], shapes)}
            if len(per_round) > 1:
                entry["rounds"] = [_round_summary(r, shapes) for r in per_round]
                entry["ratios_over_rounds"] = _ratios_over_rounds([_ratios(r, shapes) for r in per_round])
            entry["sql_cross_check"] = cross_check[label]
            by_topology[label] = entry
        output["topologies"] = by_topology
    output["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    output["elapsed_s"] = round(time.perf_counter() - began, 1)
    output["notes"] = NOTES
    # headline first, for pasting into a table
    ordered = {"headline": output.pop("headline", {}), **output}
    print(json.dumps(ordered, indent=2))


NOTES = [
    "profile defaults: no tuning on either side (Celery: JSON + acks_late, its default prefetch 4, no "
    "reject_on_worker_lost, events off, `worker -c N`; cloacina: `cloacina worker --concurrency N` with only the "
    "database and broker URLs, so its shipped log level and task events). profile tuned: Celery gets cloacina's "
    "delivery settings (prefetch 1, reject_on_worker_lost), every worker logs at WARNING, task events off for all "
    "or on for all (--task-events). config.profile_settings spells both out.",
    "cloacina fuses a sequential stretch into one Celery message: chain3 and chain10 are 1 broker message per run "
    "for cloacina, 3 and 10 for Celery; diamond and fanout16 are chain(a, chord(k steps), join) in Celery, "
    "a -> k parallel tasks -> join in cloacina (its fan-in is a Celery chord too).",
    "celery_db chords use Celery's chord_unlock polling (countdown 1 s, result_chord_retry_interval 1 s), as "
    "Celery does for any backend without native join.",
    "cpu_ms_per_run: /proc utime+stime deltas over the throughput phase (10 ms ticks); postgres_backends are the "
    "backends connected to the system's own database, not PostgreSQL's background processes. The headline gives "
    "the total.",
    "sql: statements counted at psycopg's cursor and transactions by SQLAlchemy listeners, in every worker "
    "process, per task; client_* in this process per run (cloacina's client creates the run and reads it once "
    "after its end notice; celery_db's client polls the result every 20 ms). sql_cross_check compares them with "
    "pg_stat_database over each system's first session at that topology (warm-ups, throughput, latency runs, "
    "start-up and migration included); connection_setup_transactions are the ones the listeners cannot see (one "
    "per new connection, one per engine's first connect: psycopg dialect set-up).",
    "Throughput ends when the client has seen every run finish: Redis pub/sub for celery, 20 ms polls for "
    "celery_db, PostgreSQL's run-end notification (LISTEN) for cloacina. When submit_seconds is close to seconds, "
    "the client's send call bounds the figure, not the workers (try --submitters 2).",
    "--rounds N repeats every topology and system N times with fresh workers; the headline gives medians and "
    "ranges, ratios_over_rounds each ratio's median, min and max. On a shared machine the figures of one round "
    "can drift by a third between systems.",
    "latency.budget_hit: fewer samples than asked because --latency-budget-s ran out (celery_db's chords: each "
    "sequential run waits for chord_unlock).",
]


if __name__ == "__main__":
    main()
