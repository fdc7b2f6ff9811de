"""docker-compose.yml, as ``docker compose config`` resolves it (the real compose v2, issue 13) with the credentials of
``.env.example``: every service healthy-checked on its own endpoint, no password in any process's arguments (Redis
included), Flower with the broker and its auth from the environment only, the web console behind auth, a worker
grace period covering the task timeout, the migrate gate, two worker pools (issue 19). Running the services'
commands locally is ``tests/test_compose_services.py``; no Docker engine runs here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_tools import ROOT, compose_command, run

ENV_EXAMPLE = ROOT / ".env.example"
CLOACINA_SERVICES = ("migrate", "poller", "worker", "worker-heavy", "web", "flower")
WORKER_POOLS = {"worker": "cloacina", "worker-heavy": "heavy"}  # service -> the queue it consumes


def dotenv() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def config(env_file: Path = ENV_EXAMPLE) -> Any:
    result = run(
        [*compose_command(), "-f", "docker-compose.yml", "--env-file", str(env_file), "config", "--format", "json"]
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return config()["services"]


def seconds(duration: str) -> float:
    """A compose duration (``5m30s``, ``330s``, or nanoseconds as compose prints them) in seconds."""
    if re.fullmatch(r"\d+", str(duration)):
        return int(duration) / 1e9
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def test_compose_config_accepts_the_file(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"redis", "postgres", *CLOACINA_SERVICES}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_a_missing_credential_stops_compose(tmp_path: Path) -> None:
    env = tmp_path / "partial.env"
    env.write_text("\n".join(f"{k}={v}" for k, v in dotenv().items() if k != "WEB_PASSWORD") + "\n")
    result = run([*compose_command(), "-f", "docker-compose.yml", "--env-file", str(env), "config", "--quiet"])
    assert result.returncode != 0 and "set WEB_PASSWORD in .env" in result.stderr


def test_no_password_in_any_process_argument(services: dict[str, dict[str, Any]]) -> None:
    secrets = [v for k, v in dotenv().items() if "PASSWORD" in k]
    assert secrets
    for name, service in services.items():
        argv = " ".join([*(service.get("entrypoint") or []), *(service.get("command") or [])])
        assert not [s for s in secrets if s in argv], f"{name}: a password is in its command"
        assert "--requirepass" not in argv and "--basic-auth" not in argv, name
    redis = " ".join(services["redis"]["command"])
    assert "$REDIS_PASSWORD" in redis and "requirepass" in redis and "--appendonly yes" in redis


def test_services_check_their_own_readiness_endpoint(services: dict[str, dict[str, Any]]) -> None:
    for name, port in (("poller", 9100), ("worker", 9100), ("worker-heavy", 9100), ("web", 8080)):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in test, name
        assert "cloacina health" not in test  # a Python start per check costs a second of CPU; urllib a tenth
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])


def test_flower_gets_the_broker_and_its_auth_only(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert set(flower["environment"]) == {"CLOACINA_BROKER_URL", "CLOACINA_QUEUE", "FLOWER_BASIC_AUTH"}
    user, password = dotenv()["FLOWER_USER"], dotenv()["FLOWER_PASSWORD"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"{user}:{password}"
    assert flower["command"] == ["cloacina", "flower", "--port", "5555"]
    assert [p["host_ip"] for p in flower["ports"]] == ["127.0.0.1"]


def test_web_is_behind_auth_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert web["command"][:2] == ["cloacina", "web"]
    assert web["environment"]["CLOACINA_WEB_AUTH"] == f"{dotenv()['WEB_USER']}:{dotenv()['WEB_PASSWORD']}"
    assert [(p["host_ip"], p["target"]) for p in web["ports"]] == [("127.0.0.1", 8080)]


def test_worker_grace_period_covers_the_task_timeout(services: dict[str, dict[str, Any]]) -> None:
    for name in WORKER_POOLS:
        worker = services[name]
        timeout = float(worker["environment"]["CLOACINA_TASK_TIMEOUT_S"])
        assert seconds(worker["stop_grace_period"]) >= timeout, name
        assert "container_name" not in worker and not worker.get("ports"), name  # scalable with --scale
    assert services["poller"]["deploy"]["replicas"] == 2


def test_two_worker_pools_differ_by_their_queues_only(services: dict[str, dict[str, Any]]) -> None:
    """`worker` consumes the deployment queue, `worker-heavy` queue "heavy"; the rest they share (one anchor)."""
    for name, queue in WORKER_POOLS.items():
        command = services[name]["command"]
        assert command[:2] == ["cloacina", "worker"], name
        assert command[command.index("--queues") + 1] == queue, name
    assert services["worker"]["environment"]["CLOACINA_QUEUE"] == "cloacina"
    assert services["worker-heavy"]["command"][services["worker-heavy"]["command"].index("--concurrency") + 1] == "1"
    shared = ("image", "build", "environment", "volumes", "depends_on", "healthcheck", "stop_grace_period", "restart")
    for key in shared:
        assert services["worker"][key] == services["worker-heavy"][key], key
    assert set(services["worker"]) == set(services["worker-heavy"])


def test_one_image_and_the_migrate_gate(services: dict[str, dict[str, Any]]) -> None:
    for name in CLOACINA_SERVICES:
        service = services[name]
        assert service["image"] == "cloacina:local" and service["build"]["target"] == "runtime", name
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["command"] == ["cloacina", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("poller", *WORKER_POOLS):
        assert any(v["target"] == "/app/workflows" and v["read_only"] for v in services[name]["volumes"]), name
