"""CLOACA_API §15: the one ``package.toml`` resolver (defaults, closed ``[metadata]``, language from the layout)."""

from __future__ import annotations

import pytest

from cloacina.packaging.cloaca_manifest import ResolvedPackageToml, resolve_package_toml
from cloacina.packaging.members import PackageError

PY_LAYOUT = ["workflow/file_inbox/__init__.py", "workflow/file_inbox/tasks.py"]
RUST_LAYOUT = ["Cargo.toml", "src/lib.rs"]
MINIMAL = """\
[package]
name = "file-inbox"
version = "0.1.0"

[metadata]
workflow_name = "file_inbox"
description = "Watch an inbox"
"""


def resolve(text: str, files: list[str] = PY_LAYOUT, directories: tuple[str, ...] = ()) -> ResolvedPackageToml:
    return resolve_package_toml(text.encode(), files, directories)


def refused(text: str, match: str, files: list[str] = PY_LAYOUT, reason: str = "invalid_manifest") -> None:
    with pytest.raises(PackageError, match=match) as info:
        resolve(text, files)
    assert info.value.reason == reason and info.value.member == "package.toml"


def test_a_minimal_manifest_gets_cloacas_defaults() -> None:
    resolved = resolve(MINIMAL)
    assert resolved == ResolvedPackageToml(
        name="file-inbox",
        version="0.1.0",
        interface="cloacina-workflow-plugin",
        interface_version=1,
        extension="cloacina",
        language="python",
        language_inferred=True,
        workflow_name="file_inbox",
        entry_module="file_inbox.tasks",
        requires_python=None,
        description="Watch an inbox",
        author=None,
    )


def test_only_name_and_version_are_required() -> None:
    resolved = resolve('[package]\nname = "solo"\nversion = "2"\n')
    assert (resolved.workflow_name, resolved.entry_module, resolved.description) == ("solo", "solo.tasks", "")
    refused('[package]\nversion = "2"\n', r"\[package\] is missing 'name'")
    refused('[package]\nname = "solo"\n', r"\[package\] is missing 'version'")
    refused('[metadata]\nworkflow_name = "w"\n', r"missing \[package\] table")


def test_entry_module_default_replaces_every_hyphen() -> None:
    resolved = resolve('[package]\nname = "my-data-pipeline"\nversion = "1"\n')
    assert resolved.entry_module == "my_data_pipeline.tasks"


def test_explicit_values_win_and_are_still_checked() -> None:
    explicit = MINIMAL.replace('version = "0.1.0"\n', 'version = "0.1.0"\ninterface = "cloacina-workflow-plugin"\n'
                               'interface_version = 1\nextension = "cloacina"\n')  # fmt: skip
    explicit += 'language = "python"\nentry_module = "inbox.main"\nrequires_python = ">=3.10"\nauthor = "me"\n'
    resolved = resolve(explicit)
    assert (resolved.language, resolved.language_inferred, resolved.entry_module) == ("python", False, "inbox.main")
    assert (resolved.requires_python, resolved.author) == (">=3.10", "me")
    package = MINIMAL.split("[metadata]")[0]
    refused(package + 'interface = "other"\n', r"interface must be 'cloacina-workflow-plugin', got 'other'")
    refused(package + "interface_version = 2\n", "interface_version must be 1, got 2")
    refused(package + "interface_version = true\n", "interface_version must be 1, got True")
    refused(package + 'extension = "zip"\n', "extension must be 'cloacina'")
    refused(MINIMAL + 'entry_module = "file-inbox/tasks"\n', "not a dotted module name")
    refused(MINIMAL + 'requires_python = "newest"\n', "not a PEP 440 specifier")
    refused(MINIMAL + 'language = "go"\n', "language must be 'python' or 'rust'")


def test_a_declared_language_needs_no_layout() -> None:
    assert resolve(MINIMAL + 'language = "python"\n', files=[]).language == "python"
    rust = resolve(MINIMAL + 'language = "rust"\n', files=PY_LAYOUT)
    assert (rust.language, rust.language_inferred, rust.entry_module) == ("rust", False, None)


def test_language_is_inferred_from_the_layout() -> None:
    assert resolve(MINIMAL, files=[], directories=("workflow",)).language == "python"  # an empty workflow/ dir
    rust = resolve(MINIMAL, files=RUST_LAYOUT)
    assert (rust.language, rust.language_inferred, rust.entry_module) == ("rust", True, None)


@pytest.mark.parametrize(
    ("files", "layout"),
    [
        ([*PY_LAYOUT, *RUST_LAYOUT], "both a workflow/ directory"),
        ([], "neither a workflow/ directory"),
        (["Cargo.toml"], "neither"),  # Cargo.toml alone is not a Rust package
        (["src/lib.rs", "tasks.py"], "neither"),
    ],
)
def test_both_or_neither_layout_asks_to_declare_the_language(files: list[str], layout: str) -> None:
    refused(MINIMAL, rf"cannot infer the package's language: it has {layout}.*declare it.*\[metadata\] language", files)


@pytest.mark.parametrize(
    ("extra", "match", "reason"),
    [
        ('flavour = "x"\n', r"unknown \[metadata\] key\(s\) flavour; allowed: author, description", "invalid_manifest"),
        ('package_type = "workflow"\n', "package_type is not accepted", "invalid_manifest"),
        ('[[metadata.triggers]]\nname = "t"\n', r"\[\[metadata.triggers\]\] is not accepted", "invalid_manifest"),
        ('graph_name = "g"\n', "computation-graph packages", "unsupported_package"),
        ("workflow_name_ = 1\n", r"unknown \[metadata\] key\(s\) workflow_name_", "invalid_manifest"),
    ],
)
def test_metadata_is_closed(extra: str, match: str, reason: str) -> None:
    refused(MINIMAL + extra, match, reason=reason)


def test_metadata_values_must_be_strings_and_the_toml_valid() -> None:
    refused(MINIMAL.replace('"file_inbox"', "3"), "workflow_name must be a non-empty string, got 3")
    refused('metadata = 3\n[package]\nname = "x"\nversion = "1"\n', r"\[metadata\] must be a table, got 3")
    refused('[package]\nname = "x"\nversion = "1"\n[metadata]\nentry_module = 7\n', "entry_module must be")
    refused("[package\n", "not valid TOML")
    refused(MINIMAL.replace('name = "file-inbox"', "name = 5"), "name must be a non-empty string")
