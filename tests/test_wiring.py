"""The one wiring: settings, the DefaultRunnerConfig mapping, Deployment roles and the Dispatcher seam.

Everything is built for real (SQLite files, the local Redis for the broker); nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.deployment.settings import CloacinaSettings
from cloacina.deployment.wiring import DEFAULT_POOL_SIZE, Deployment, celery_options
from cloacina.dispatch.celery_app import NodeTask, publisher_app
from cloacina.dispatch.celery_dispatcher import CeleryDispatcher
from cloacina.dispatch.threads import ThreadDispatcher
from cloacina.runner.config import FIELD_NAMES, RUNNER_RECOVERY_STALE_AFTER_S, DefaultRunnerConfig

ROOT = Path(__file__).resolve().parents[1]
# DefaultRunnerConfig fields that choose what a runner starts, or exist for cloaca code only: no setting.
ROLE_OR_COMPAT_FIELDS = {
    "enable_recovery",
    "enable_trigger_scheduling",
    "enable_cron_scheduling",
    "scheduler_poll_interval_ms",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLOACINA_"):
            monkeypatch.delenv(name)


# -- DefaultRunnerConfig -> CloacinaSettings ---------------------------------------------------------------------
def test_every_config_field_maps_to_a_setting_or_is_a_role_switch(clean_env: None) -> None:
    """A new DefaultRunnerConfig field must be mapped (or listed here as a role switch) to take effect."""
    config = DefaultRunnerConfig(
        max_concurrent_tasks=7,
        task_timeout_seconds=11,
        workflow_timeout_seconds=13,
        db_pool_size=3,
        recovery_stale_after_seconds=17,
        trigger_base_poll_interval_ms=250,
        trigger_poll_timeout_seconds=19,
        trigger_poll_workers=5,
        cron_poll_interval_seconds=23,
        cron_catchup_policy="run_all",
        cron_max_catchup_executions=29,
        cron_enable_recovery=False,
        cron_recovery_interval_seconds=31,
        cron_lost_threshold_minutes=2,
        cron_max_recovery_age_seconds=37,
        cron_max_recovery_attempts=4,
        broker_url="redis://localhost:6379/3",
        redis_url="redis://localhost:6379/4",
    )
    settings = config.to_settings("sqlite://x.db", schema=None)
    expected = {
        "max_concurrent_tasks": 7,
        "task_timeout_s": 11.0,
        "workflow_timeout_s": 13.0,
        "db_pool_size": 3,
        "task_heartbeat_timeout_s": 17.0,
        "stale_run_s": 17.0,
        "trigger_refresh_interval_s": 0.25,
        "trigger_poll_timeout_s": 19.0,
        "trigger_poll_workers": 5,
        "cron_poll_interval_s": 23.0,
        "cron_catchup_policy": "run_all",
        "cron_max_catchup_executions": 29,
        "cron_enable_recovery": False,
        "cron_recovery_interval_s": 31.0,
        "cron_lost_threshold_s": 120.0,
        "cron_max_recovery_age_s": 37.0,
        "cron_max_recovery_attempts": 4,
        "broker_url": "redis://localhost:6379/3",
        "redis_url": "redis://localhost:6379/4",
        "database_url": "sqlite://x.db",
    }
    assert {name: getattr(settings, name) for name in expected} == expected
    mapped_from = {
        "max_concurrent_tasks", "task_timeout_seconds", "workflow_timeout_seconds", "db_pool_size",
        "recovery_stale_after_seconds", "trigger_base_poll_interval_ms", "trigger_poll_timeout_seconds",
        "trigger_poll_workers", "cron_poll_interval_seconds", "cron_catchup_policy", "cron_max_catchup_executions",
        "cron_enable_recovery", "cron_recovery_interval_seconds", "cron_lost_threshold_minutes",
        "cron_max_recovery_age_seconds", "cron_max_recovery_attempts", "broker_url", "redis_url",
    }  # fmt: skip
    assert set(FIELD_NAMES) == mapped_from | ROLE_OR_COMPAT_FIELDS


def test_shared_values_have_one_default(clean_env: None) -> None:
    """Where a runner and a service share a value, its default lives in CloacinaSettings only."""
    from_config = DefaultRunnerConfig().to_settings(":memory:")
    plain = CloacinaSettings(database_url=":memory:")
    differing = {name for name in CloacinaSettings.model_fields if getattr(from_config, name) != getattr(plain, name)}
    # The documented differences: a runner sizes its own pool and waits longer before adopting work; cloaca's
    # defaults give it a workflow timeout (3600 s, services have none) and a 30 s cron re-read (services 5 s).
    runner_only = {"db_pool_size", "task_heartbeat_timeout_s", "stale_run_s"}
    assert differing == runner_only | {"workflow_timeout_s", "cron_poll_interval_s"}
    assert (from_config.workflow_timeout_s, from_config.cron_poll_interval_s) == (3600, 30.0)
    assert from_config.task_heartbeat_timeout_s == from_config.stale_run_s == RUNNER_RECOVERY_STALE_AFTER_S
    assert from_config.db_pool_size == DEFAULT_POOL_SIZE["runner"]


def test_the_broker_comes_from_the_config_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOACINA_BROKER_URL", "redis://localhost:6379/5")
    assert DefaultRunnerConfig().to_settings(":memory:").broker_url == "redis://localhost:6379/5"
    given = DefaultRunnerConfig(broker_url="redis://localhost:6379/6").to_settings(":memory:")
    assert given.broker_url == "redis://localhost:6379/6"


def test_settings_refuse_bad_values(clean_env: None) -> None:
    with pytest.raises(ValueError, match="task_timeout_s"):
        CloacinaSettings(task_timeout_s=0)
    with pytest.raises(ValueError, match="workflow_timeout_s"):
        CloacinaSettings(workflow_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="expected a redis:// URL"):
        CloacinaSettings(broker_url="amqp://guest@localhost//")
    with pytest.raises(ValueError, match="trigger_base_poll_interval_ms"):
        DefaultRunnerConfig(trigger_base_poll_interval_ms=1)


# -- Deployment roles --------------------------------------------------------------------------------------------
def test_each_role_gets_its_dispatcher_and_pool(tmp_path: Path, clean_env: None, redis_url: str) -> None:
    db_url = f"sqlite:///{tmp_path}/w.db"
    embedded = Deployment(CloacinaSettings(database_url=db_url), role="runner")
    client = Deployment(CloacinaSettings(database_url=db_url, broker_url=redis_url), role="runner")
    poller = Deployment(CloacinaSettings(database_url=db_url, broker_url=redis_url), role="poller")
    worker = Deployment(CloacinaSettings(database_url=db_url, broker_url=redis_url), role="worker")
    try:
        embedded.prepare_schema(migrate=True)
        assert isinstance(embedded.dispatcher, ThreadDispatcher)
        assert isinstance(client.dispatcher, CeleryDispatcher) and isinstance(poller.dispatcher, CeleryDispatcher)
        assert isinstance(worker.dispatcher, CeleryDispatcher)  # publishes what its finishes make Ready
        assert embedded.coordinator.dispatcher is embedded.dispatcher
        # One publishing app per configuration per process: the client and the poller share it.
        assert client.dispatcher.app is poller.dispatcher.app is publisher_app(client.celery_options)
        assert embedded.pool_size == DEFAULT_POOL_SIZE["runner"]
        assert worker.pool_size == DEFAULT_POOL_SIZE["worker"]
        assert poller.pool_size == max(DEFAULT_POOL_SIZE["poller"], poller.settings.trigger_poll_workers)
        assert poller.locks.namespace == poller.settings.effective_redis_namespace
    finally:
        for deployment in (embedded, client, poller, worker):
            deployment.close()
            deployment.close()  # idempotent


def test_a_service_refuses_an_unmigrated_database(tmp_path: Path, clean_env: None) -> None:
    deployment = Deployment(CloacinaSettings(database_url=f"sqlite:///{tmp_path}/empty.db"), role="tool")
    try:
        with pytest.raises(cloaca.SchemaNotMigratedError):
            deployment.prepare_schema(migrate=False)
    finally:
        deployment.close()


def test_an_embedded_deployment_runs_a_workflow_through_the_seam(tmp_path: Path, clean_env: None) -> None:
    with cloaca.WorkflowBuilder("wiring_chain") as builder:

        @cloaca.task(id="one")
        def one(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("n", ctx.get("n") + 1)
            return ctx

        @cloaca.task(id="two", dependencies=["one"])
        def two(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("n", ctx.get("n") * 10)
            return ctx

    workflow = registry.get_workflow(builder.name)
    deployment = Deployment(CloacinaSettings(database_url=f"sqlite:///{tmp_path}/run.db"), role="runner")
    ended: list[str] = []
    try:
        deployment.prepare_schema(migrate=True)
        deployment.coordinator.add_run_finished_listener(lambda end: ended.append(str(end.status)))
        run_id = deployment.coordinator.create_run(workflow, {"n": 1})
        assert run_id is not None
        deployment.dispatcher.shutdown(wait_s=30)  # drains the pool: the run's tasks all ran
        run = deployment.runs.get_run(run_id)
        assert run is not None and str(run.status) == "Completed" and ended == ["Completed"]
        assert run.final_context == {"n": 20}
    finally:
        deployment.close()


# -- Celery stays inside dispatch/ --------------------------------------------------------------------------------
def test_publisher_apps_run_no_nodes_and_worker_apps_do(clean_env: None, redis_url: str) -> None:
    options = celery_options(CloacinaSettings(broker_url=redis_url, database_url=":memory:"))
    task = publisher_app(options).tasks["cloacina.task"]
    assert isinstance(task, NodeTask) and task.node_runner is None
    assert not hasattr(publisher_app(options), "cloacina_settings")  # nothing stashed on Celery's objects


def test_the_celery_app_module_builds_a_worker_app_from_the_environment(tmp_path: Path, redis_url: str) -> None:
    app_file = tmp_path / "wiring_app.py"
    app_file.write_text(
        textwrap.dedent(
            """
            import cloacina as cloaca

            with cloaca.WorkflowBuilder("from_env_app") as b:
                @cloaca.task(id="t")
                def t(ctx):
                    return ctx
            """
        )
    )
    probe = textwrap.dedent(
        """
        from cloacina.definitions import registry
        from cloacina.services.celery_worker_app import app

        task = app.tasks["cloacina.task"]
        print(type(task.node_runner).__name__, registry.get_workflow("from_env_app").name, app.conf.task_serializer)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOACINA_")}
    env.update(CLOACINA_APP=str(app_file), CLOACINA_BROKER_URL=redis_url, CLOACINA_DATABASE_URL=":memory:")
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PerProcess", "from_env_app", "json"]
    env.pop("CLOACINA_BROKER_URL")
    refused = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "CLOACINA_BROKER_URL is not set" in refused.stderr


def test_celery_defaults_are_ours() -> None:
    """No task events unless asked (Flower enables them), workers log at WARNING, the other services at INFO."""
    from cloacina.dispatch.celery_app import celery_config
    from cloacina.services.worker import worker_argv

    settings = CloacinaSettings(database_url="sqlite://", broker_url="redis://127.0.0.1:6379/0")
    assert settings.task_events is False
    conf = celery_config(celery_options(settings))
    assert conf["worker_send_task_events"] is False and conf["task_send_sent_event"] is False
    assert "--loglevel=WARNING" in worker_argv(settings)
    assert settings.service_log_level("poller") == "INFO"
    forced = CloacinaSettings(
        database_url="sqlite://", broker_url="redis://127.0.0.1:6379/0", task_events=True, log_level="DEBUG"
    )
    assert celery_config(celery_options(forced))["worker_send_task_events"] is True
    assert "--loglevel=DEBUG" in worker_argv(forced) and forced.service_log_level("poller") == "DEBUG"
