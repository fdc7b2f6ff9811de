"""Cloaca's package archives, read into our canonical :class:`~cloacina.packaging.manifest.Manifest`.

Two forms are recognised (next to ours, a gzip tar with our ``manifest.json``):

- **cloaca** (today's): a bzip2 tar with one top directory ``<name>-<version>/`` holding ``package.toml``, the
  module tree under ``workflow/`` and optional vendored libraries under ``vendor/``. ``[package]`` needs
  ``name``, ``version``, ``interface = "cloacina-workflow-plugin"``, ``interface_version = 1`` and
  ``extension = "cloacina"``; ``[metadata]`` is closed: ``language`` (``"python"``; ``"rust"`` is refused here),
  ``workflow_name``, ``entry_module`` (dotted, relative to ``workflow/``), ``requires_python`` (PEP 440),
  ``description``, ``author``. ``package_type``, ``[[metadata.triggers]]``, computation-graph keys and unknown
  keys are refused. The loader imports ``entry_module`` inside a workflow context named ``workflow_name``
  (default: the package name), so bare ``@cloaca.task`` decorators form that workflow; ``@cloaca.trigger``
  definitions bind to their ``on=`` workflow (a poll trigger without one fires the package's workflow).
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
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import ValidationError

from cloacina.packaging.manifest import MANIFEST_NAME, Manifest
from cloacina.packaging.members import (
    PackageError,
    check_conflicts,
    check_entry_module,
    check_shadowing,
    compute_fingerprint,
    subtree,
)

PACKAGE_TOML: Final = "package.toml"
INTERFACE: Final = "cloacina-workflow-plugin"
_PACKAGE_KEYS = ("name", "version", "interface", "interface_version", "extension")
_METADATA_KEYS = frozenset({"language", "workflow_name", "entry_module", "requires_python", "description", "author"})
_GRAPH_KEYS = frozenset({"graph_name", "reaction_mode", "input_strategy", "accumulators"})
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DOMAIN = {"cloaca": b"cloaca package.toml\x00", "cloaca-manifest": b"cloaca manifest.json\x00"}
TOML_EXAMPLE = b"""[package]
name = "p"
version = "1"
interface = "cloacina-workflow-plugin"
interface_version = 1
extension = "cloacina"

[metadata]
language = "python"
workflow_name = "p_flow"
entry_module = "p"
"""


@dataclass(frozen=True)
class CloacaLayout:
    """A statically valid cloaca package: its derived manifest, and its files relative to the package root."""

    manifest: Manifest
    files: dict[str, bytes]
    directories: frozenset[str]


def _invalid(message: str, member: str = PACKAGE_TOML, reason: str = "invalid_manifest") -> PackageError:
    return PackageError(f"{member}: {message}", reason=reason, member=member)


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
        raise _invalid(f"requires_python {requires!r} is not a PEP 440 specifier", member) from None
    if not accepted:
        raise PackageError(
            f"the package requires Python {requires}, this interpreter is {version}",
            reason="requires_python",
            member=member,
        )


def _text(table: Mapping[str, Any], key: str, where: str, member: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise _invalid(f"{where} is missing {key!r}", member)
        return None
    if not isinstance(value, str) or (required and not value):
        raise _invalid(f"{where} {key} must be a non-empty string, got {value!r}", member)
    return value


def _check_entry(value: str | None, member: str) -> str:
    if value is None:
        raise _invalid("a Python package needs [metadata] entry_module (dotted, relative to workflow/)", member)
    if not _DOTTED.match(value):
        raise _invalid(f"entry_module {value!r} is not a dotted module name like 'pkg.tasks'", member)
    return value


def _check_requirement(value: str | None, member: str) -> str | None:
    if value is not None:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise _invalid(f"requires_python {value!r} is not a PEP 440 specifier", member) from None
    return value


def _language(value: object, member: str) -> None:
    if value == "rust":
        raise PackageError(
            f"{member}: Rust packages are not supported: cloacina loads Python packages only (language = 'python')",
            reason="unsupported_language",
            member=member,
        )
    if value != "python":
        raise _invalid(f"language must be 'python' or 'rust', got {value!r}", member)


def _parse_package_toml(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _invalid(f"not valid TOML: {exc}") from None
    package, metadata = document.get("package"), document.get("metadata")
    if not isinstance(package, dict):
        raise _invalid("missing [package] table (name, version, interface, interface_version, extension)")
    for key in _PACKAGE_KEYS:
        if key not in package:
            raise _invalid(f"[package] is missing {key!r}")
    if package["interface"] != INTERFACE:
        raise _invalid(f"[package] interface must be {INTERFACE!r}, got {package['interface']!r}")
    version = package["interface_version"]
    if type(version) is not int or version != 1:
        raise _invalid(f"[package] interface_version must be 1, got {version!r}")
    if package["extension"] != "cloacina":
        raise _invalid(f"[package] extension must be 'cloacina', got {package['extension']!r}")
    if not isinstance(metadata, dict):
        raise _invalid("missing [metadata] table (language is required)")
    if "package_type" in metadata:
        raise _invalid("[metadata] package_type is not accepted (cloaca's [metadata] is a closed schema)")
    if "triggers" in metadata:
        raise _invalid("[[metadata.triggers]] is not accepted: declare triggers in code with @cloaca.trigger")
    graph = sorted(_GRAPH_KEYS & set(metadata))
    if graph:
        raise PackageError(
            f"{PACKAGE_TOML}: computation-graph packages ({', '.join(graph)}) are not supported",
            reason="unsupported_package",
            member=PACKAGE_TOML,
        )
    unknown = sorted(set(metadata) - _METADATA_KEYS)
    if unknown:
        raise _invalid(f"unknown [metadata] key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_METADATA_KEYS))}")
    if "language" not in metadata:
        raise _invalid("[metadata] is missing 'language'")
    _language(metadata["language"], PACKAGE_TOML)
    return package, metadata


def _manifest(document: dict[str, Any], member: str) -> Manifest:
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise _invalid(f"cannot be read as a package description: {problems}", member) from None


def _read_package_toml(files: dict[str, bytes], dirs: set[str], top: str) -> CloacaLayout:
    if top:
        stray = sorted(p for p in files if "/" not in p)
        if stray:
            raise PackageError(f"member {stray[0]!r} lies outside the top directory {top!r}", reason="layout")
        files = {path[len(top) + 1 :]: data for path, data in files.items()}
        dirs = set(subtree(dirs, top))
    package, metadata = _parse_package_toml(files[PACKAGE_TOML])
    name = _text(package, "name", "[package]", PACKAGE_TOML, required=True)
    version = _text(package, "version", "[package]", PACKAGE_TOML, required=True)
    entry = _check_entry(_text(metadata, "entry_module", "[metadata]", PACKAGE_TOML), PACKAGE_TOML)
    requires = _check_requirement(_text(metadata, "requires_python", "[metadata]", PACKAGE_TOML), PACKAGE_TOML)
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
                "name": name,
                "version": version,
                "description": _text(metadata, "description", "[metadata]", PACKAGE_TOML) or "",
                "fingerprint": compute_fingerprint(files, domain=_DOMAIN["cloaca"], skip=None),
            },
            "python": {"requires_python": requires, "entry_module": entry},
            "origin": {
                "format": "cloaca",
                "workflow_name": _text(metadata, "workflow_name", "[metadata]", PACKAGE_TOML) or name,
                "import_paths": paths,
                "author": _text(metadata, "author", "[metadata]", PACKAGE_TOML),
            },
        },
        PACKAGE_TOML,
    )
    return CloacaLayout(manifest, files, frozenset(dirs))


def _older_triggers(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = document.get("triggers") or []
    if not isinstance(entries, list):
        raise _invalid("'triggers' must be a list", MANIFEST_NAME)
    triggers = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _invalid(f"a triggers entry must be an object, got {entry!r}", MANIFEST_NAME)
        name = _text(entry, "name", "a triggers entry", MANIFEST_NAME, required=True)
        kind = entry.get("trigger_type", "python")
        if kind != "python":
            raise _invalid(f"trigger {name!r}: trigger_type {kind!r} is not supported (only 'python')", MANIFEST_NAME)
        config = entry.get("config")
        triggers.append(
            {
                "name": name,
                "workflow": _text(entry, "workflow", f"trigger {name!r}", MANIFEST_NAME, required=True),
                "poll_interval": entry.get("poll_interval", "5s"),
                "allow_concurrent": entry.get("allow_concurrent", False),
                "config": {} if config is None else config,
            }
        )
    return triggers


def _read_older_manifest(document: dict[str, Any], files: dict[str, bytes], dirs: set[str]) -> CloacaLayout:
    member = MANIFEST_NAME
    if document["format_version"] != "2":
        raise _invalid(f'format_version {document["format_version"]!r} is not supported (cloaca\'s is "2")', member)
    package, python = document.get("package"), document.get("python")
    if not isinstance(package, dict):
        raise _invalid("missing 'package' object (name, version)", member)
    _language(document.get("language"), member)
    if not isinstance(python, dict):
        raise _invalid("missing 'python' object (entry_module)", member)
    entry = _check_entry(_text(python, "entry_module", "python", member), member)
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise _invalid("'tasks' must list the package's tasks (at least one)", member)
    ids = [_text(t, "id", "a tasks entry", member, required=True) if isinstance(t, dict) else None for t in tasks]
    if None in ids:
        raise _invalid("every tasks entry must be an object with an 'id'", member)
    check_conflicts(files, dirs)
    paths = ["."] + (["vendor"] if "vendor" in dirs or any(p.startswith("vendor/") for p in files) else [])
    check_shadowing([p for p in [*files, *(d + "/" for d in dirs)] if p != MANIFEST_NAME])
    if "vendor" in paths:
        check_shadowing([*subtree(files, "vendor"), *(d + "/" for d in subtree(dirs, "vendor"))], "vendor")
    check_entry_module(files, entry)
    name = _text(package, "name", "package", member, required=True)
    manifest = _manifest(
        {
            "package": {
                "name": name,
                "version": _text(package, "version", "package", member, required=True),
                "description": _text(package, "description", "package", member) or "",
                "fingerprint": compute_fingerprint(files, domain=_DOMAIN["cloaca-manifest"], skip=None),
            },
            "python": {
                "requires_python": _check_requirement(_text(python, "requires_python", "python", member), member),
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
