"""Harness for the distributed tests: real service processes, a private Redis, a TCP proxy, wait helpers.

- :class:`Services` starts ``cloacina worker`` / ``cloacina poller`` (or any command) as separate processes, each
  in its own session so that :meth:`ServiceProcess.kill` with SIGKILL takes the whole process group down at once
  (a Celery prefork worker and its children die together, as when a container or machine dies). Output goes to
  ``<tmp_path>/<name>.log``; :meth:`Services.dump_logs` prints the tails. :meth:`Services.stop_all` is safe to
  call from a fixture's teardown whatever state the processes are in.
- :class:`RedisServer` is a private ``redis-server`` (no persistence) on a free port that a test may kill and
  restart; a restart loses every key, as a Redis without persistence does. The shared server is never touched.
- :class:`TcpProxy` forwards 127.0.0.1:<port> to PostgreSQL; :meth:`TcpProxy.stop` drops every connection and
  refuses new ones (a database outage as the services see it) and :meth:`TcpProxy.start` brings it back.
- :func:`migrated_schema` / :func:`service_db_url`: a fresh migrated PostgreSQL schema and the URL services use
  for it (``options=-csearch_path=<schema>``).

Waiting and free ports come from :mod:`tests.support` (``wait_until``, ``free_port``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- PostgreSQL ---------------------------------------------------------------------------------------------
def sqlalchemy_url(pg_url: str) -> str:
    return pg_url.replace("postgresql://", "postgresql+psycopg://", 1)


def service_db_url(pg_url: str, schema: str, *, host_port: tuple[str, int] | None = None) -> str:
    """``pg_url`` with ``search_path`` set to ``schema`` (and optionally another host:port, e.g. a proxy)."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    if host_port is not None:
        url = url.set(host=host_port[0], port=host_port[1])
    rendered = url.set(query={}).render_as_string(hide_password=False)
    return f"{rendered}?options={quote(f'-csearch_path={schema}')}"


def migrated_schema(pg_url: str, schema: str) -> None:
    """Create ``schema`` and migrate it to head (what ``cloacina db upgrade`` does)."""
    from cloacina.store.database import Database

    db = Database(pg_url, schema=schema, pool_size=1)
    try:
        db.upgrade()
    finally:
        db.dispose()


def execute_sql(pg_url: str, schema: str, *statements: str) -> None:
    engine = create_engine(sqlalchemy_url(pg_url))
    try:
        with engine.begin() as conn:
            conn.execute(text(f'SET search_path TO "{schema}"'))
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def query(pg_url: str, schema: str, sql: str, **params: Any) -> list[Any]:
    """Rows of one query in ``schema`` (a short-lived connection: safe to call while services run)."""
    engine = create_engine(sqlalchemy_url(pg_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'SET search_path TO "{schema}"'))
            return list(conn.execute(text(sql), params).all())
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_schema(pg_url: str) -> Iterator[str]:
    """A new schema name, dropped (CASCADE) afterwards."""
    schema = f"d_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        engine = create_engine(sqlalchemy_url(pg_url))
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


# -- service processes --------------------------------------------------------------------------------------
@dataclass
class ServiceProcess:
    """One service process (leader of its own process group) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.time)
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the service and every child it forked)."""
        if self.killed_at is None and sig == signal.SIGKILL:
            self.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait_exit(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the leader (as ``docker stop`` does), then SIGKILL the whole group after ``grace_s``."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=max(0.01, grace_s))
        # Children may outlive a leader that exited: the group is killed in any case.
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class Services:
    """Starts service processes with a shared environment and cleans all of them up."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.processes: list[ServiceProcess] = []

    def start(self, name: str, argv: list[str], env: dict[str, str | None] | None = None) -> ServiceProcess:
        """Start ``argv`` as service ``name``; ``env`` adds to (``None``: removes from) the shared environment."""
        merged = {**os.environ, **self.env, **(env or {})}
        full_env = {k: v for k, v in merged.items() if v is not None}
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), full_env.get("PYTHONPATH")]))
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() reaches every child
            )
        service = ServiceProcess(name, proc, log_path)
        self.processes.append(service)
        return service

    def cloacina(self, name: str, *args: str, env: dict[str, str | None] | None = None) -> ServiceProcess:
        """``python -m cloacina <args>`` as service ``name``."""
        return self.start(name, [sys.executable, "-m", "cloacina", *args], env)

    def worker(
        self,
        name: str,
        app: str,
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        queues: str | None = None,
        **env: str | None,
    ) -> ServiceProcess:
        """``cloacina worker``; ``queues``: its ``--queues`` (default: the deployment's queue)."""
        routing = ["--queues", queues] if queues is not None else []
        return self.cloacina(
            name, "worker", "--app", app, "--concurrency", str(concurrency), "--pool", pool, "--hostname",
            f"{name}@%h", *routing, env=env,
        )  # fmt: skip

    def poller(self, name: str, app: str, **env: str | None) -> ServiceProcess:
        return self.cloacina(name, "poller", "--app", app, env=env)

    def log_of(self, name: str) -> str:
        """Everything service ``name`` has written so far (all its incarnations)."""
        return "".join(p.log_text() for p in self.processes if p.name == name)

    def by_pid(self, pid: int) -> ServiceProcess | None:
        return next((p for p in self.processes if p.pid == pid), None)

    def stop_all(self, grace_s: float = 1.0) -> None:
        """SIGTERM every leader, give them ``grace_s`` together, then SIGKILL every process group."""
        for service in self.processes:
            if service.alive:
                with contextlib.suppress(ProcessLookupError):
                    service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in self.processes:
            try:
                service.stop(grace_s=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # keep going: every process must be cleaned up
                print(f"could not stop {service.name}: {exc!r}", file=sys.stderr)

    def dump_logs(self, tail_lines: int = 80) -> None:
        """Print the last lines of every service's log (pytest shows them when the test failed)."""
        for service in self.processes:
            lines = service.log_text().splitlines()
            state = "running" if service.alive else f"exited {service.proc.returncode}"
            print(f"\n===== {service.name} (pid {service.pid}, {state}) {service.log_path} =====")
            print("\n".join(lines[-tail_lines:]))


def wait_for_worker_ready(service: ServiceProcess, timeout_s: float = 60.0) -> None:
    """Celery prints ``<name> ready.`` once the worker consumes."""
    wait_until(
        lambda: " ready." in service.log_text() or _exited(service),
        timeout_s,
        message=f"worker {service.name} to be ready",
    )
    assert service.alive, f"worker {service.name} exited:\n{service.log_text()[-3000:]}"


def wait_for_poller_ready(service: ServiceProcess, timeout_s: float = 60.0) -> str:
    """Waits for ``poller <id> running``; returns the poller id."""

    def poller_id() -> str | None:
        for line in service.log_text().splitlines():
            if line.startswith("poller ") and line.endswith(" running"):
                return line.split()[1]
        _exited(service)
        return None

    return wait_until(poller_id, timeout_s, message=f"poller {service.name} to start")


def _exited(service: ServiceProcess) -> bool:
    """``False`` while ``service`` runs; an ``AssertionError`` with its output once it has exited."""
    if not service.alive:
        raise AssertionError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_text()[-3000:]}")
    return False


# -- a private Redis --------------------------------------------------------------------------------------
class RedisServer:
    """A ``redis-server`` of our own, without persistence, that a test may kill and restart (losing all data)."""

    def __init__(self, log_dir: Path, port: int | None = None, databases: int = 16) -> None:
        self.port = port or free_port()
        self.databases = databases
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database ``db`` (0 .. ``databases`` - 1) on this server."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_s: float = 10.0) -> None:
        import redis

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--databases", str(self.databases)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(client.ping, timeout_s, message=f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server and every key in it are gone."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)  # how long Redis stays down: the outage the test asks for
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def dbsize(self) -> int:
        import redis

        client = redis.Redis(port=self.port)
        try:
            return int(client.dbsize())  # type: ignore[arg-type]
        finally:
            client.close()


# -- a TCP proxy for database outages -----------------------------------------------------------------------
class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``. ``stop()`` is an outage: open connections are cut and new
    ones refused (nothing listens on the port); ``start()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting: threading.Thread | None = None
        self.connections_accepted = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)
        listener.listen(64)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._accepting.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    @property
    def is_running(self) -> bool:
        return self._listener is not None

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: outage
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
                self.connections_accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
                with self._lock:
                    if a not in self._sockets:
                        return
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._sockets.discard(a)
                self._sockets.discard(b)
            _close(a)
            _close(b)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# -- a test deployment: schema, Redis, environment, evidence -------------------------------------------------
# Short recovery settings (DESIGN §4 defaults are 5 s / 30 s / 30 s / 5 s / 10 s).
FAST_RECOVERY = {
    "CLOACINA_TASK_HEARTBEAT_INTERVAL_S": "0.5",
    "CLOACINA_TASK_HEARTBEAT_TIMEOUT_S": "3",
    "CLOACINA_STALE_RUN_S": "4",
    "CLOACINA_SWEEP_INTERVAL_S": "1",
    "CLOACINA_LEASE_TTL_S": "3",
}
INBOX_APP = "tests.dist_apps.inbox_app"
TICKER_APP = "tests.dist_apps.ticker_app"


@dataclass(frozen=True)
class Execution:
    """One row of ``ev_executions``: a task function that started (and ended, unless it was killed)."""

    id: int
    item: int | None
    run_key: str
    task: str
    pid: int
    pgid: int
    started_at: float
    ended_at: float | None


@dataclass
class Cluster:
    """One test's deployment: a migrated schema with the evidence tables, a Redis URL and the service processes."""

    pg_url: str
    schema: str
    redis_url: str
    services: Services

    @property
    def direct_db_url(self) -> str:
        return service_db_url(self.pg_url, self.schema)

    def route_services_through(self, address: tuple[str, int]) -> None:
        """Services started from now on reach PostgreSQL at ``address`` (e.g. a :class:`TcpProxy`)."""
        self.services.env["CLOACINA_DATABASE_URL"] = service_db_url(self.pg_url, self.schema, host_port=address)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        return query(self.pg_url, self.schema, statement, **params)

    def add_items(self, count: int, shards: int = 1) -> None:
        execute_sql(
            self.pg_url, self.schema, f"INSERT INTO ev_inbox SELECT g, g % {shards} FROM generate_series(1, {count}) g"
        )

    def pending_items(self) -> int:
        return int(self.sql("SELECT count(*) FROM ev_inbox WHERE done_at IS NULL")[0][0])

    def run_statuses(self) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.sql("SELECT status, count(*) FROM workflow_runs GROUP BY status")}

    def active_runs(self) -> int:
        statuses = self.run_statuses()
        return statuses.get("Pending", 0) + statuses.get("Running", 0)

    def executions(self) -> list[Execution]:
        rows = self.sql(
            "SELECT id, item, run_key, task, pid, pgid, started_at, ended_at FROM ev_executions ORDER BY started_at"
        )
        return [Execution(*r) for r in rows]

    def in_flight(self, pgid: int, min_age_s: float = 0.0) -> list[Execution]:
        """Executions by process group ``pgid`` that started at least ``min_age_s`` ago and have not ended."""
        now = time.time()
        return [
            e for e in self.executions() if e.pgid == pgid and e.ended_at is None and now - e.started_at >= min_age_s
        ]

    def runs(self) -> list[dict[str, Any]]:
        """Every workflow run with its status and its evidence key (``trigger|triggered_at``, as the tasks write)."""
        import json

        rows = self.sql("SELECT id, status, input_context, owner, cron_schedule_id FROM workflow_runs")
        out = []
        for run_id, status, input_context, owner, cron_id in rows:
            ctx = json.loads(input_context)
            key = str(ctx.get("scheduled_time")) if cron_id else f"{ctx.get('trigger_name')}|{ctx.get('triggered_at')}"
            out.append({"id": run_id, "status": status, "item": ctx.get("item"), "key": key, "owner": owner})
        return out

    def attempts(self) -> list[Any]:
        """(run_id, task_id, attempt, status, worker) of every task attempt, in attempt order."""
        return self.sql(
            "SELECT t.run_id, t.task_id, a.attempt, a.status, a.worker FROM task_attempts a "
            "JOIN task_runs t ON t.id = a.task_run_id ORDER BY t.run_id, t.task_id, a.attempt"
        )


@contextlib.contextmanager
def running_cluster(pg_url: str, redis_url: str, log_dir: Path, **env: str) -> Iterator[Cluster]:
    """A migrated schema, a flushed Redis database, and a :class:`Services` whose processes are always cleaned up
    (their log tails are printed at the end: pytest shows them when the test failed)."""
    import redis

    from tests.dist_apps.evidence import DDL

    with fresh_schema(pg_url) as schema:
        migrated_schema(pg_url, schema)
        execute_sql(pg_url, schema, *DDL)
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushdb()
        finally:
            client.close()
        direct = service_db_url(pg_url, schema)
        base_env = {
            "CLOACINA_DATABASE_URL": direct,
            "CLOACINA_BROKER_URL": redis_url,
            "CLOACINA_LOG_LEVEL": "INFO",
            "DIST_EVIDENCE_URL": direct,
            **FAST_RECOVERY,
            **env,
        }
        services = Services(log_dir, base_env)
        try:
            yield Cluster(pg_url, schema, redis_url, services)
        finally:
            services.stop_all()
            services.dump_logs()


# -- evidence checks ----------------------------------------------------------------------------------------
def by_task(executions: list[Execution]) -> dict[tuple[str, str], list[Execution]]:
    """Executions grouped by (run key, task), each list in start order."""
    grouped: dict[tuple[str, str], list[Execution]] = {}
    for e in sorted(executions, key=lambda e: e.started_at):
        grouped.setdefault((e.run_key, e.task), []).append(e)
    return grouped


def reexecution_problems(executions: list[Execution], killed_pgids: set[int]) -> list[str]:
    """Why the evidence breaks "no task ran twice, except re-executions of tasks whose worker was killed".

    For every (run, task): the last execution ended, and every earlier one ran in a killed process group (it was
    cut off by the kill, or finished just before the kill without its completion being recorded).
    """
    problems = []
    for (run_key, task), runs in by_task(executions).items():
        if runs[-1].ended_at is None:
            problems.append(f"{task} of {run_key}: the last execution never ended: {runs[-1]}")
        for earlier in runs[:-1]:
            if earlier.pgid not in killed_pgids:
                problems.append(f"{task} of {run_key} ran again after an execution by a live worker: {runs}")
    return problems


def overlapping_runs(executions: list[Execution]) -> list[str]:
    """Items whose runs overlapped in time (a run spans its first task's start to its last task's end)."""
    spans: dict[int, dict[str, list[float]]] = {}
    for e in executions:
        if e.item is None:
            continue
        span = spans.setdefault(e.item, {}).setdefault(e.run_key, [e.started_at, e.ended_at or e.started_at])
        span[0] = min(span[0], e.started_at)
        span[1] = max(span[1], e.ended_at or e.started_at)
    problems = []
    for item, runs in spans.items():
        ordered = sorted(runs.items(), key=lambda kv: kv[1][0])
        for (key_a, (_, end_a)), (key_b, (start_b, _)) in itertools.pairwise(ordered):
            if start_b < end_a:
                problems.append(f"item {item}: run {key_b} started before run {key_a} ended")
    return problems


def rendezvous_owners(trigger_names: list[str], poller_ids: list[str]) -> dict[str, str]:
    """Which poller owns which trigger (the pollers' own rendezvous hashing)."""
    from cloacina.scheduling.leases import rendezvous_owner

    return {name: str(rendezvous_owner(name, poller_ids)) for name in trigger_names}


def too_close_polls(polls: list[Any], interval_s: float, factor: float = 0.9) -> list[str]:
    """Consecutive polls of one trigger (across all pollers) closer than ``factor * interval_s``.

    ``polls`` are (trigger, pid, at) rows.
    """
    by_trigger: dict[str, list[tuple[float, int]]] = {}
    for trigger, pid, at in polls:
        by_trigger.setdefault(trigger, []).append((at, pid))
    problems = []
    for trigger, times in by_trigger.items():
        times.sort()
        for (t1, p1), (t2, p2) in itertools.pairwise(times):
            if t2 - t1 < factor * interval_s:
                problems.append(f"{trigger}: polls {t2 - t1:.3f}s apart (pids {p1}, {p2})")
    return problems


def all_done(cluster: Cluster) -> bool:
    """No inbox item is pending and no run is active."""
    return cluster.pending_items() == 0 and cluster.active_runs() == 0
