"""Contract §15 (package archive format) and the package rows of §16: cloaca's archives load next to ours.

Archives are built here with ``tarfile`` (bzip2), as cloaca packs them or as its older docs built them by hand,
and go through the real code: static validation, the child-process check, the isolated loader, the package
registry, the daemon's reconcile step, and runs on a ``DefaultRunner`` (in-memory SQLite, SQLite file and
PostgreSQL). Every malformed or tampered archive must be refused with a clear error before its code runs.
"""

from __future__ import annotations

import bz2
import inspect
import io
import json
import sys
import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import Backend
from package_fixtures import (
    CLOACA_TASKS,
    CLOACA_TOML,
    INGEST_FILES,
    OLDER_CODE,
    build_ingest,
    cloaca_archive,
    cloaca_sources,
    older_archive,
    older_manifest,
    write_sources,
)
from sqlalchemy import update

from cloacina import Context
from cloacina.cli.main import main
from cloacina.definitions import registry
from cloacina.packaging.archive import ArchiveLimits, PackageError, read_archive
from cloacina.packaging.discover import IMPORT_TIMEOUT_S
from cloacina.packaging.isolation import MODULE_PREFIX
from cloacina.packaging.loader import PackageLoader
from cloacina.packaging.verify import verify_archive, verify_package
from cloacina.services.reconciler import Reconciler
from cloacina.store.database import Database
from cloacina.store.models import Package
from cloacina.store.packages import PackageStore
from tests.support import wait_until

pytestmark = pytest.mark.timeout(180)
TOP = "data-pipeline-1.0.0"


def toml(**changes: str) -> str:
    """package.toml text with lines replaced (``key="new line"``) or removed (``key=""``)."""
    lines = CLOACA_TOML.format(
        name="data-pipeline", version="1.0.0", workflow="data_pipeline", entry="data_pipeline.tasks"
    ).splitlines()
    out = []
    for line in lines:
        key = line.split("=")[0].strip()
        if key in changes:
            if changes[key]:
                out.append(changes[key])
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def with_files(files: dict[str, str]) -> dict[str, str]:
    """The sample package's sources with ``files`` (relative path -> text) added or replaced."""
    return {**cloaca_sources(), **files}


def rejected(data: bytes, reason: str, match: str, **kwargs: Any) -> PackageError:
    with pytest.raises(PackageError, match=match) as info:
        verify_package(data, **kwargs)
    assert info.value.reason == reason, info.value
    assert isinstance(info.value, ValueError)
    return info.value


def tripwire(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Sources whose import leaves a file behind: a static rejection must leave no such file."""
    marker = tmp_path / "imported"
    code = f"open({str(marker)!r}, 'w').write('x')\n" + CLOACA_TASKS.format(workflow="data_pipeline")
    return with_files({"workflow/data_pipeline/tasks.py": code}), marker


# -- today's form ---------------------------------------------------------------------------------------------
def test_package_toml_archive_reads_into_our_canonical_manifest() -> None:
    validated = read_archive(cloaca_archive())
    manifest = validated.manifest
    assert validated.source_format == "cloaca" and manifest.origin is not None
    assert (manifest.package.name, manifest.package.version) == ("data-pipeline", "1.0.0")
    assert manifest.package.description == "ETL pipeline for analytics data"
    assert manifest.python.entry_module == "data_pipeline.tasks" and manifest.python.requires_python == ">=3.10"
    assert (manifest.origin.workflow_name, manifest.origin.import_paths) == ("data_pipeline", ["workflow"])
    assert manifest.origin.author == "you@example.com"
    assert sorted(validated.files) == [
        "package.toml", "workflow/data_pipeline/__init__.py", "workflow/data_pipeline/helpers.py",
        "workflow/data_pipeline/tasks.py",
    ]  # fmt: skip
    assert (
        len(manifest.package.fingerprint) == 64 and read_archive(cloaca_archive()).fingerprint == validated.fingerprint
    )
    changed = cloaca_archive(with_files({"workflow/data_pipeline/helpers.py": "def numbers():\n    return [9]\n"}))
    assert read_archive(changed).fingerprint != validated.fingerprint
    assert json.loads(validated.manifest_bytes)["origin"]["format"] == "cloaca"


def test_workflow_name_defaults_to_the_package_name_and_vendor_joins_the_import_path() -> None:
    files = with_files({"vendor/tinylib/__init__.py": "", "package.toml": toml(workflow_name="")})
    manifest = read_archive(cloaca_archive(files)).manifest
    assert manifest.origin is not None
    assert (manifest.origin.workflow_name, manifest.origin.import_paths) == ("data-pipeline", ["workflow", "vendor"])


def test_vendored_libraries_are_importable_by_the_package(tmp_path: Path) -> None:
    code = CLOACA_TASKS.replace("from . import helpers", "import tinylib as helpers")
    files = {**cloaca_sources(tasks=code), "vendor/tinylib/__init__.py": "def numbers():\n    return [10, 20]\n"}
    loaded = PackageLoader(None, tmp_path).load(read_archive(cloaca_archive(files)))
    extract = loaded.workflows["data_pipeline"].tasks["extract"].function
    assert extract(Context()).get("raw") == [10, 20]
    assert "tinylib" not in sys.modules  # served from the package's private tree only


def test_a_package_toml_module_may_build_its_workflow_in_a_workflow_builder_block(tmp_path: Path) -> None:
    files = {**cloaca_sources(), "workflow/data_pipeline/tasks.py": OLDER_CODE}  # no bare tasks: §16, both forms
    loaded = PackageLoader(None, tmp_path).load(read_archive(cloaca_archive(files)))
    assert list(loaded.workflows) == ["data_pipeline"] and loaded.manifest.tasks[1].id == "load"
    (trigger,) = loaded.triggers  # no on=: the package's workflow
    assert (trigger.name, trigger.workflow, trigger.poll_interval_ms) == ("inbox_watcher", "data_pipeline", 5000)


def test_a_loaded_package_declares_its_workflow_and_leaves_the_process_as_it_was(tmp_path: Path) -> None:
    before = registry.snapshot()
    loaded = PackageLoader(None, tmp_path).load(read_archive(cloaca_archive()))
    workflow = loaded.workflows["data_pipeline"]
    assert workflow.topological_sort() == [
        "public::data-pipeline::data_pipeline::extract", "public::data-pipeline::data_pipeline::transform",
    ]  # fmt: skip
    (trigger,) = loaded.triggers
    assert (trigger.name, trigger.workflow, trigger.poll_interval_ms) == ("new_data", "data_pipeline", 100)
    assert trigger.package_fingerprint == loaded.fingerprint
    assert [(t.workflow, t.id) for t in loaded.manifest.tasks] == [
        ("data_pipeline", "extract"),
        ("data_pipeline", "transform"),
    ]
    assert registry.snapshot()["workflows"] == before["workflows"] and registry.get_trigger("new_data") is None
    assert "data_pipeline" not in sys.modules and "cloaca" not in sys.modules


def test_a_workflow_of_a_loaded_package_runs(make_runner: Any, backend: Backend, tmp_path: Path) -> None:
    runner = make_runner(enable_cron_scheduling=False, enable_trigger_scheduling=False)
    loaded = runner.packages.load(read_archive(cloaca_archive()))
    result = runner.execute(loaded.workflows["data_pipeline"], {"n": 1})
    assert result.status == "Completed", result.error_message
    assert result.final_context.get("total") == 6 and result.final_context.get("n") == 1
    module = result.final_context.get("module")  # the package's private module tree (suffixed if loaded before)
    assert module.startswith(f"{MODULE_PREFIX}{loaded.fingerprint[:16]}") and module.endswith(".data_pipeline.tasks")


# -- the older form -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["bz2", "gz"])
def test_older_manifest_json_form_loads_and_the_manifest_binds_the_trigger(compression: str, tmp_path: Path) -> None:
    validated = read_archive(older_archive(compression=compression))
    assert validated.source_format == "cloaca-manifest" and validated.import_paths == [""]
    manifest = verify_archive(validated)
    assert [(t.workflow, t.id) for t in manifest.tasks] == [("data_pipeline", "extract"), ("data_pipeline", "load")]
    (entry,) = manifest.triggers  # "data-pipeline" (the package) stands for its only workflow
    assert (entry.workflow, entry.poll_interval, entry.config) == ("data_pipeline", "100ms", {"path": "/data/inbox/"})
    loaded = PackageLoader(None, tmp_path).load(validated)
    (trigger,) = loaded.triggers
    assert (trigger.workflow, trigger.poll_interval_ms) == ("data_pipeline", 100)  # the manifest's interval wins
    assert loaded.workflows["data_pipeline"].description == "ETL pipeline, older packaging"


def test_older_form_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "old.cloacina").write_bytes(older_archive())
    inspected = CliRunner().invoke(main, ["package", "inspect", str(tmp_path / "old.cloacina")])
    assert inspected.exit_code == 0 and "format: cloaca, older form (manifest.json)" in inspected.output
    validated = CliRunner().invoke(main, ["package", "validate", str(tmp_path / "old.cloacina")])
    assert validated.exit_code == 0, validated.output
    assert "data_pipeline (2 tasks)" in validated.output and "inbox_watcher -> data_pipeline" in validated.output


def test_older_form_run_on_a_runner(make_runner: Any) -> None:
    runner = make_runner(enable_cron_scheduling=False, enable_trigger_scheduling=False)
    loaded = runner.packages.load(read_archive(older_archive()))
    result = runner.execute(loaded.workflows["data_pipeline"], {})
    assert result.status == "Completed" and result.final_context.get("total") == 15


# -- cloacina package build / validate / inspect / deploy -----------------------------------------------------
def test_build_a_cloaca_directory_into_a_cloaca_archive_then_validate_inspect_and_deploy(tmp_path: Path) -> None:
    src = write_sources(tmp_path / "data-pipeline", cloaca_sources())
    (src / "workflow" / "data_pipeline" / "__pycache__").mkdir()
    (src / "workflow" / "data_pipeline" / "__pycache__" / "tasks.cpython-311.pyc").write_bytes(b"junk")
    cli = CliRunner()
    built = cli.invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "dist")])
    assert built.exit_code == 0, built.output
    assert "format: cloaca (package.toml)" in built.output and "data_pipeline (2 tasks)" in built.output
    archive = tmp_path / "dist" / f"{TOP}.cloacina"
    data = archive.read_bytes()
    assert data.startswith(b"BZh")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as tar:
        names = tar.getnames()
    assert all(n == TOP or n.startswith(f"{TOP}/") for n in names) and f"{TOP}/package.toml" in names
    assert not any("__pycache__" in n for n in names)
    again = cli.invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "again")])
    assert again.exit_code == 0 and (tmp_path / "again" / f"{TOP}.cloacina").read_bytes() == data  # reproducible

    validated = cli.invoke(main, ["package", "validate", str(archive)])
    assert validated.exit_code == 0, validated.output
    assert "new_data -> data_pipeline" in validated.output
    inspected = cli.invoke(main, ["package", "inspect", str(archive), "--json"])
    document = json.loads(inspected.output)
    assert document["manifest"]["origin"]["workflow_name"] == "data_pipeline"

    url = f"sqlite:///{tmp_path}/reg.db"
    deployed = cli.invoke(main, ["package", "deploy", str(archive), "--db", url])
    assert deployed.exit_code == 0, deployed.output
    db = Database(url)
    try:
        (row,) = PackageStore(db).list()
        assert [t["id"] for t in row["manifest"]["tasks"]] == ["extract", "transform"]  # the complete manifest
        assert row["manifest"]["triggers"][0]["workflow"] == "data_pipeline" and row["active"]
    finally:
        db.dispose()


def test_build_refuses_a_cloaca_directory_that_registers_no_task(tmp_path: Path) -> None:
    src = write_sources(tmp_path / "empty", with_files({"workflow/data_pipeline/tasks.py": "import cloaca\n"}))
    result = CliRunner().invoke(main, ["package", "build", str(src), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 1 and "empty_package" in result.output and "registered no tasks" in result.output
    assert not (tmp_path / "dist").exists()


# -- the registry and the daemon's reconcile step ------------------------------------------------------------
def test_the_reconciler_deploys_both_forms_runs_their_triggers_and_removes_them(
    make_runner: Any, tmp_path: Path
) -> None:
    runner = make_runner(enable_cron_scheduling=False)
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / f"{TOP}.cloacina").write_bytes(cloaca_archive())
    trigger = {**older_manifest()["triggers"][0], "workflow": "data_pipeline"}  # type: ignore[index]
    other = older_manifest(package={"name": "older-pipeline", "version": "2.0.0"}, triggers=[trigger])
    (watch / "older-pipeline-2.0.0.cloacina").write_bytes(older_archive(other))
    reconciler = Reconciler.for_runner(runner, [watch])
    report = reconciler.reconcile_once()
    assert sorted(report.deployed) == [
        f"data-pipeline 1.0.0 ({watch / f'{TOP}.cloacina'})",
        f"older-pipeline 2.0.0 ({watch / 'older-pipeline-2.0.0.cloacina'})",
    ] and not report.rejected  # fmt: skip

    for trigger_name, total in (("new_data", 6), ("inbox_watcher", 15)):
        history = wait_until(lambda n=trigger_name: runner.get_trigger_execution_history(n), 30, message=trigger_name)
        result = runner.wait_for_run(history[-1]["workflow_execution_id"], timeout=30)
        assert result.status == "Completed" and result.final_context.get("total") == total
    rows = {r["name"]: r for r in PackageStore(runner.db).list(active_only=True)}
    assert rows["data-pipeline"]["manifest"]["origin"]["format"] == "cloaca"
    assert [t["id"] for t in rows["older-pipeline"]["manifest"]["tasks"]] == ["extract", "load"]

    (watch / f"{TOP}.cloacina").unlink()
    assert reconciler.reconcile_once().removed == [f"data-pipeline 1.0.0 ({watch / f'{TOP}.cloacina'})"]
    assert runner.get_trigger_schedule("new_data")["enabled"] is False
    assert runner.get_trigger_schedule("inbox_watcher")["enabled"] is True


def test_a_cron_trigger_of_a_package_becomes_a_cron_schedule_of_its_workflow(make_runner: Any, tmp_path: Path) -> None:
    tasks = CLOACA_TASKS.replace('poll_interval="100ms"', 'cron="0 2 * * *", timezone="Europe/Berlin"')
    runner = make_runner(enable_trigger_scheduling=False, cron_poll_interval_seconds=3600)
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / f"{TOP}.cloacina").write_bytes(cloaca_archive(cloaca_sources(tasks=tasks)))
    reconciler = Reconciler.for_runner(runner, [watch])
    assert reconciler.reconcile_once().deployed
    (schedule,) = runner.list_cron_schedules(None, None, None)
    assert (schedule["workflow_name"], schedule["cron_expression"], schedule["timezone"]) == (
        "data_pipeline", "0 2 * * *", "Europe/Berlin",
    )  # fmt: skip
    assert runner.get_trigger_schedule("new_data") is None  # never polled
    (row,) = PackageStore(runner.db).list()
    assert row["manifest"]["triggers"][0]["cron"] == "0 2 * * *"  # the registry's manifest records it

    due = datetime.fromisoformat(schedule["next_run_at"])
    assert runner.cron_scheduler.run_once(due) >= 1  # its run names the workflow; the active package provides it
    (execution,) = runner.get_cron_execution_history(schedule["id"], None, None)
    result = runner.wait_for_run(execution["workflow_execution_id"], timeout=30)
    assert result.status == "Completed" and result.final_context.get("total") == 6
    assert runner.execute("data_pipeline", {}).status == "Completed"  # deployed workflows run by name too

    (watch / f"{TOP}.cloacina").unlink()
    assert reconciler.reconcile_once().removed
    assert runner.get_cron_schedule(schedule["id"])["enabled"] is False


def test_our_format_records_a_cron_trigger_in_its_manifest(tmp_path: Path) -> None:
    code = INGEST_FILES["data_ingest/__init__.py"].format(version="1.0.0", poll="1s")
    code += '\n\n@cloaca.trigger(on="data_ingest", cron="0 3 * * *")\ndef nightly():\n    pass\n'
    manifest = verify_package(build_ingest(tmp_path, extra={"data_ingest/__init__.py": code}))
    nightly = next(t for t in manifest.triggers if t.name == "nightly")
    assert (nightly.cron, nightly.timezone, nightly.workflow) == ("0 3 * * *", "UTC", "data_ingest")
    assert json.loads(manifest.to_json())["triggers"][0].get("cron") is None  # absent for poll triggers


def test_registry_bytes_of_a_cloaca_package_are_validated_again(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/reg.db")
    db.upgrade()
    try:
        store = PackageStore(db)
        validated = read_archive(cloaca_archive())
        store.put(validated)
        assert PackageLoader(store, tmp_path / "a").load(validated.fingerprint).workflows
        tampered = cloaca_archive(with_files({"workflow/data_pipeline/helpers.py": "import os\nos.remove('x')\n"}))
        with db.session() as s:
            s.execute(update(Package).where(Package.fingerprint == validated.fingerprint).values(archive=tampered))
        with pytest.raises(PackageError, match="refusing to load it") as info:
            PackageLoader(store, tmp_path / "b").load(validated.fingerprint)
        assert info.value.reason == "fingerprint_mismatch"
    finally:
        db.dispose()


# -- refused, before any import ------------------------------------------------------------------------------
STATIC_CASES = {
    "bad TOML": ({"package.toml": "[package\nname = 1"}, "invalid_manifest", "not valid TOML"),
    "no [package]": ({"package.toml": "[metadata]\nlanguage = 'python'\n"}, "invalid_manifest", r"missing \[package\]"),
    "no name": ({"package.toml": toml(name="")}, "invalid_manifest", r"\[package\] is missing 'name'"),
    "no version": ({"package.toml": toml(version="")}, "invalid_manifest", "missing 'version'"),
    "no language, two layouts": ({"package.toml": toml(language=""), "Cargo.toml": "", "src/lib.rs": ""},
                                 "invalid_manifest", r"declare it .*\[metadata\] language"),
    "entry_module default missing": ({"package.toml": toml(entry_module="", name='name = "other-name"')},
                                     "missing_entry_module", "workflow/other_name/tasks.py"),
    "wrong interface": ({"package.toml": toml(interface='interface = "other"')}, "invalid_manifest", "interface must"),
    "interface_version 2": ({"package.toml": toml(interface_version="interface_version = 2")}, "invalid_manifest",
                            "interface_version must be 1"),
    "interface_version true": ({"package.toml": toml(interface_version="interface_version = true")},
                               "invalid_manifest", "interface_version must be 1"),
    "wrong extension": ({"package.toml": toml(extension='extension = "zip"')}, "invalid_manifest", "extension must"),
    "unknown metadata key": ({"package.toml": toml(author='author = "x"\nflavour = "x"')}, "invalid_manifest",
                             r"unknown \[metadata\] key\(s\) flavour"),
    "package_type": ({"package.toml": toml(author='package_type = "workflow"')}, "invalid_manifest", "package_type"),
    "metadata.triggers": ({"package.toml": toml() + '[[metadata.triggers]]\nname = "t"\n'}, "invalid_manifest",
                          r"\[\[metadata.triggers\]\] is not accepted"),
    "graph": ({"package.toml": toml(workflow_name='graph_name = "g"')}, "unsupported_package", "computation-graph"),
    "rust": ({"package.toml": toml(language='language = "rust"')}, "unsupported_language", "Rust packages"),
    "language go": ({"package.toml": toml(language='language = "go"')}, "invalid_manifest", "'python' or 'rust'"),
    "bad entry_module": ({"package.toml": toml(entry_module='entry_module = "data-pipeline/tasks"')},
                         "invalid_manifest", "not a dotted module name"),
    "bad requires_python": ({"package.toml": toml(requires_python='requires_python = "newest"')},
                            "invalid_manifest", "not a PEP 440 specifier"),
    "requires_python mismatch": ({"package.toml": toml(requires_python='requires_python = ">=4"')},
                                 "requires_python", "requires Python >=4, this interpreter is 3"),
    "entry module missing": ({"package.toml": toml(entry_module='entry_module = "data_pipeline.nope"')},
                             "missing_entry_module", "workflow/data_pipeline/nope.py"),
    "stdlib in vendor": ({"vendor/json/__init__.py": ""}, "shadows_stdlib", "'json' in vendor would shadow"),
    "stdlib module file in vendor": ({"vendor/subprocess.py": ""}, "shadows_stdlib", "'subprocess' in vendor"),
    "stdlib in workflow": ({"workflow/os.py": ""}, "shadows_stdlib", "'os' in workflow"),
    "cloaca in vendor": ({"vendor/cloaca/__init__.py": ""}, "shadows_stdlib", "cloacina itself"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_malformed_package_toml_archives_are_refused_before_any_import(case: str, tmp_path: Path) -> None:
    changes, reason, match = STATIC_CASES[case]
    files, marker = tripwire(tmp_path)
    files.update(changes)
    data = cloaca_archive(files)
    rejected(data, reason, match)
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "x.cloacina").write_bytes(data)
    db = Database(":memory:")
    db.upgrade()
    report = Reconciler(PackageStore(db), PackageLoader(PackageStore(db), tmp_path / "cache"), [watch]).reconcile_once()
    assert report.rejected[str(watch / "x.cloacina")].startswith(f"{reason}: ") and not report.deployed
    assert PackageStore(db).list() == [] and not marker.exists()  # nothing stored, nothing imported
    db.dispose()


def test_inspect_still_shows_a_package_this_interpreter_cannot_run(tmp_path: Path) -> None:
    old_python = toml(requires_python='requires_python = "<3"')
    (tmp_path / "p.cloacina").write_bytes(cloaca_archive(with_files({"package.toml": old_python})))
    result = CliRunner().invoke(main, ["package", "inspect", str(tmp_path / "p.cloacina")])
    assert result.exit_code == 0 and "requires-python: <3" in result.output
    result = CliRunner().invoke(main, ["package", "validate", str(tmp_path / "p.cloacina"), "--static"])
    assert result.exit_code == 1 and "requires_python" in result.output


UNSAFE_MEMBERS = {
    "path traversal": ({f"{TOP}/workflow/../../evil.py": "x"}, "unsafe_path", "contains '..'"),
    "absolute path": ({"/etc/evil.py": "x"}, "unsafe_path", "absolute path"),
    "duplicate": ({f"./{TOP}/package.toml": toml()}, "duplicate_member", "appears twice"),
    "no workflow dir": ({}, "layout", "Missing workflow source directory"),
    "two top directories": ({"other-1.0/package.toml": toml()}, "missing_manifest", "one top"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_unsafe_archives_are_refused(case: str, tmp_path: Path) -> None:
    extra, reason, match = UNSAFE_MEMBERS[case]
    files, marker = tripwire(tmp_path)
    if case == "no workflow dir":
        files = {"package.toml": files["package.toml"]}
    rejected(cloaca_archive(files, extra=extra), reason, match)
    assert not marker.exists()


@pytest.mark.parametrize(("kind", "what"), [(tarfile.SYMTYPE, "symbolic"), (tarfile.LNKTYPE, "hard")])
def test_links_are_refused(kind: bytes, what: str, tmp_path: Path) -> None:
    files, marker = tripwire(tmp_path)
    data = cloaca_archive(files)
    link = tarfile.TarInfo(f"{TOP}/workflow/data_pipeline/secrets.py")
    link.type, link.linkname = kind, "/etc/passwd"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as out:
        for info, body in [*members, (link, None)]:
            out.addfile(info, io.BytesIO(body) if body is not None else None)
    rejected(buffer.getvalue(), "link", f"is a {what} link to '/etc/passwd'")
    assert not marker.exists()


def test_a_bzip2_bomb_is_stopped_by_the_byte_counter() -> None:
    header = tarfile.TarInfo("x")  # a PAX header is read whole by tarfile: only our counter stops it
    header.type = tarfile.XHDTYPE
    header.size = 100 * 1024 * 1024
    raw = io.BytesIO()
    with bz2.BZ2File(raw, "wb") as out:
        out.write(header.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(100):
            out.write(b"9" * 1024 * 1024)
    assert len(raw.getvalue()) < 64 * 1024
    with pytest.raises(PackageError, match="bzip2 bomb") as info:
        read_archive(raw.getvalue(), ArchiveLimits(total_bytes=1024 * 1024))
    assert info.value.reason == "too_large"


# -- refused after importing in the child process: nothing reaches this process ---------------------------------
def tasks_file(code: str) -> bytes:
    return cloaca_archive(with_files({"workflow/data_pipeline/tasks.py": code}))


LATER = "import cloaca\n\ndef later():\n    @cloaca.task()\n    def t(context):\n        return context\n"
SHADOWED = CLOACA_TASKS.format(workflow="data_pipeline") + (
    "\nwith cloaca.WorkflowBuilder('data_pipeline'):\n"
    "    @cloaca.task()\n    def other(context):\n        return context\n"
)
OLDER_NO_TRIGGER = OLDER_CODE.split("\n\n\n@cloaca.trigger")[0] + "\n"
AFTER_IMPORT = {
    "no task": (tasks_file("import cloaca\n"), "empty_package", "registered no tasks"),
    "tasks behind a function": (tasks_file(LATER), "empty_package", "registered no tasks"),
    "on= names another workflow": (cloaca_archive(cloaca_sources(tasks=CLOACA_TASKS.replace(
        'on="{workflow}"', 'on="elsewhere"'))), "manifest_mismatch", "fires workflow 'elsewhere'"),
    "builder and bare tasks share a name": (tasks_file(SHADOWED), "duplicate_workflow", "declared twice"),
    "older: trigger without an entry": (older_archive(older_manifest(triggers=[])), "manifest_mismatch",
                                        "trigger 'inbox_watcher' is defined in code but has no entry"),
    "older: entry without a trigger": (older_archive(code=OLDER_NO_TRIGGER), "manifest_mismatch",
                                       "lists trigger 'inbox_watcher' but the code defines no such"),
    "older: task not in code": (older_archive(older_manifest(tasks=[{"id": "extract"}, {"id": "load"},
                                                                      {"id": "gone"}])),
                                "manifest_mismatch", "lists task 'gone' but the code defines none"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(AFTER_IMPORT))
def test_packages_whose_code_disagrees_are_refused(case: str, tmp_path: Path) -> None:
    data, reason, match = AFTER_IMPORT[case]
    rejected(data, reason, match)
    before = registry.snapshot()
    with pytest.raises(PackageError) as info:
        PackageLoader(None, tmp_path).load(read_archive(data))
    assert info.value.reason == reason
    assert registry.snapshot()["workflows"] == before["workflows"]
    assert not [m for m in sys.modules if m.startswith(MODULE_PREFIX + read_archive(data).fingerprint[:16])]


def test_older_form_malformed_manifests(tmp_path: Path) -> None:
    rejected(older_archive(older_manifest(format_version="3")), "invalid_manifest", 'cloaca\'s is "2"')
    trig = {"name": "t", "trigger_type": "webhook", "workflow": "data-pipeline", "poll_interval": "5s"}
    rejected(older_archive(older_manifest(triggers=[trig])), "invalid_manifest", "trigger_type 'webhook'")
    rejected(older_archive(older_manifest(tasks=[])), "invalid_manifest", "at least one")
    rejected(older_archive(older_manifest(language="rust")), "unsupported_language", "Rust packages")
    rejected(older_archive(older_manifest(python={"entry_module": "nope"})), "missing_entry_module", "nope.py")
    shadow = older_archive(extra={"./vendor/": None, "./vendor/socket.py": ""})
    rejected(shadow, "shadows_stdlib", "'socket' in vendor")


def test_the_import_limit_is_cloacas_60_seconds(tmp_path: Path) -> None:
    assert IMPORT_TIMEOUT_S == 60
    assert inspect.signature(verify_archive).parameters["timeout_s"].default == 60
    slow = CLOACA_TASKS + "\nimport time\ntime.sleep(120)\n"
    rejected(cloaca_archive(cloaca_sources(tasks=slow)), "import_timeout", "took longer than 8s", timeout_s=8)
