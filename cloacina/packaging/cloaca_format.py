"""Cloaca's package archives, read into our canonical :class:`~cloacina.packaging.manifest.Manifest`.

Two forms are recognised (next to ours, a gzip tar with our ``manifest.json``):

- **cloaca** (today's): a bzip2 tar with one top directory ``<name>-<version>/`` holding ``package.toml``, the
  module tree under ``workflow/`` and optional vendored libraries under ``vendor/``. ``package.toml`` is resolved
  by cloaca's rules in :mod:`~cloacina.packaging.cloaca_manifest` (only ``[package] name, version`` are required;
  defaults, a closed ``[metadata]``, the language inferred from the layout, ``entry_module`` defaulting to
  ``<name>.tasks``). A Rust package (``language = "rust"``, declared or inferred) is refused here. The loader
  imports ``entry_module`` inside a workflow context named ``workflow_name`` (default: the package name), so bare
  ``@cloaca.task`` decorators form that workflow; ``@cloaca.trigger`` definitions bind to their ``on=`` workflow
  (a poll trigger without one fires the package's workflow).
- **cloaca-manifest** (older): a tar whose root holds cloaca's ``manifest.json`` (``"format_version": "2"``),
  the module tree and optional ``vendor/``. Its ``tasks`` must match the code's task ids; every
  ``@cloaca.trigger`` must have a ``triggers`` entry of the same name, which binds its workflow (the entry may
  name the package instead of a workflow when the package has one workflow), poll interval and concurrency.

Static checks come first (:func:`read_cloaca_archive`; nothing is imported): the manifest's schema, the
layout, the entry module's presence, and that no module under ``workflow/``, ``vendor/`` (or the older form's
root) shadows the standard library or cloacina. After discovery, :mod:`~cloacina.packaging.cloaca_binding` checks
what the import registered. The fingerprint counts every file of the package, tagged with its form.

>>> layout = read_cloaca_archive({"p-1/package.toml": TOML_EXAMPLE, "p-1/workflow/p.py": b""}, set())
>>> layout.manifest.source_format, layout.manifest.origin.workflow_name, sorted(layout.files)
('cloaca', 'p_flow', ['package.toml', 'workflow/p.py'])
"""

from __future__ import annotations

import platform
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import ValidationError

from cloacina.packaging.cloaca_manifest import (
    INTERFACE,
    PACKAGE_TOML,
    check_entry_module_name,
    check_requirement,
    invalid,
    resolve_package_toml,
    text_field,
)
from cloacina.packaging.manifest import MANIFEST_NAME, Manifest
from cloacina.packaging.members import (
    PackageError,
    check_conflicts,
    check_entry_module,
    check_shadowing,
    compute_fingerprint,
    subtree,
)

__all__ = [
    "INTERFACE",
    "PACKAGE_TOML",
    "TOML_EXAMPLE",
    "CloacaLayout",
    "check_python_version",
    "find_package_toml",
    "is_cloaca_manifest",
    "read_cloaca_archive",
]

_DOMAIN = {"cloaca": b"cloaca package.toml\x00", "cloaca-manifest": b"cloaca manifest.json\x00"}
TOML_EXAMPLE = b"""[package]
name = "p"
version = "1"

[metadata]
workflow_name = "p_flow"
entry_module = "p"
"""


@dataclass(frozen=True)
class CloacaLayout:
    """A statically valid cloaca package: its derived manifest, and its files relative to the package root."""

    manifest: Manifest
    files: dict[str, bytes]
    directories: frozenset[str]


def is_cloaca_manifest(document: Mapping[str, Any]) -> bool:
    """Whether a root ``manifest.json`` is cloaca's older one (its ``format_version`` is a string, ``"2"``)."""
    return isinstance(document.get("format_version"), str)


def find_package_toml(files: Mapping[str, bytes], directories: Collection[str]) -> str | None:
    """The package root (``""`` or the one top directory) holding ``package.toml``, or ``None``."""
    if PACKAGE_TOML in files:
        return ""
    tops = {p.split("/", 1)[0] for p in [*files, *directories]}
    if len(tops) == 1:
        (top,) = tops
        if f"{top}/{PACKAGE_TOML}" in files and top not in files:
            return top
    return None


def check_python_version(requires: str | None, member: str = PACKAGE_TOML, running: str | None = None) -> None:
    """``PackageError`` (reason ``requires_python``) unless the running interpreter satisfies ``requires``."""
    if requires is None:
        return
    version = running or platform.python_version()
    try:
        accepted = SpecifierSet(requires).contains(version, prereleases=True)
    except InvalidSpecifier:
        raise invalid(f"requires_python {requires!r} is not a PEP 440 specifier", member) from None
    if not accepted:
        raise PackageError(
            f"the package requires Python {requires}, this interpreter is {version}",
            reason="requires_python",
            member=member,
        )


def _language(value: object, member: str) -> None:
    if value == "rust":
        raise PackageError(
            f"{member}: Rust packages are not supported: cloacina loads Python packages only (language = 'python')",
            reason="unsupported_language",
            member=member,
        )
    if value != "python":
        raise invalid(f"language must be 'python' or 'rust', got {value!r}", member)


def _manifest(document: dict[str, Any], member: str) -> Manifest:
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise invalid(f"cannot be read as a package description: {problems}", member) from None


def _read_package_toml(files: dict[str, bytes], dirs: set[str], top: str) -> CloacaLayout:
    if top:
        stray = sorted(p for p in files if "/" not in p)
        if stray:
            raise PackageError(f"member {stray[0]!r} lies outside the top directory {top!r}", reason="layout")
        files = {path[len(top) + 1 :]: data for path, data in files.items()}
        dirs = set(subtree(dirs, top))
    resolved = resolve_package_toml(files[PACKAGE_TOML], files, dirs)
    if resolved.language_inferred and resolved.language == "rust":
        raise PackageError(
            f"{PACKAGE_TOML}: Rust packages are not supported: this one has Cargo.toml and src/lib.rs (so its "
            "language is 'rust'); cloacina loads Python packages only, with their modules under workflow/",
            reason="unsupported_language",
            member=PACKAGE_TOML,
        )
    _language(resolved.language, PACKAGE_TOML)
    entry = check_entry_module_name(resolved.entry_module, PACKAGE_TOML)
    check_conflicts(files, dirs)
    if "workflow" not in dirs and not any(p.startswith("workflow/") for p in files):
        raise PackageError(
            "Missing workflow source directory: a cloaca package keeps its modules under workflow/",
            reason="layout",
            member="workflow",
        )
    paths = ["workflow"]
    if "vendor" in dirs or any(p.startswith("vendor/") for p in files):
        paths.append("vendor")
    for where in paths:
        check_shadowing([*subtree(files, where), *(d + "/" for d in subtree(dirs, where))], where)
    check_entry_module(files, entry, "workflow")
    manifest = _manifest(
        {
            "package": {
                "name": resolved.name,
                "version": resolved.version,
                "description": resolved.description,
                "fingerprint": compute_fingerprint(files, domain=_DOMAIN["cloaca"], skip=None),
            },
            "python": {"requires_python": resolved.requires_python, "entry_module": entry},
            "origin": {
                "format": "cloaca",
                "workflow_name": resolved.workflow_name,
                "import_paths": paths,
                "author": resolved.author,
            },
        },
        PACKAGE_TOML,
    )
    return CloacaLayout(manifest, files, frozenset(dirs))


def _older_triggers(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("triggers") or []
    if not isinstance(entries, list):
        raise invalid("'triggers' must be a list", MANIFEST_NAME)
    triggers = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise invalid(f"a triggers entry must be an object, got {entry!r}", MANIFEST_NAME)
        name = text_field(entry, "name", "a triggers entry", MANIFEST_NAME, required=True)
        kind = entry.get("trigger_type", "python")
        if kind != "python":
            raise invalid(f"trigger {name!r}: trigger_type {kind!r} is not supported (only 'python')", MANIFEST_NAME)
        config = entry.get("config")
        triggers.append(
            {
                "name": name,
                "workflow": text_field(entry, "workflow", f"trigger {name!r}", MANIFEST_NAME, required=True),
                "poll_interval": entry.get("poll_interval", "5s"),
                "allow_concurrent": entry.get("allow_concurrent", False),
                "config": {} if config is None else config,
            }
        )
    return triggers


def _read_older_manifest(document: dict[str, Any], files: dict[str, bytes], dirs: set[str]) -> CloacaLayout:
    member = MANIFEST_NAME
    if document["format_version"] != "2":
        raise invalid(f'format_version {document["format_version"]!r} is not supported (cloaca\'s is "2")', member)
    package, python = document.get("package"), document.get("python")
    if not isinstance(package, dict):
        raise invalid("missing 'package' object (name, version)", member)
    _language(document.get("language"), member)
    if not isinstance(python, dict):
        raise invalid("missing 'python' object (entry_module)", member)
    entry = check_entry_module_name(text_field(python, "entry_module", "python", member), member)
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise invalid("'tasks' must list the package's tasks (at least one)", member)
    ids = [text_field(t, "id", "a tasks entry", member, required=True) if isinstance(t, dict) else None for t in tasks]
    if None in ids:
        raise invalid("every tasks entry must be an object with an 'id'", member)
    check_conflicts(files, dirs)
    paths = ["."] + (["vendor"] if "vendor" in dirs or any(p.startswith("vendor/") for p in files) else [])
    check_shadowing([p for p in [*files, *(d + "/" for d in dirs)] if p != MANIFEST_NAME])
    if "vendor" in paths:
        check_shadowing([*subtree(files, "vendor"), *(d + "/" for d in subtree(dirs, "vendor"))], "vendor")
    check_entry_module(files, entry)
    name = text_field(package, "name", "package", member, required=True)
    manifest = _manifest(
        {
            "package": {
                "name": name,
                "version": text_field(package, "version", "package", member, required=True),
                "description": text_field(package, "description", "package", member) or "",
                "fingerprint": compute_fingerprint(files, domain=_DOMAIN["cloaca-manifest"], skip=None),
            },
            "python": {
                "requires_python": check_requirement(text_field(python, "requires_python", "python", member), member),
                "entry_module": entry,
            },
            "triggers": _older_triggers(document),
            "origin": {
                "format": "cloaca-manifest",
                "workflow_name": name,
                "import_paths": paths,
                "declared_tasks": ids,
            },
        },
        member,
    )
    return CloacaLayout(manifest, files, frozenset(dirs))


def read_cloaca_archive(
    files: dict[str, bytes], dirs: set[str], document: dict[str, Any] | None = None
) -> CloacaLayout:
    """Statically validate a cloaca package from its members (``document``: a parsed older ``manifest.json``)."""
    if document is not None:
        return _read_older_manifest(document, files, dirs)
    top = find_package_toml(files, dirs)
    if top is None:
        raise PackageError(
            "manifest.json is missing from the archive root (cloacina), and there is no package.toml in one top "
            "directory <name>-<version>/ (cloaca)",
            reason="missing_manifest",
        )
    return _read_package_toml(files, dirs, top)
