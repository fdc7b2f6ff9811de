"""CLOACA_API §15: packages written the way cloaca's own examples are, with the minimal ``package.toml``.

Each package carries only ``[package] name, version`` and ``[metadata] workflow_name, description``, and bare
module-level decorators in ``workflow/<name>/tasks.py``. One package per shape the examples cover (a pipeline,
trigger rules with a skipped task, a retrying task, a poll trigger, workflow parameters, secrets, two tenants, a
cron trigger). Each is built, validated and inspected with the real CLI (once per module), then deployed with
``cloacina package deploy --to`` into a folder a reconciler watches, and run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import PG_URL
from package_fixtures import cloaca_archive, write_sources
from sqlalchemy import create_engine, text

import cloacina as cloaca
from cloacina.cli.main import main
from cloacina.packaging.archive import PackageError, read_archive
from cloacina.packaging.loader import PackageLoader
from cloacina.services.reconciler import Reconciler
from cloacina.store.packages import PackageStore
from tests.support import wait_until

pytestmark = pytest.mark.timeout(180)

PASSWORD = "pw-51d0e2-never-stored"

PIPELINE = """\
import cloaca


@cloaca.task()
def extract(context):
    context.set("raw", [1, 2, 3])
    return context


@cloaca.task(dependencies=["extract"])
def transform(context):
    context.set("doubled", [2 * x for x in context.get("raw")])
    return context


@cloaca.task(dependencies=[transform])
def load(context):
    context.set("total", sum(context.get("doubled")))
    return context
"""

ROUTING = """\
import cloaca


@cloaca.task()
def classify(context):
    context.set("kind", "small" if context.get("size") < 100 else "large")
    return context


@cloaca.task(dependencies=["classify"], trigger_rules=cloaca.context_value("kind", "equals", "large"))
def heavy(context):
    context.set("route", "heavy")
    return context


@cloaca.task(dependencies=["classify"], trigger_rules=cloaca.context_value("kind", "equals", "small"))
def light(context):
    context.set("route", "light")
    return context


@cloaca.task(
    dependencies=["heavy", "light"],
    trigger_rules=cloaca.any_of(cloaca.task_success("heavy"), cloaca.task_success("light")),
)
def report(context):
    context.set("reported", context.get("route"))
    return context
"""

RETRYING = """\
import cloaca


@cloaca.task(retry_attempts=3, retry_backoff="fixed", retry_delay_ms=10, retry_jitter=False)
def fetch(context):
    path = context.get("attempts_file")
    with open(path, "a") as out:
        out.write("x")
    with open(path) as seen:
        attempt = len(seen.read())
    if attempt < 3:
        raise ConnectionError(f"temporary outage on attempt {attempt}")
    context.set("succeeded_on", attempt)
    return context
"""

POLLING = """\
import os

import cloaca


@cloaca.trigger(on="inbox_watch", poll_interval="100ms")
def inbox_arrivals():
    found = sorted(os.listdir(cloaca.var("INBOX_DIR")))
    if found:
        return cloaca.TriggerResult.fire(cloaca.Context({"filename": found[0]}))
    return cloaca.TriggerResult.skip()


@cloaca.task()
def ingest(context):
    name = context.get("filename")
    os.replace(os.path.join(cloaca.var("INBOX_DIR"), name), os.path.join(cloaca.var("DONE_DIR"), name))
    context.set("ingested", name)
    return context
"""

PARAMETERIZED = """\
import cloaca


@cloaca.workflow_params(region=str, batch_size=(int, 50))
@cloaca.task()
def plan(context):
    context.set("plan", f"{context.get('region')}:{context.get('batch_size', 50)}")
    return context


@cloaca.task(dependencies=["plan"])
def publish(context):
    context.set("published", True)
    return context
"""

SECRETS = """\
import cloaca


@cloaca.workflow_secrets("db_prod")
@cloaca.task()
def connect(context):
    context.set("host", context.secret_field("db_prod", "host"))
    context.set("password_length", len(context.secret("db_prod")["password"]))
    try:
        context.secret("other")
        context.set("other", "granted")
    except PermissionError:
        context.set("other", "denied")
    return context
"""

TENANT = """\
import cloaca


@cloaca.task()
def count_orders(context):
    context.set("orders", len(context.get("order_ids")))
    context.set("counted_by", __name__)
    return context
"""

CRON = """\
import cloaca


@cloaca.trigger(on="nightly_digest", cron="*/3 * * * * *")
def every_three_seconds():
    pass


@cloaca.task()
def digest(context):
    context.set("digested", True)
    return context
"""

#: name -> (workflow_name, code, number of tasks)
SHAPES: dict[str, tuple[str, str, int]] = {
    "etl-pipeline": ("etl_pipeline", PIPELINE, 3),
    "conditional-routing": ("conditional_routing", ROUTING, 4),
    "flaky-fetch": ("flaky_fetch", RETRYING, 1),
    "inbox-watch": ("inbox_watch", POLLING, 1),
    "regional-report": ("regional_report", PARAMETERIZED, 2),
    "vault-reader": ("vault_reader", SECRETS, 1),
    "acme-orders": ("acme_orders", TENANT, 1),
    "globex-orders": ("globex_orders", TENANT, 1),
    "nightly-digest": ("nightly_digest", CRON, 1),
}


def minimal_sources(name: str, workflow: str, code: str) -> dict[str, str]:
    """A package directory as cloaca's examples lay it out: the minimal ``package.toml`` and ``workflow/<name>/``."""
    module = name.replace("-", "_")
    toml = (
        f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n'
        f'[metadata]\nworkflow_name = "{workflow}"\ndescription = "The {name} example"\n'
    )
    return {"package.toml": toml, f"workflow/{module}/__init__.py": "", f"workflow/{module}/tasks.py": code}


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every shape built, validated and inspected through the CLI; name -> archive path."""
    tmp = tmp_path_factory.mktemp("minimal")
    built = {}
    for name, (workflow, code, n_tasks) in SHAPES.items():
        src = write_sources(tmp / "src" / name, minimal_sources(name, workflow, code))
        output = cli("package", "build", str(src), "-o", str(tmp / "dist"))
        assert "format: cloaca (package.toml)" in output and f"{workflow} ({n_tasks} tasks)" in output, output
        archive = tmp / "dist" / f"{name}-0.1.0.cloacina"
        assert f"valid: {name} 0.1.0" in cli("package", "validate", str(archive))
        manifest = json.loads(cli("package", "inspect", str(archive), "--json"))["manifest"]
        assert manifest["python"]["entry_module"] == f"{name.replace('-', '_')}.tasks"
        assert (manifest["origin"]["workflow_name"], manifest["package"]["description"]) == (
            workflow, f"The {name} example",
        )  # fmt: skip
        built[name] = archive
    return built


class Deployed:
    """A runner and a reconciler watching its own folder, into which packages are deployed with the CLI."""

    def __init__(self, runner: Any, watch: Path) -> None:
        self.runner = runner
        self.watch = watch
        watch.mkdir(parents=True)
        self.reconciler = Reconciler.for_runner(runner, [watch])

    def deploy(self, *archives: Path) -> None:
        for archive in archives:
            cli("package", "deploy", str(archive), "--to", str(self.watch))
        report = self.reconciler.reconcile_once()
        assert len(report.deployed) == len(archives) and not report.rejected, report

    def statuses(self, result: Any) -> dict[str, str]:
        return {tid: str(t.status) for tid, t in self.runner.runs.get_tasks(result.run_id).items()}


@pytest.fixture
def deployed(make_runner: Any, tmp_path: Path) -> Deployed:
    return Deployed(make_runner(enable_cron_scheduling=False, trigger_base_poll_interval_ms=100), tmp_path / "watch")


def completed(result: Any) -> Any:
    assert result.status == "Completed", result.error_message
    return result.final_context


# -- one package per shape, on every backend ----------------------------------------------------------------------
def test_a_plain_pipeline(deployed: Deployed, archives: dict[str, Path], tmp_path: Path) -> None:
    deployed.deploy(archives["etl-pipeline"])
    assert completed(deployed.runner.execute("etl_pipeline", {})).get("total") == 12

    fingerprint = read_archive(archives["etl-pipeline"]).fingerprint  # the same archive, the same identity
    (row,) = PackageStore(deployed.runner.db).list()
    assert (row["name"], row["fingerprint"], row["active"]) == ("etl-pipeline", fingerprint, True)
    assert row["manifest"]["python"]["entry_module"] == "etl_pipeline.tasks"
    assert [t["id"] for t in row["manifest"]["tasks"]] == ["extract", "transform", "load"]
    worker = PackageLoader(PackageStore(deployed.runner.db), tmp_path / "worker")  # as a worker loads it
    loaded = worker.load(fingerprint)
    assert list(loaded.workflows) == ["etl_pipeline"] and loaded.manifest.python.entry_module == "etl_pipeline.tasks"


def test_trigger_rules_skip_a_task(deployed: Deployed, archives: dict[str, Path]) -> None:
    deployed.deploy(archives["conditional-routing"])
    small = deployed.runner.execute("conditional_routing", {"size": 10})
    assert completed(small).get("reported") == "light"
    assert deployed.statuses(small) == {
        "classify": "Completed", "heavy": "Skipped", "light": "Completed", "report": "Completed",
    }  # fmt: skip
    large = deployed.runner.execute("conditional_routing", {"size": 500})
    assert completed(large).get("reported") == "heavy" and deployed.statuses(large)["light"] == "Skipped"


def test_a_retrying_task(deployed: Deployed, archives: dict[str, Path], tmp_path: Path) -> None:
    deployed.deploy(archives["flaky-fetch"])
    attempts_file = tmp_path / "attempts"
    result = deployed.runner.execute("flaky_fetch", {"attempts_file": str(attempts_file)})
    assert completed(result).get("succeeded_on") == 3 and attempts_file.read_text() == "xxx"
    task = deployed.runner.runs.get_tasks(result.run_id)["fetch"]
    assert (task.attempt, task.max_attempts) == (3, 3)


def test_a_poll_trigger_fires_its_workflow(
    deployed: Deployed, archives: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    monkeypatch.setenv("CLOACINA_VAR_INBOX_DIR", str(inbox))
    monkeypatch.setenv("CLOACINA_VAR_DONE_DIR", str(done))
    deployed.deploy(archives["inbox-watch"])
    schedule = deployed.runner.get_trigger_schedule("inbox_arrivals")
    assert schedule is not None and schedule["workflow_name"] == "inbox_watch" and schedule["enabled"]

    (inbox / "orders.csv").write_text("1,2\n")
    history = wait_until(lambda: deployed.runner.get_trigger_execution_history("inbox_arrivals"), 30, message="fire")
    context = completed(deployed.runner.wait_for_run(history[0]["workflow_execution_id"], timeout=30))
    assert (context.get("ingested"), context.get("trigger_name")) == ("orders.csv", "inbox_arrivals")
    assert [p.name for p in done.iterdir()] == ["orders.csv"] and not list(inbox.iterdir())


def test_a_parameterized_workflow(deployed: Deployed, archives: dict[str, Path]) -> None:
    deployed.deploy(archives["regional-report"])
    assert completed(deployed.runner.execute("regional_report", {"region": "eu-west-1"})).get("plan") == "eu-west-1:50"
    explicit = deployed.runner.execute("regional_report", cloaca.Context({"region": "us-east-2", "batch_size": 10}))
    assert completed(explicit).get("plan") == "us-east-2:10" and completed(explicit).get("published") is True


@pytest.fixture
def env_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = cloaca.get_secrets_backend()
    cloaca.set_secrets_backend(cloaca.EnvSecretsBackend())
    monkeypatch.setenv("CLOACINA_SECRET_db_prod", json.dumps({"host": "db.internal", "password": PASSWORD}))
    monkeypatch.setenv("CLOACINA_SECRET_other", json.dumps({"token": "t"}))
    yield
    cloaca.set_secrets_backend(saved)


def test_a_package_reads_its_granted_secrets_only(
    deployed: Deployed, archives: dict[str, Path], env_secrets: None
) -> None:
    deployed.deploy(archives["vault-reader"])
    result = deployed.runner.execute("vault_reader", {})
    context = completed(result)
    assert (context.get("host"), context.get("password_length"), context.get("other")) == (
        "db.internal", len(PASSWORD), "denied",
    )  # fmt: skip
    stored = deployed.runner.runs.get_run(result.run_id)
    assert PASSWORD not in json.dumps(context.to_dict()) and PASSWORD not in repr(stored)


def test_a_cron_package_registers_its_schedule(make_runner: Any, archives: dict[str, Path], tmp_path: Path) -> None:
    deployed = Deployed(make_runner(cron_poll_interval_seconds=3600), tmp_path / "watch")
    deployed.deploy(archives["nightly-digest"])  # the schedule is registered; how soon it fires is not tested here
    (schedule,) = deployed.runner.list_cron_schedules(None, None, None)
    assert (schedule["workflow_name"], schedule["cron_expression"], schedule["enabled"]) == (
        "nightly_digest", "*/3 * * * * *", True,
    )  # fmt: skip
    (row,) = PackageStore(deployed.runner.db).list()
    assert row["manifest"]["triggers"][0]["cron"] == "*/3 * * * * *"
    assert completed(deployed.runner.execute("nightly_digest", {})).get("digested") is True


# -- two tenants: two packages in two PostgreSQL schemas ------------------------------------------------------------
@pytest.fixture
def second_schema(pg_schema: str) -> Iterator[str]:
    schema = f"{pg_schema}_b"
    yield schema
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_two_tenants_each_run_their_own_package(
    pg_schema: str, second_schema: str, archives: dict[str, Path], tmp_path: Path
) -> None:
    with (
        cloaca.DefaultRunner.with_schema(PG_URL, pg_schema) as acme_runner,
        cloaca.DefaultRunner.with_schema(PG_URL, second_schema) as globex_runner,
    ):
        acme, globex = Deployed(acme_runner, tmp_path / "acme"), Deployed(globex_runner, tmp_path / "globex")
        acme.deploy(archives["acme-orders"])
        globex.deploy(archives["globex-orders"])
        acme_result = acme_runner.execute("acme_orders", {"order_ids": [1, 2, 3]})
        globex_result = globex_runner.execute("globex_orders", {"order_ids": [7]})
        assert completed(acme_result).get("orders") == 3 and completed(globex_result).get("orders") == 1
        assert completed(acme_result).get("counted_by").endswith("acme_orders.tasks")
        assert [r["name"] for r in PackageStore(acme_runner.db).list()] == ["acme-orders"]
        assert [r["name"] for r in PackageStore(globex_runner.db).list()] == ["globex-orders"]
        assert acme_runner.runs.get_run(globex_result.run_id) is None  # each tenant sees its own runs only
        assert globex_runner.runs.get_run(acme_result.run_id) is None


# -- what the minimal manifest cannot say: the layout decides, or the package is refused ----------------------------
def test_a_rust_layout_is_resolved_as_rust_and_refused(tmp_path: Path) -> None:
    files = {"package.toml": '[package]\nname = "fast-path"\nversion = "0.1.0"\n', "Cargo.toml": "", "src/lib.rs": ""}
    with pytest.raises(PackageError, match=r"Rust packages are not supported: this one has Cargo\.toml") as info:
        read_archive(cloaca_archive(files, top="fast-path-0.1.0"))
    assert info.value.reason == "unsupported_language"
    src = write_sources(tmp_path / "fast-path", files)
    result = CliRunner().invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 1 and "unsupported_language" in result.output and not (tmp_path / "dist").exists()


@pytest.mark.parametrize(
    ("extra", "layout"),
    [({}, "neither"), ({"Cargo.toml": "", "src/lib.rs": ""}, "both")],
)
def test_an_ambiguous_layout_asks_to_declare_the_language(extra: dict[str, str], layout: str, tmp_path: Path) -> None:
    sources = minimal_sources("etl-pipeline", "etl_pipeline", PIPELINE)
    files = {"package.toml": sources["package.toml"], **extra} if layout == "neither" else {**sources, **extra}
    src = write_sources(tmp_path / "etl-pipeline", files)
    result = CliRunner().invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 1 and f"it has {layout}" in result.output, result.output
    assert 'declare it in package.toml, [metadata] language = "python" or "rust"' in result.output
    declared = sources["package.toml"] + 'language = "python"\n'
    if layout == "both":  # declaring the language settles it
        write_sources(src, {"package.toml": declared})
        assert "format: cloaca (package.toml)" in cli("package", "build", str(src), "-o", str(tmp_path / "dist"))
