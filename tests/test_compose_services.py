"""docker-compose.yml, run without Docker: each cloacina service's command starts locally, mapped onto the local
Redis and PostgreSQL, its health check passes, and a file dropped in the inbox goes through poller and worker.

What maps where: the compose ``CLOACINA_DATABASE_URL`` and ``CLOACINA_BROKER_URL`` point at the local servers (a
fresh PostgreSQL schema, a private Redis db), ``/app/workflows`` is ``examples/deploy`` (the compose bind mount),
the ``inbox`` volume is a temp dir, and ports 9100/8080/5555 become free local ports (and 0.0.0.0 the loopback).
``${VAR:?...}`` credentials take their values from ``.env.example``. The image's entry point is tini, which runs the
service's command as it is.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from cloacina.store.database import Database
from tests.conftest import PG_URL
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _dotenv_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _interpolate(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: env[m.group(1)], value)


def _service_env(
    compose: dict[str, Any], name: str, schema: str, redis_url: str, tmp: Path, metrics_port: int
) -> dict[str, str]:
    dotenv = _dotenv_example()
    declared = {k: _interpolate(str(v), dotenv) for k, v in compose["services"][name]["environment"].items()}
    assert declared["CLOACINA_BROKER_URL"].startswith("redis://")
    mapped = {**declared, "CLOACINA_BROKER_URL": redis_url}
    if "CLOACINA_DATABASE_URL" in declared:  # not Flower's
        assert declared["CLOACINA_DATABASE_URL"].startswith("postgresql://")
        mapped |= {
            "CLOACINA_DATABASE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
            "CLOACINA_APP": declared["CLOACINA_APP"].replace("/app/workflows", str(ROOT / "examples" / "deploy")),
            "INBOX_PATH": str(tmp / "inbox"),
            "CLOACINA_METRICS_PORT": str(metrics_port),
            # Short recovery settings keep a slow start from looking like lost work; nothing is killed here.
            "CLOACINA_LEASE_TTL_S": "3",
        }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("CLOACINA_", "FLOWER_"))}
    return {**inherited, **mapped}


def _command(compose: dict[str, Any], name: str, ports: dict[str, str]) -> list[str]:
    service = compose["services"][name]
    command = [_interpolate(str(part), _dotenv_example()) for part in service.get("command", [])]
    return [ports.get(part, part) for part in command]


def _healthcheck(compose: dict[str, Any], name: str, replace: dict[str, str]) -> list[str]:
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    args = []
    for part in test[1:]:
        for old, new in replace.items():
            part = part.replace(old, new)
        args.append(part)
    return [sys.executable if args[0] == "python" else args[0], *args[1:]]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compose_services_run_locally_and_process_an_inbox_file(pg_schema: str, tmp_path: Path, redis_url: str) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    empty = Database(PG_URL, schema=pg_schema)
    empty.ping()  # creates the (empty) schema; the compose `migrate` service migrates it
    empty.dispose()
    (tmp_path / "inbox").mkdir()
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}-{len(procs)}.log"
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append((name, proc, log))
        return proc

    def logs() -> str:
        return "\n".join(f"--- {n} ({shlex.join(p.args)})\n{log.read_text()[-1500:]}" for n, p, log in procs)

    try:
        # migrate: one-shot, must exit 0; then its health check (`db current --check`) passes.
        env = _service_env(compose, "migrate", pg_schema, redis_url, tmp_path, free_port())
        migrate = start("migrate", _command(compose, "migrate", {}), env)
        assert migrate.wait(120) == 0, logs()
        assert subprocess.run(_healthcheck(compose, "migrate", {}), env=env, cwd=ROOT, timeout=60).returncode == 0

        assert not any("--app" in part for part in compose["services"]["poller"]["command"])  # from CLOACINA_APP
        replicas = compose["services"]["poller"]["deploy"]["replicas"]
        poller_ports = [free_port() for _ in range(replicas)]
        for port in poller_ports:
            env = _service_env(compose, "poller", pg_schema, redis_url, tmp_path, port)
            start("poller", _command(compose, "poller", {}), env)
        worker_env = _service_env(compose, "worker", pg_schema, redis_url, tmp_path, free_port())
        start("worker", _command(compose, "worker", {}), worker_env)
        flower_port = str(free_port())
        flower_env = _service_env(compose, "flower", pg_schema, redis_url, tmp_path, free_port())
        assert "CLOACINA_DATABASE_URL" not in flower_env and "FLOWER_BASIC_AUTH" in flower_env
        start("flower", [*_command(compose, "flower", {"5555": flower_port}), "--address", "127.0.0.1"], flower_env)
        web_port = str(free_port())
        web_env = _service_env(compose, "web", pg_schema, redis_url, tmp_path, free_port())
        start("web", _command(compose, "web", {"0.0.0.0": "127.0.0.1", "8080": web_port}), web_env)

        # Each service's own health check, as compose would run it.
        def healthy(name: str, env: dict[str, str], replace: dict[str, str]) -> bool:
            cmd = _healthcheck(compose, name, replace)
            return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=60).returncode == 0

        checks = {f"poller:{p}": (lambda p=p: healthy("poller", worker_env, {"9100": str(p)})) for p in poller_ports}
        checks["worker"] = lambda: healthy("worker", worker_env, {"9100": worker_env["CLOACINA_METRICS_PORT"]})
        checks["flower"] = lambda: healthy("flower", flower_env, {"5555": flower_port})
        checks["web"] = lambda: healthy("web", web_env, {"8080": web_port})
        pending = dict(checks)

        def all_healthy() -> bool:
            nonlocal pending
            pending = {k: v for k, v in pending.items() if not v()}
            return not pending

        wait_until(all_healthy, 120, interval_s=2.0, message=lambda: f"health checks: {sorted(pending)}\n{logs()}")
        assert not pending, f"unhealthy: {sorted(pending)}\n{logs()}"

        # A file dropped in the inbox is processed: trigger on a poller, tasks on the worker.
        (tmp_path / "inbox" / "greeting.txt").write_text("hello world\nfrom compose\n")
        done = tmp_path / "inbox" / "done" / "greeting.txt.json"
        wait_until(done.exists, 90, interval_s=0.5, message=lambda: f"{done} to be written\n{logs()}")
        assert done.exists(), logs()
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:

            def completed_runs() -> list[Any]:
                rows = conn.execute(text(f'SELECT status, trigger_name FROM "{pg_schema}".workflow_runs')).all()
                return list(rows) if rows and all(r.status == "Completed" for r in rows) else []

            rows = wait_until(completed_runs, 30, interval_s=0.5, message=lambda: f"every run to complete\n{logs()}")
        engine.dispose()
        assert [(r.status, r.trigger_name) for r in rows] == [("Completed", "inbox_items")], logs()
        for name, proc, _ in procs[1:]:
            assert proc.poll() is None, f"{name} exited\n{logs()}"
        # The web console answers only with the credentials of .env.
        api = f"http://127.0.0.1:{web_port}/api/v1/workflows"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(api, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(api)
        token = base64.b64encode(web_env["CLOACINA_WEB_AUTH"].encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
