"""The package registry and the isolated loader.

- :class:`PackageStore` contract on every backend: content-addressed puts, archive round trip, listing,
  activity flags, lookups by source file.
- :class:`PackageLoader`: bytes from the database are validated again and must match the fingerprint asked for;
  two versions of one package (same module name) are live at once; the global registry, its listeners and
  ``sys.modules`` are left as they were; ``import cloaca`` and absolute self-imports work; loads are cached and
  thread-safe; the engine resolves package workflows through :func:`install_resolver`.
- ``cloacina package deploy`` and ``cloacina package list``.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Backend
from package_fixtures import build_ingest, repackage
from sqlalchemy import update

import cloacina
from cloacina import DefaultRunner, DefaultRunnerConfig, WorkflowNotFoundError
from cloacina.cli.main import main
from cloacina.definitions import registry
from cloacina.definitions.packages import package_workflow
from cloacina.packaging.archive import PackageError, read_archive
from cloacina.packaging.isolation import MODULE_PREFIX
from cloacina.packaging.loader import (
    PackageLoader,
    PackageNotFoundError,
    install_resolver,
    uninstall_resolver,
)
from cloacina.store.database import Database
from cloacina.store.models import Package
from cloacina.store.packages import PackageStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_ingest(tmp_path_factory.mktemp("v1"), version="1.0.0").read_bytes()


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_ingest(tmp_path_factory.mktemp("v2"), version="2.0.0").read_bytes()


@pytest.fixture
def db(backend: Backend) -> Any:
    database = Database(backend.url, schema=backend.schema)
    database.upgrade()
    yield database
    database.dispose()


# -- the store -------------------------------------------------------------------------------------------
def test_store_contract(db: Database, v1: bytes, v2: bytes) -> None:
    store = PackageStore(db)
    one, two = read_archive(v1), read_archive(v2)
    assert store.put(one, "/w/data-ingest-1.0.0.cloacina") is True
    assert store.put(one, "/w/renamed.cloacina", active=False) is False  # same fingerprint: the same row
    assert store.put(two, None) is True
    assert store.get_archive(one.fingerprint) == v1 and store.get_archive("f" * 64) is None

    row = store.get(one.fingerprint)
    assert row is not None and "archive" not in row
    assert (row["name"], row["version"], row["source_path"], row["active"]) == (
        "data-ingest", "1.0.0", "/w/renamed.cloacina", False,
    )  # fmt: skip
    assert row["size_bytes"] == len(v1) and row["manifest"] == json.loads(one.manifest_bytes)
    assert row["created_at"].endswith("+00:00") and row["updated_at"] >= row["created_at"]

    assert [r["version"] for r in store.list()] == ["2.0.0", "1.0.0"]  # by name, newest first
    assert [r["version"] for r in store.list(active_only=True)] == ["2.0.0"]
    assert [r["fingerprint"] for r in store.by_source("/w/renamed.cloacina")] == [one.fingerprint]
    assert store.by_source("/w/data-ingest-1.0.0.cloacina") == []

    assert store.set_active(one.fingerprint, True) is True and store.set_active("0" * 64, True) is False
    assert store.deactivate_others("data-ingest", keep=two.fingerprint) == [one.fingerprint]
    assert [r["fingerprint"] for r in store.list(active_only=True)] == [two.fingerprint]


# -- the loader --------------------------------------------------------------------------------------------
@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    database = Database(f"sqlite:///{tmp_path}/registry.db")
    database.upgrade()
    yield PackageStore(database)
    database.dispose()


def test_two_versions_of_one_package_are_live_at_once_in_isolation(
    sqlite_store: PackageStore, v1: bytes, v2: bytes, tmp_path: Path
) -> None:
    one, two = read_archive(v1), read_archive(v2)
    sqlite_store.put(one)
    sqlite_store.put(two)
    before = registry.snapshot()
    heard: list[object] = []
    registry.add_trigger_listener(heard.append)
    modules_before = set(sys.modules)
    sys.modules.pop("cloaca", None)
    try:
        loader = PackageLoader(sqlite_store, tmp_path / "cache")
        first, second = loader.load(one.fingerprint), loader.load(two.fingerprint)
    finally:
        registry.remove_trigger_listener(heard.append)

    assert registry.snapshot() == before and heard == []  # nothing leaked into the registry or to a scheduler
    added = set(sys.modules) - modules_before
    assert all(m.startswith(MODULE_PREFIX) for m in added)  # no `cloaca` alias or `data_ingest` left behind
    assert importlib.import_module("cloaca") is cloacina  # ... yet task code may still `import cloaca`
    sys.modules.pop("cloaca")
    # The package's modules live under a name of its own (with a counter when an earlier load in this process,
    # e.g. another test's, took the plain one).
    assert re.fullmatch(rf"{MODULE_PREFIX}{one.fingerprint[:16]}(_\d+)?\.data_ingest", first.module.__name__)
    assert first.path == tmp_path / "cache" / one.fingerprint and (first.path / "manifest.json").is_file()

    wf1, wf2 = first.workflows["data_ingest"], second.workflows["data_ingest"]
    assert wf1.version != wf2.version
    out1 = wf1.tasks["load"].function(_Ctx())
    out2 = wf2.tasks["load"].function(_Ctx())
    assert (out1.values["package_version"], out2.values["package_version"]) == ("1.0.0", "2.0.0")
    (t1,), (t2,) = first.triggers, second.triggers
    assert (t1.name, t1.workflow, t1.package_fingerprint) == ("inbox_watcher", "data_ingest", one.fingerprint)
    assert t2.package_fingerprint == two.fingerprint and t1.function is not t2.function


class _Ctx:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def test_bytes_from_the_registry_are_validated_again(sqlite_store: PackageStore, v1: bytes, v2: bytes) -> None:
    one, two = read_archive(v1), read_archive(v2)
    sqlite_store.put(one)
    loader = PackageLoader(sqlite_store)
    with sqlite_store.db.session() as s:  # someone swaps the blob of v1 for v2's (valid, but not what was asked)
        s.execute(update(Package).where(Package.fingerprint == one.fingerprint).values(archive=two.archive))
    with pytest.raises(PackageError, match="refusing to load") as info:
        loader.load(one.fingerprint)
    assert info.value.reason == "fingerprint_mismatch"
    with sqlite_store.db.session() as s:
        s.execute(update(Package).where(Package.fingerprint == one.fingerprint).values(archive=b"not a tar"))
    with pytest.raises(PackageError) as info:
        loader.load(one.fingerprint)
    assert info.value.reason == "not_an_archive"
    with pytest.raises(PackageNotFoundError):
        loader.load("a" * 64)
    assert loader.loaded == []


def test_absolute_self_imports_and_a_host_module_of_the_same_name(v1: bytes, tmp_path: Path) -> None:
    def split(files: dict[str, bytes]) -> dict[str, bytes]:
        code = files["data_ingest/__init__.py"].decode()
        files["data_ingest/__init__.py"] = code.replace(
            "import cloaca\n", "import cloaca\nimport data_ingest.helpers\nfrom data_ingest.helpers import TAG\n"
        ).encode()
        files["data_ingest/helpers.py"] = b"TAG = 'helpers'\n"
        return files

    validated = read_archive(repackage(v1, split))
    host = type(sys)("data_ingest")
    sys.modules["data_ingest"] = host  # the host application has a module of that name
    try:
        loaded = PackageLoader(None, tmp_path).load(validated)
        assert sys.modules["data_ingest"] is host and "data_ingest.helpers" not in sys.modules
    finally:
        del sys.modules["data_ingest"]
    assert loaded.module.TAG == "helpers"
    assert (
        loaded.module.data_ingest.helpers.__name__ == f"{MODULE_PREFIX}{validated.fingerprint[:16]}.data_ingest.helpers"
    )


def test_a_failing_import_is_a_package_error_and_leaves_nothing_behind(v1: bytes, tmp_path: Path) -> None:
    broken = read_archive(
        repackage(v1, lambda f: {**f, "data_ingest/__init__.py": b"import cloaca\nraise KeyError('x')\n"})
    )
    before = registry.snapshot()
    with pytest.raises(PackageError, match="KeyError") as info:
        PackageLoader(None, tmp_path).load(broken)
    assert info.value.reason == "import_failed"
    assert registry.snapshot() == before
    assert not [m for m in sys.modules if m.startswith(f"{MODULE_PREFIX}{broken.fingerprint[:16]}")]


def test_concurrent_loads_import_once(sqlite_store: PackageStore, v1: bytes, tmp_path: Path) -> None:
    fingerprint = read_archive(v1).fingerprint
    sqlite_store.put(read_archive(v1))
    loader = PackageLoader(sqlite_store, tmp_path)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(loader.load(fingerprint))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert loader.get(fingerprint) is results[0]


def test_a_second_loader_of_the_same_fingerprint_gets_its_own_modules(v1: bytes, tmp_path: Path) -> None:
    validated = read_archive(v1)
    a = PackageLoader(None, tmp_path / "a").load(validated)
    b = PackageLoader(None, tmp_path / "b").load(validated)
    assert a.module is not b.module and a.module.__name__ != b.module.__name__
    assert a.workflows["data_ingest"].version == b.workflows["data_ingest"].version


def test_resolver_finds_package_workflows_by_fingerprint(sqlite_store: PackageStore, v1: bytes) -> None:
    fingerprint = read_archive(v1).fingerprint
    sqlite_store.put(read_archive(v1))
    loader = PackageLoader(sqlite_store)
    install_resolver(loader)
    try:
        assert package_workflow(fingerprint, "data_ingest").task_ids == ("validate", "load")
        with pytest.raises(WorkflowNotFoundError, match=r"nope \(package data-ingest 1.0.0"):
            package_workflow(fingerprint, "nope")
        with pytest.raises(WorkflowNotFoundError, match="is in no package registry"):
            package_workflow("b" * 64, "data_ingest")
    finally:
        uninstall_resolver(loader)


def test_embedded_runner_loads_a_package_by_the_fingerprint_of_a_run(v1: bytes, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    validated = read_archive(v1)
    config = DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with DefaultRunner(url, config) as runner:
        PackageStore(runner.db).put(validated)
        workflow = PackageLoader(None, tmp_path / "elsewhere").load(validated).workflows["data_ingest"]
        assert runner.packages.get(validated.fingerprint) is None
        run_id = runner.coordinator.create_run(
            workflow, {"filename": "a.parquet"}, package_fingerprint=validated.fingerprint
        )
        assert run_id is not None
        result = runner.wait_for_run(run_id, timeout=30)
        assert result.status == "Completed", result.error_message
        assert result.final_context.get("package_version") == "1.0.0"
        assert runner.packages.get(validated.fingerprint) is not None  # fetched from the registry on demand


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_deploy_into_a_folder_and_into_the_registry_then_list(v1: bytes, v2: bytes, tmp_path: Path) -> None:
    cli = CliRunner()
    (tmp_path / "v1.cloacina").write_bytes(v1)
    (tmp_path / "v2.cloacina").write_bytes(v2)
    watch = tmp_path / "watch"
    result = cli.invoke(main, ["package", "deploy", str(tmp_path / "v1.cloacina"), "--to", str(watch)])
    assert result.exit_code == 0, result.output
    assert (watch / "data-ingest-1.0.0.cloacina").read_bytes() == v1
    assert [p.name for p in watch.iterdir()] == ["data-ingest-1.0.0.cloacina"]  # no temporary file left

    url = f"sqlite:///{tmp_path}/reg.db"
    for name in ("v1", "v2"):
        result = cli.invoke(main, ["package", "deploy", str(tmp_path / f"{name}.cloacina"), "--db", url])
        assert result.exit_code == 0, result.output
    assert "older version(s) marked inactive" in result.output
    result = cli.invoke(main, ["package", "list", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["version"], r["active"], r["source_path"]) for r in rows] == [
        ("2.0.0", True, None),
        ("1.0.0", False, None),
    ]
    result = cli.invoke(main, ["package", "list", "--db", url], env={"COLUMNS": "200"})
    assert "data-ingest" in result.output and "inbox_watcher" in result.output

    result = cli.invoke(main, ["package", "list", "--db", f"sqlite:///{tmp_path}/missing.db"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = cli.invoke(main, ["package", "deploy", str(tmp_path / "v1.cloacina"), "--to", "x", "--db", url])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_cli_deploy_refuses_an_invalid_package(v1: bytes, tmp_path: Path) -> None:
    renamed = repackage(v1, lambda f: {**f, "data_ingest/__init__.py": f["data_ingest/__init__.py"].replace(
        b'name="inbox_watcher"', b'name="inbox_watch"')})  # fmt: skip
    bad = tmp_path / "bad.cloacina"
    bad.write_bytes(renamed)
    watch = tmp_path / "watch"
    result = CliRunner().invoke(main, ["package", "deploy", str(bad), "--to", str(watch)])
    assert result.exit_code == 1
    assert "manifest_mismatch" in result.output and "code says 'inbox_watch'" in result.output
    assert not watch.exists()
