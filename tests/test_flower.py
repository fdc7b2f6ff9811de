"""``cloacina flower``: Flower against the configured broker, behind basic auth, sees a real worker."""

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
    worker = subprocess.Popen(
        [sys.executable, "-m", "cloacina", "worker", "--pool", "solo", "-n", "flowertest@%h"],
        env=env,
        stdout=logs["worker"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloacina",
            "flower",
            "--basic-auth=ops:s3cret",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
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
        assert _get(f"{base}/", None)[0] == 401
        assert _get(f"{base}/api/workers", ("ops", "wrong"))[0] == 401
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
