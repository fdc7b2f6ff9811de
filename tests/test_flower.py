"""``cloacina flower``: Flower against the configured broker, behind basic auth, sees a real worker.

The worker runs with cloacina's defaults (task events off, as in Celery): Flower turns events on for the workers it
watches, so its task view lists the runs' tasks all the same.

Issue 13: started as users and Kubernetes start it: ``--port 5566`` with a space, the basic-auth password in
``FLOWER_BASIC_AUTH`` (never in the process's arguments), and ``FLOWER_PORT=tcp://...`` injected by a Service named
``flower`` in the namespace.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloacina.store.database import Database
from tests.conftest import PG_URL
from tests.support import free_port, wait_until


def _get(url: str, auth: tuple[str, str] | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_flower_requires_auth_and_sees_the_worker(pg_schema: str, tmp_path: Path, redis_url: str) -> None:
    Database(PG_URL, schema=pg_schema).upgrade()
    env = {
        **os.environ,
        "CLOACINA_DATABASE_URL": f"{PG_URL}?options=-csearch_path%3D{pg_schema}",
        "CLOACINA_BROKER_URL": redis_url,
    }
    port = free_port()
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("worker", "flower")}
    worker_args = ["worker", "--app", "tests.apps.flower_app", "--pool", "solo", "-n", "flowertest@%h"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "cloacina", *worker_args],
        env=env,
        stdout=logs["worker"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    flower_env = {
        **env,
        "FLOWER_BASIC_AUTH": "ops:s3cret",
        # What Kubernetes injects into every pod of a namespace with a Service named `flower`.
        "FLOWER_PORT": "tcp://10.96.0.7:5555",
        "FLOWER_PORT_5555_TCP": "tcp://10.96.0.7:5555",
        "FLOWER_SERVICE_HOST": "10.96.0.7",
    }
    flower = subprocess.Popen(
        [sys.executable, "-m", "cloacina", "flower", "--port", str(port), "--address", "127.0.0.1"],
        env=flower_env,
        stdout=logs["flower"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def log_tails() -> str:
            return (tmp_path / "flower.log").read_text()[-2000:] + (tmp_path / "worker.log").read_text()[-2000:]

        def workers_seen() -> dict[str, object] | None:
            status, body = _get(f"{base}/api/workers?refresh=1", ("ops", "s3cret"))  # OSError until Flower listens
            seen: dict[str, object] = json.loads(body) if status == 200 else {}
            return seen if any(name.startswith("flowertest@") for name in seen) else None

        workers = wait_until(
            workers_seen, 120, interval_s=0.5, message=lambda: f"Flower to list the worker\n{log_tails()}"
        )
        assert any(name.startswith("flowertest@") for name in workers), log_tails()
        assert _get(f"{base}/api/workers", None)[0] == 401
        assert b"s3cret" not in Path(f"/proc/{flower.pid}/cmdline").read_bytes()
        assert _get(f"{base}/", None)[0] == 401
        assert _get(f"{base}/api/workers", ("ops", "wrong"))[0] == 401

        # No CLOACINA_TASK_EVENTS: the worker sends no events until Flower enables them (every few seconds).
        import cloacina as cloaca

        with cloaca.DefaultRunner(env["CLOACINA_DATABASE_URL"], cloaca.DefaultRunnerConfig(broker_url=redis_url)) as c:

            def task_seen() -> list[dict[str, object]] | None:
                c.execute("flower_wf", {}, timeout=60)  # one more run each time: events may be enabled meanwhile
                status, body = _get(f"{base}/api/tasks", ("ops", "s3cret"))
                tasks = json.loads(body) if status == 200 else {}
                found = [t for t in tasks.values() if t.get("name") == "cloacina.task" and t.get("state") == "SUCCESS"]
                return found or None

            seen = wait_until(task_seen, 90, interval_s=1.0, message=lambda: f"Flower to list a task\n{log_tails()}")
        assert "flower_wf" in str(seen[0].get("kwargs")), seen[0]
    finally:
        for proc in (worker, flower):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, flower):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for f in logs.values():
            f.close()


def test_flower_arguments_take_the_space_form() -> None:
    from cloacina.dispatch.celery_services import flower_argv, flower_environment

    assert flower_argv(["--port", "5566", "--url_prefix", "flower", "--debug", "--address=0.0.0.0"]) == [
        "--port=5566",
        "--url_prefix=flower",
        "--debug",
        "--address=0.0.0.0",
    ]
    assert flower_argv(["--unknown", "x"]) == ["--unknown", "x"]  # not Flower's: left to Flower to refuse
    kept, dropped = flower_environment({"FLOWER_PORT": "tcp://10.96.0.7:5555", "FLOWER_PURGE_OFFLINE_WORKERS": "60"})
    assert dropped == ["FLOWER_PORT"] and kept == {"FLOWER_PURGE_OFFLINE_WORKERS": "60"}
