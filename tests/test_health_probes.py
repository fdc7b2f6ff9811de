"""The health model (issue 13): ``/livez`` and ``/readyz`` of poller and worker, the dependency monitor behind
``/readyz``, ``cloacina health``, and a real worker's probe checking that worker only (no cluster-wide ping).

The Redis-outage behaviour of real services is in ``tests/test_health_fault.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloacina.cli.health import health as health_command
from cloacina.deployment.settings import CloacinaSettings
from cloacina.dispatch.worker_probe import WorkerProbeState
from cloacina.observability.http import ObservabilityServer, start_http_server
from cloacina.observability.metrics import Metrics
from cloacina.services import health as H
from cloacina.store.database import Database
from tests.distributed_harness import INBOX_APP, Cluster, wait_for_worker_ready
from tests.support import FakeClock, free_port, wait_until

DEAD_REDIS = "redis://:hunter2@127.0.0.1:1/0"


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ObservabilityServer] = []

    def start(ready: Any, live: Any = None) -> ObservabilityServer:
        server = start_http_server(0, Metrics().registry, ready, host="127.0.0.1", live=live)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def migrated_sqlite(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/cloacina.db"
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


# -- the HTTP endpoints ------------------------------------------------------------------------------------------
def test_livez_and_readyz_answer_their_own_checks(serve: Any) -> None:
    state = {"live": True, "ready": False}
    server = serve(
        lambda: (state["ready"], {"redis": {"ok": state["ready"], "detail": "refused"}}),
        lambda: (state["live"], {"loop": {"ok": state["live"], "detail": "ticking"}}),
    )
    assert get(server.url + "/livez") == (200, {"ok": True, "loop": {"ok": True, "detail": "ticking"}})
    status, body = get(server.url + "/readyz")
    assert status == 503 and body["redis"]["detail"] == "refused"
    assert get(server.url + "/healthz")[0] == 503  # the older name of /readyz
    state.update(ready=True, live=False)
    assert get(server.url + "/livez")[0] == 503 and get(server.url + "/readyz")[0] == 200


def test_livez_defaults_to_alive_and_a_raising_check_is_503(serve: Any) -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("cannot reach redis://:topsecret@r:6379/0")

    server = serve(broken)
    assert get(server.url + "/livez")[0] == 200
    status, body = get(server.url + "/readyz")
    assert status == 503 and "topsecret" not in json.dumps(body)


def test_check_endpoint_healthy_unhealthy_dead(serve: Any) -> None:
    good = serve(lambda: (True, {"loop": {"ok": True, "detail": "last pass 0.1s ago"}}))
    bad = serve(lambda: (False, {"loop": {"ok": False, "detail": "stuck"}, "redis": {"ok": True, "detail": ""}}))
    assert H.check_endpoint(good.url + "/readyz") == (True, f"{good.url}/readyz: HTTP 200 healthy")
    ok, detail = H.check_endpoint(bad.url + "/readyz")
    assert not ok and "HTTP 503" in detail and "loop: stuck" in detail and "redis" not in detail
    other_shape = serve(lambda: (False, {"loop": "stalled", "redis": "ok"}))
    ok, detail = H.check_endpoint(other_shape.url + "/readyz")
    assert not ok and '"loop": "stalled"' in detail
    ok, detail = H.check_endpoint("http://127.0.0.1:1/readyz", timeout_s=1.0)
    assert not ok and "no answer" in detail


# -- the dependency monitor --------------------------------------------------------------------------------------
def test_monitor_reports_latest_results_and_stale_ones_as_failed() -> None:
    clock = FakeClock(0.0)
    answers = {"redis": (True, "PONG")}
    monitor = H.DependencyMonitor({"redis": lambda: answers["redis"]}, interval_s=5, stale_after_s=30, clock=clock)
    assert monitor.snapshot() == {"redis": {"ok": False, "detail": "not checked yet"}}
    monitor.run_once()
    assert monitor.snapshot() == {"redis": {"ok": True, "detail": "PONG"}}
    answers["redis"] = (False, "refused")
    monitor.run_once()
    assert monitor.snapshot()["redis"] == {"ok": False, "detail": "refused"}
    answers["redis"] = (True, "PONG")
    monitor.run_once()
    clock.advance(31)  # the check has not completed since: it hangs
    snapshot = monitor.snapshot()["redis"]
    assert not snapshot["ok"] and "hangs" in snapshot["detail"]


def test_monitor_thread_checks_on_its_own(redis_url: str) -> None:
    monitor = H.DependencyMonitor({"redis": lambda: H.check_redis(redis_url)}, interval_s=0.1)
    monitor.start()
    try:
        wait_until(lambda: monitor.snapshot()["redis"]["ok"], 10, message="the monitor's first check")
    finally:
        monitor.stop()


# -- the probes of the services ----------------------------------------------------------------------------------
def test_poller_probes_live_follows_the_loop_ready_adds_the_connections(redis_url: str, migrated_sqlite: str) -> None:
    metrics = Metrics()
    settings = CloacinaSettings(database_url=migrated_sqlite, broker_url=redis_url)
    probes = H.poller_probes(metrics, settings, max_tick_age_s=10)
    ok, parts = probes.live()
    assert not ok and "not completed a pass" in parts["loop"]["detail"]  # a startup probe waits for the first pass
    metrics.tick()
    probes.monitor.run_once()
    assert probes.live()[0]
    ok, parts = probes.ready()
    assert ok and set(parts) == {"loop", "database", "redis"}, parts
    metrics._last_tick_monotonic -= 60  # a loop that stopped a minute ago
    ok, parts = probes.live()
    assert not ok and "stuck or dead" in parts["loop"]["detail"]
    assert not probes.ready()[0]


def test_poller_liveness_never_asks_redis_or_the_database(migrated_sqlite: str) -> None:
    metrics = Metrics()
    settings = CloacinaSettings(database_url=migrated_sqlite, broker_url=DEAD_REDIS)
    probes = H.poller_probes(metrics, settings)
    metrics.tick()
    probes.monitor.run_once()
    ok, parts = probes.live()
    assert ok and set(parts) == {"loop"}
    ok, parts = probes.ready()
    assert not ok and parts["loop"]["ok"] and parts["database"]["ok"] and not parts["redis"]["ok"]
    assert "hunter2" not in json.dumps(parts)


def test_worker_probe_state_follows_the_consumer() -> None:
    clock = FakeClock(100.0)
    state = WorkerProbeState(max_tick_age_s=30, clock=clock)
    assert state.live() == (False, "the worker has not started consuming yet")
    assert not state.ready()[0]
    state.connected()
    assert state.live()[0] and state.ready()[0]
    clock.advance(20)
    state.tick()
    clock.advance(29)
    assert state.live()[0]
    clock.advance(2)  # the event loop stopped ticking 31 s ago: stuck
    ok, detail = state.live()
    assert not ok and "stuck" in detail and not state.ready()[0]
    state.disconnected()  # the broker went away: the consumer waits for it, the process is fine
    clock.advance(600)
    assert state.live()[0]
    ok, detail = state.ready()
    assert not ok and "waiting for the broker" in detail
    state.connected()
    assert state.ready()[0] and state.connections == 2


def test_worker_probes_combine_its_state_and_the_connections(redis_url: str, migrated_sqlite: str) -> None:
    state = WorkerProbeState()
    settings = CloacinaSettings(database_url=migrated_sqlite, broker_url=redis_url)
    probes = H.worker_probes(settings, state=state)
    probes.monitor.run_once()
    assert not probes.live()[0] and not probes.ready()[0]
    state.connected()
    ok, parts = probes.ready()
    assert ok and set(parts) == {"worker", "database", "redis"}


# -- run_health and the command ----------------------------------------------------------------------------------
def test_run_health_asks_the_component_endpoint_only(serve: Any, redis_url: str, migrated_sqlite: str) -> None:
    settings = CloacinaSettings(database_url="postgresql://app:s3cret@127.0.0.1:1/prod", broker_url=DEAD_REDIS)
    server = serve(lambda: (True, {}), lambda: (False, {}))
    ok, report = H.run_health("worker", settings, url=server.url + "/readyz")
    assert ok and set(report["checks"]) == {"worker"}  # the dead database and Redis were never contacted
    ok, report = H.run_health("poller", settings.model_copy(update={"metrics_port": server.port}), probe="live")
    assert not ok and f":{server.port}/livez" in report["checks"]["poller"]["detail"]
    ok, report = H.run_health("poller", settings)
    assert not ok and "CLOACINA_METRICS_PORT" in report["checks"]["poller"]["detail"]
    good = CloacinaSettings(database_url=migrated_sqlite, broker_url=redis_url)
    ok, report = H.run_health("all", good)
    assert ok and set(report["checks"]) == {"database", "redis"}, report
    ok, report = H.run_health("all", settings, timeout_s=1.0)
    assert not ok and "s3cret" not in json.dumps(report) and "hunter2" not in json.dumps(report)
    with pytest.raises(ValueError, match="component"):
        H.run_health("beat", settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe"):
        H.run_health("poller", settings, probe="deep")  # type: ignore[arg-type]


def test_cli_health_exit_codes_and_json(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"ok": True}
    server = serve(lambda: (state["ok"], {"loop": {"ok": state["ok"], "detail": "stuck"}}))
    monkeypatch.setenv("CLOACINA_METRICS_PORT", str(server.port))
    cli = CliRunner()
    result = cli.invoke(health_command, ["--component", "poller"])
    assert result.exit_code == 0 and "poller: healthy" in result.output, result.output
    state["ok"] = False
    result = cli.invoke(health_command, ["--component", "worker", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and "loop: stuck" in report["checks"]["worker"]["detail"]
    state["ok"] = True
    result = cli.invoke(health_command, ["--component", "poller", "--poller-url", server.url + "/healthz"])
    assert result.exit_code == 0  # the older option name and path still work
    assert cli.invoke(health_command, ["--component", "worker", "--probe", "live"]).exit_code == 0
    assert cli.invoke(health_command, ["--component", "nope"]).exit_code == 2


def test_cli_health_all_reports_unreachable_parts_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOACINA_DATABASE_URL", "postgresql://app:s3cret@127.0.0.1:1/prod")
    monkeypatch.setenv("CLOACINA_BROKER_URL", DEAD_REDIS)
    result = CliRunner().invoke(health_command, ["--timeout", "1"])
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "hunter2" not in result.output
    assert "FAIL  database" in result.output and "FAIL  redis" in result.output
    assert "all: unhealthy" in result.output


# -- a real worker: its probe checks that worker, not the cluster ------------------------------------------------
def _health(url: str) -> int:
    argv = [sys.executable, "-m", "cloacina", "health", "--component", "worker", "--url", url, "--timeout", "2"]
    return subprocess.run(argv, capture_output=True, timeout=60).returncode


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_worker_probe_checks_its_own_worker_not_any_worker(cluster: Cluster) -> None:
    ports = {name: free_port() for name in ("w1", "w2")}
    workers = {
        name: cluster.services.worker(name, INBOX_APP, CLOACINA_METRICS_PORT=str(port)) for name, port in ports.items()
    }
    for worker in workers.values():
        wait_for_worker_ready(worker)
    urls = {name: f"http://127.0.0.1:{port}/readyz" for name, port in ports.items()}
    wait_until(lambda: all(_health(u) == 0 for u in urls.values()), 60, message="both workers ready", interval_s=0.5)
    status, body = get(urls["w1"])
    assert status == 200 and set(body) >= {"worker", "database", "redis"} and "consuming" in body["worker"]["detail"]

    workers["w2"].kill(signal.SIGSTOP)  # w2 hangs (its whole process group); w1 would still answer any ping
    try:
        assert _health(urls["w2"]) == 1
        assert _health(urls["w1"]) == 0
    finally:
        workers["w2"].kill(signal.SIGCONT)
    wait_until(lambda: _health(urls["w2"]) == 0, 60, message="w2 ready again", interval_s=0.5)
