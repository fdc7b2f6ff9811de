"""Starting cataloged workflows by name from processes that never import their code, on real processes.

A ``cloacina worker --app tests.dist_apps.catalog_app`` records ``catalog_flow`` in the catalog when it starts. The
clients are separate processes in which importing that module is impossible (``sys.modules`` holds ``None`` for
it, so an import would raise): a Python client (``DefaultRunner`` in broker mode: ``execute`` and
``execute_async`` by name) and the command line (``cloacina runs start``). A worker whose code has another version
than the one the catalog serves refuses the run with a clear error. A package stored in the registry enters the
catalog with origin ``package:<fingerprint>`` when a plain poller loads it, and a client starts it by name on a
worker started without ``--app``. PostgreSQL, a private Redis, one test schema each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from package_fixtures import build_ingest

from cloacina.cli.main import main
from cloacina.packaging.archive import read_archive
from cloacina.store.catalog import CatalogEntry, CatalogStore
from cloacina.store.database import Database
from tests.distributed_harness import REPO_ROOT, Cluster, wait_for_poller_ready, wait_for_worker_ready
from tests.support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
CATALOG_APP = "tests.dist_apps.catalog_app"
# Imports of the app raise in the clients: the test proves they never needed it.
NO_APP = f"import sys; sys.modules[{CATALOG_APP!r}] = None; sys.modules['data_ingest'] = None"

PYTHON_CLIENT = f"""
{NO_APP}
import json
import cloacina as cloaca

runner = cloaca.DefaultRunner(sys.argv[1], cloaca.DefaultRunnerConfig(broker_url=sys.argv[2]))
try:
    catalog = [(e.name, e.origin) for e in runner.list_catalog()]
    result = runner.execute("catalog_flow", {{"n": 21}}, timeout=90)
    handle = runner.execute_async("catalog_flow", cloaca.Context({{"n": 5}}))
    later = handle.wait(90)
    try:
        runner.execute("no_such_flow", {{}})
        unknown = None
    except ValueError as exc:
        unknown = str(exc)
finally:
    runner.shutdown()
print(json.dumps({{
    "catalog": catalog,
    "status": result.status,
    "context": result.final_context.to_dict(),
    "later": [later.status, later.final_context.get("n")],
    "unknown": unknown,
    "imported": [name for name, module in sys.modules.items() if name.startswith("tests") and module is not None],
}}))
"""


def _client_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOACINA_") and k != "PYTHONPATH"}
    return {**env, "CLOACINA_DATABASE_URL": cluster.direct_db_url, "CLOACINA_BROKER_URL": cluster.redis_url}


def _cli(cluster: Cluster, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``cloacina <args>`` in a process of its own that cannot import the app (run from an empty directory)."""
    code = f"{NO_APP}; from cloacina.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=_client_env(cluster),
        capture_output=True,
        text=True,
        timeout=150,
    )


def _catalog(cluster: Cluster) -> dict[str, CatalogEntry]:
    db = Database(cluster.direct_db_url, pool_size=1)
    try:
        return {e.name: e for e in CatalogStore(db).list_workflows()}
    finally:
        db.dispose()


def _wait_cataloged(cluster: Cluster, name: str, origin: str) -> CatalogEntry:
    def found() -> CatalogEntry | None:
        entry = _catalog(cluster).get(name)
        return entry if entry is not None and entry.origin == origin else None

    return wait_until(found, 60, interval_s=0.2, message=f"{name} in the catalog with origin {origin}")


@pytest.mark.timeout(300)
def test_clients_without_the_code_start_cataloged_runs_on_a_worker_with_the_app(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = cluster.services.worker("w1", CATALOG_APP, concurrency=1)
    wait_for_worker_ready(worker)
    entry = _wait_cataloged(cluster, "catalog_flow", f"app:{CATALOG_APP}")
    assert [t.task_id for t in entry.tasks] == ["double", "report"]
    assert entry.tags == {"team": "catalog"} and entry.description == "Doubles n on a worker"

    # A Python client: execute and execute_async by name; an unknown name is a ValueError.
    done = subprocess.run(
        [sys.executable, "-c", PYTHON_CLIENT, cluster.direct_db_url, cluster.redis_url],
        cwd=tmp_path, env=_client_env(cluster), capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert ["catalog_flow", f"app:{CATALOG_APP}"] in out["catalog"]
    assert out["status"] == "Completed", out
    assert out["context"]["n"] == 42 and out["context"]["report"] == "n is 42"
    assert out["context"]["double_ppid"] == worker.pid  # run by the worker's pool child
    assert out["later"] == ["Completed", 10]
    assert out["unknown"] is not None and "no_such_flow" in out["unknown"]
    assert out["imported"] == []

    # The command line: --wait shows the outcome; the run carries the catalog's version.
    started = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", '{"n": 4}', "--wait", "--json")
    assert started.returncode == 0, started.stderr[-4000:]
    run = json.loads(started.stdout)
    assert run["status"] == "Completed" and run["final_context"]["n"] == 8
    assert run["workflow_version"] == entry.version and run["input_context"] == {"n": 4}

    # Without --wait: the run id, at once; the worker finishes it.
    started = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", '{"n": 1}')
    assert started.returncode == 0, started.stderr[-4000:]
    run_id = started.stdout.strip()
    wait_until(
        lambda: cluster.sql("SELECT status FROM workflow_runs WHERE id = :id", id=run_id) == [("Completed",)],
        60,
        message="the run started without --wait to complete",
    )

    # A failing run: --wait exits 1 with the run's error; the rule skipped the report.
    failed = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", '{"fail": true}', "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stdout and "asked to fail" in failed.stdout

    unknown = _cli(cluster, tmp_path, "runs", "start", "no_such_flow")
    assert unknown.returncode == 1 and "unknown workflow 'no_such_flow'" in unknown.stderr
    assert "catalog_flow" in unknown.stderr  # the names the catalog knows
    bad = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", "[1, 2]")
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr


def _record_version(cluster: Cluster, **env: str) -> None:
    """Record ``catalog_flow`` as a process importing the app with ``env`` sees it (a newer version)."""
    record = "from cloacina.definitions.registry import get_workflow; from cloacina.store.catalog import CatalogStore; "
    record += "from cloacina.store.database import Database; import os, tests.dist_apps.catalog_app; "
    record += "CatalogStore(Database(os.environ['CLOACINA_DATABASE_URL'])).record(get_workflow('catalog_flow'), 'code')"
    full_env = {**_client_env(cluster), **env, "PYTHONPATH": str(REPO_ROOT)}
    recorded = subprocess.run([sys.executable, "-c", record], env=full_env, capture_output=True, text=True, timeout=60)
    assert recorded.returncode == 0, recorded.stderr


@pytest.mark.timeout(300)
def test_a_worker_runs_a_version_with_its_graph_and_refuses_one_with_another_graph(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = cluster.services.worker("w1", CATALOG_APP, concurrency=1)  # CATALOG_ATTEMPTS=1, no audit task
    # A poller without any code: its sweeper ends the run the worker could not plan (planned from the catalog).
    poller = cluster.services.cloacina("p1", "poller")
    wait_for_worker_ready(worker)
    wait_for_poller_ready(poller)
    old = _wait_cataloged(cluster, "catalog_flow", f"app:{CATALOG_APP}")

    # A newer version with the same tasks and dependencies (double gets 2 attempts), as in a rolling upgrade that
    # changed settings: the worker runs the run with its own code.
    _record_version(cluster, CATALOG_ATTEMPTS="2")
    same_graph = _catalog(cluster)["catalog_flow"]
    assert same_graph.version != old.version and same_graph.tasks[0].max_attempts == 2
    started = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", '{"n": 3}', "--wait", "--json")
    assert started.returncode == 0, started.stdout + started.stderr
    run = json.loads(started.stdout)
    assert run["status"] == "Completed" and run["workflow_version"] == same_graph.version
    assert run["final_context"]["n"] == 6

    # A newer version with another graph (an audit task the worker's code does not have): the worker refuses.
    _record_version(cluster, CATALOG_AUDIT="1")
    new = _catalog(cluster)["catalog_flow"]
    assert new.version not in (old.version, same_graph.version) and new.origin == "code"
    assert [t.task_id for t in new.tasks] == ["double", "report", "audit"]
    started = _cli(cluster, tmp_path, "runs", "start", "catalog_flow", "--context", '{"n": 1}', "--wait", "--json")
    assert started.returncode == 1, started.stdout + started.stderr
    run = json.loads(started.stdout)
    assert run["status"] == "Failed" and run["workflow_version"] == new.version
    ((error,),) = cluster.sql("SELECT error_message FROM task_runs WHERE run_id = :id AND task_id = 'double'",
                              id=run["run_id"])  # fmt: skip
    assert "WorkflowVersionError" in error
    assert f"started with version {new.version}" in error and f"has version {old.version}" in error

    # The worker restarting with its (older) version records it again, and the catalog still serves the newer one.
    worker.stop()
    worker = cluster.services.worker("w1-again", CATALOG_APP, concurrency=1)
    wait_for_worker_ready(worker)
    assert _catalog(cluster)["catalog_flow"].version == new.version


@pytest.mark.timeout(300)
def test_a_package_in_the_registry_is_cataloged_and_started_by_name_on_a_plain_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    archive = build_ingest(tmp_path, version="7.0.0", poll="1s")
    fingerprint = read_archive(archive).fingerprint
    result = CliRunner().invoke(main, ["package", "deploy", str(archive), "--db", cluster.direct_db_url])
    assert result.exit_code == 0, result.output
    empty_inbox = tmp_path / "inbox"
    empty_inbox.mkdir()  # the package's trigger finds nothing: the only run is the one started by name
    poller = cluster.services.cloacina("p1", "poller", env={"INBOX_PATH": str(empty_inbox)})
    worker = cluster.services.cloacina("w1", "worker", "--pool", "solo", "--hostname", "w1@%h")
    wait_for_poller_ready(poller)
    wait_for_worker_ready(worker)
    entry = _wait_cataloged(cluster, "data_ingest", f"package:{fingerprint}")
    assert entry.package_fingerprint == fingerprint
    assert [t.task_id for t in entry.tasks] == ["validate", "load"]

    started = _cli(cluster, tmp_path, "runs", "start", "data_ingest", "--context", '{"filename": "x.parquet"}',
                   "--wait", "--json")  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    run: dict[str, Any] = json.loads(started.stdout)
    assert run["status"] == "Completed" and run["final_context"]["package_version"] == "7.0.0"
    assert run["final_context"]["pid"] == worker.pid  # executed by the worker, which loaded the package
    assert cluster.sql("SELECT package_fingerprint FROM workflow_runs WHERE id = :id", id=run["run_id"]) == [
        (fingerprint,)
    ]
