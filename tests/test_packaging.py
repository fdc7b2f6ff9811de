"""Packages, the good path: tutorial 08's ``data_ingest`` builds, validates and inspects; builds are reproducible;
the manifest schema; pyproject reading and trigger-to-workflow binding.

Every import of package code happens in a child process: the test process never imports ``data_ingest``.
Malicious and malformed archives are in ``test_packaging_validation.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
import textwrap
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from cloacina.cli.package import package
from cloacina.packaging.archive import (
    PackageError,
    compute_fingerprint,
    extract_archive,
    package_fingerprint,
    read_archive,
)
from cloacina.packaging.builder import build_package, read_pyproject
from cloacina.packaging.manifest import Manifest, manifest_json_schema
from cloacina.packaging.verify import verify_package

pytestmark = pytest.mark.timeout(120)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "packages" / "data_ingest"


@pytest.fixture(scope="module")
def data_ingest_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(EXAMPLE, tmp_path_factory.mktemp("dist"))


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


PYPROJECT = """\
[project]
name = "two-flows"
version = "0.1.0"

[tool.cloaca]
entry_module = "two_flows"
"""

TWO_WORKFLOWS = """\
import cloaca

for name in ("alpha", "beta"):
    with cloaca.WorkflowBuilder(name) as builder:
        @cloaca.task(id="step")
        def step(context):
            return context

@cloaca.trigger(name="unbound", poll_interval="1s")
def unbound():
    return cloaca.TriggerResult.skip()
"""


# -- tutorial 08 ------------------------------------------------------------------------------------------
def test_data_ingest_builds_validates_and_inspects_through_the_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(package, ["build", str(EXAMPLE), "-o", str(tmp_path)])
    assert built.exit_code == 0, built.output
    archive = tmp_path / "data-ingest-1.0.0.cloacina"
    assert archive.is_file() and str(archive) in built.output

    validated = runner.invoke(package, ["validate", str(archive)])
    assert validated.exit_code == 0, validated.output
    assert "valid: data-ingest 1.0.0" in validated.output
    assert "inbox_watcher -> data_ingest" in validated.output

    shown = runner.invoke(package, ["inspect", str(archive), "--json"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    manifest = document["manifest"]
    assert manifest["format_version"] == 1 and manifest["language"] == "python"
    assert manifest["package"]["name"] == "data-ingest" and manifest["package"]["version"] == "1.0.0"
    assert manifest["python"] == {"requires_python": ">=3.10", "entry_module": "data_ingest"}
    assert [(t["workflow"], t["id"], t["dependencies"]) for t in manifest["tasks"]] == [
        ("data_ingest", "validate", []),
        ("data_ingest", "load", ["validate"]),
    ]
    assert manifest["tasks"][0]["function"] == "data_ingest:validate"
    assert manifest["tasks"][0]["description"] == "Validate the incoming data file."
    assert manifest["triggers"] == [
        {
            "name": "inbox_watcher",
            "trigger_type": "python",
            "workflow": "data_ingest",  # declared without workflow=: bound to the package's only workflow
            "poll_interval": "5s",
            "allow_concurrent": False,
            "config": {},
        }
    ]
    assert [f["path"] for f in document["files"]] == ["data_ingest/__init__.py", "pyproject.toml"]

    text = runner.invoke(package, ["inspect", str(archive)])
    assert text.exit_code == 0 and "data_ingest.load <- validate" in text.output
    assert "data_ingest" not in sys.modules and "cloaca" not in sys.modules


def test_validation_never_imports_package_code_in_this_process(data_ingest_archive: Path) -> None:
    manifest = verify_package(data_ingest_archive)
    assert manifest.triggers[0].name == "inbox_watcher"
    assert "data_ingest" not in sys.modules


def test_archive_layout_and_metadata_are_fixed(data_ingest_archive: Path) -> None:
    with tarfile.open(data_ingest_archive, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["manifest.json", "data_ingest/__init__.py", "pyproject.toml"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(315532800, 0, 0, "", "", 0o644)}
    assert all(m.isreg() for m in members)


def test_building_twice_gives_identical_bytes_and_fingerprint(tmp_path: Path) -> None:
    first = build_package(EXAMPLE, tmp_path / "one")
    copy = shutil.copytree(EXAMPLE, tmp_path / "copy")  # other path, other mtimes, plus junk that is excluded
    os.utime(copy / "pyproject.toml", (1, 1))
    (copy / "data_ingest" / "__pycache__").mkdir()
    (copy / "data_ingest" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (copy / "dist").mkdir()
    (copy / "dist" / "old.cloacina").write_bytes(b"junk")
    second = build_package(copy, tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    assert read_archive(first).fingerprint == read_archive(second).fingerprint


def test_fingerprint_is_sha256_over_sorted_sources_and_the_manifest(data_ingest_archive: Path) -> None:
    import hashlib
    import json

    validated = read_archive(data_ingest_archive)
    document = json.loads(validated.manifest_bytes)
    del document["package"]["fingerprint"]
    members = {**validated.files, "manifest.json": json.dumps(document, sort_keys=True, separators=(",", ":")).encode()}
    digest = hashlib.sha256(b"cloacina package: sources and manifest\n")
    for path in sorted(members):
        data = members[path]
        digest.update(path.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert validated.fingerprint == digest.hexdigest() == package_fingerprint(validated.files, validated.manifest)
    assert package_fingerprint({**validated.files, "extra.txt": b""}, validated.manifest) != validated.fingerprint
    renamed = json.loads(validated.manifest_bytes)
    renamed["triggers"][0]["name"] = "renamed"
    assert package_fingerprint(validated.files, renamed) != validated.fingerprint
    assert compute_fingerprint(validated.files) != validated.fingerprint  # the older, sources-only form


def test_extract_writes_exactly_the_validated_members(data_ingest_archive: Path, tmp_path: Path) -> None:
    validated = read_archive(data_ingest_archive.read_bytes())
    root = extract_archive(validated, tmp_path / "x")
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == ["data_ingest/__init__.py", "manifest.json", "pyproject.toml"]
    assert (root / "data_ingest" / "__init__.py").read_bytes() == (EXAMPLE / "data_ingest" / "__init__.py").read_bytes()
    with pytest.raises(FileExistsError):  # never overwrites
        extract_archive(validated, root)


# -- manifest schema --------------------------------------------------------------------------------------
def test_schema_command_prints_a_json_schema_that_accepts_real_manifests(data_ingest_archive: Path) -> None:
    result = CliRunner().invoke(package, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema == manifest_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(read_archive(data_ingest_archive).manifest_bytes)
    validator.validate(good)
    assert not validator.is_valid({**good, "surprise": 1})
    assert not validator.is_valid({**good, "language": "rust"})
    assert set(schema["properties"]) == {
        "format_version", "package", "language", "python", "tasks", "triggers", "origin",
    }  # fmt: skip
    assert "origin" not in good  # written only for manifests derived from cloaca archives


def _manifest_dict(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "format_version": 1,
        "package": {"name": "p", "version": "1", "fingerprint": "a" * 64},
        "language": "python",
        "python": {"entry_module": "p"},
        "tasks": [{"id": "t", "workflow": "w", "function": "p:t"}],
        "triggers": [{"name": "tr", "workflow": "w", "poll_interval": "100ms"}],
    }
    document.update(overrides)
    return document


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"format_version": 2}, "format_version"),
        ({"language": "rust"}, "language"),
        ({"extra": True}, "extra"),
        ({"python": {"entry_module": "../evil"}}, "entry_module"),
        ({"triggers": [{"name": "tr", "workflow": "w", "poll_interval": "5 minutes"}]}, "poll_interval"),
        ({"triggers": [{"name": "bad name", "workflow": "w"}]}, "trigger name"),
        ({"triggers": [{"name": "tr", "workflow": "w", "trigger_type": "rust"}]}, "trigger_type"),
        ({"tasks": [{"id": "t", "workflow": "w", "function": "p:t", "dependencies": ["nope"]}]}, "nope"),
        ({"package": {"name": "p", "version": "1", "fingerprint": "xyz"}}, "fingerprint"),
    ],
)
def test_manifest_model_rejects(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Manifest.model_validate(_manifest_dict(**overrides))


def test_manifest_model_round_trips() -> None:
    manifest = Manifest.model_validate(_manifest_dict())
    assert Manifest.model_validate_json(manifest.to_json()) == manifest
    assert manifest.triggers[0].poll_interval_ms == 100 and manifest.workflow_names == ["w"]


# -- pyproject and binding ----------------------------------------------------------------------------------
def test_trigger_without_workflow_in_a_two_workflow_package_is_a_build_error(tmp_path: Path) -> None:
    src = write_package(tmp_path / "src", {"pyproject.toml": PYPROJECT, "two_flows/__init__.py": TWO_WORKFLOWS})
    with pytest.raises(PackageError, match=r"trigger 'unbound' has no workflow .*alpha, beta") as info:
        build_package(src, tmp_path / "out")
    assert info.value.reason == "binding"
    result = CliRunner().invoke(package, ["build", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "unbound" in result.output
    assert not (tmp_path / "out").exists()


def test_pyproject_binds_a_trigger_and_gives_its_config(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace("[tool.cloaca]", "[tool.cloacina]") + textwrap.dedent("""
        [tool.cloacina.triggers.unbound]
        workflow = "beta"

        [tool.cloacina.triggers.unbound.config]
        path = "/data/inbox/"
        """)
    src = write_package(tmp_path / "src", {"pyproject.toml": pyproject, "two_flows/__init__.py": TWO_WORKFLOWS})
    manifest = verify_package(build_package(src, tmp_path / "out"))
    assert [(t.name, t.workflow, t.config) for t in manifest.triggers] == [
        ("unbound", "beta", {"path": "/data/inbox/"})
    ]
    assert manifest.workflow_names == ["alpha", "beta"]


def test_code_and_pyproject_disagreeing_on_a_workflow_is_a_build_error(tmp_path: Path) -> None:
    code = TWO_WORKFLOWS.replace('name="unbound",', 'name="unbound", workflow="alpha",')
    pyproject = PYPROJECT + '\n[tool.cloaca.triggers.unbound]\nworkflow = "beta"\n'
    src = write_package(tmp_path / "src", {"pyproject.toml": pyproject, "two_flows/__init__.py": code})
    with pytest.raises(
        PackageError, match=re.escape("trigger 'unbound': code says workflow 'alpha', pyproject.toml says 'beta'")
    ):
        build_package(src, tmp_path / "out")


def test_pyproject_configuring_an_unknown_trigger_is_a_build_error(tmp_path: Path) -> None:
    code = TWO_WORKFLOWS.replace('name="unbound",', 'name="unbound", workflow="alpha",')
    pyproject = PYPROJECT + '\n[tool.cloaca.triggers.inbox]\nconfig = {path = "/x"}\n'
    src = write_package(tmp_path / "src", {"pyproject.toml": pyproject, "two_flows/__init__.py": code})
    with pytest.raises(PackageError, match="'inbox' that the code does not define"):
        build_package(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("pyproject", "needle"),
    [
        (None, "no pyproject.toml"),
        ("[project\n", "not valid TOML"),
        ('[project]\nversion = "1"\n[tool.cloaca]\nentry_module = "m"\n', r"missing \[project\] name"),
        ('[project]\nname = "m"\ndynamic = ["version"]\n[tool.cloaca]\nentry_module = "m"\n', "dynamic versions"),
        ('[project]\nname = "m"\nversion = "1"\n', r"missing \[tool.cloaca\]"),
        ('[project]\nname = "m"\nversion = "1"\n[tool.cloaca]\n', "entry_module"),
        ('[project]\nname = "m"\nversion = "1"\n[tool.cloaca]\nentry_module = "m"\n[tool.cloacina]\n', "keep one"),
    ],
)
def test_pyproject_errors_are_clear(tmp_path: Path, pyproject: str | None, needle: str) -> None:
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    with pytest.raises(PackageError, match=needle) as info:
        read_pyproject(tmp_path)
    assert info.value.reason == "pyproject"


def test_source_symlinks_are_refused_at_build(tmp_path: Path) -> None:
    src = shutil.copytree(EXAMPLE, tmp_path / "src")
    (src / "data_ingest" / "secrets.txt").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match=re.escape("secrets.txt' is a symbolic link")):
        build_package(src, tmp_path / "out")


def test_a_stdlib_shadowing_source_tree_is_refused_before_any_import(tmp_path: Path) -> None:
    src = shutil.copytree(EXAMPLE, tmp_path / "src")
    (src / "json").mkdir()
    (src / "json" / "__init__.py").write_text("raise SystemExit('imported!')\n")
    with pytest.raises(PackageError, match="top-level module 'json' would shadow") as info:
        build_package(src, tmp_path / "out")
    assert info.value.reason == "shadows_stdlib"
