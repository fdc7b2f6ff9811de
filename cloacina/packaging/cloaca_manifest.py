"""Cloaca's one ``package.toml`` resolver: every reader of a cloaca package resolves its manifest here.

``package build``, ``validate``, ``inspect``, ``deploy``, the daemon, the registry and workers loading a package by
fingerprint all read an archive through :func:`~cloacina.packaging.archive.read_archive`, which calls
:func:`resolve_package_toml`. Its rules are cloaca's (CLOACA_API §15):

- ``[package]``: ``name`` and ``version`` are required; ``interface`` (default ``"cloacina-workflow-plugin"``),
  ``interface_version`` (default ``1``) and ``extension`` (default ``"cloacina"``) may be omitted. An explicit
  value always wins, and is checked.
- ``[metadata]`` is closed: ``language``, ``workflow_name``, ``entry_module``, ``requires_python``,
  ``description``, ``author``. Unknown keys, ``package_type``, ``[[metadata.triggers]]`` and computation-graph
  keys are refused. A missing ``[metadata]`` table is an empty one.
- ``language`` absent: inferred from the layout. A ``workflow/`` directory means ``"python"``; ``Cargo.toml`` plus
  ``src/lib.rs`` means ``"rust"``; both or neither is an error asking to declare ``[metadata] language``.
- ``entry_module`` absent for Python: ``<name with - replaced by _>.tasks``.
- ``workflow_name`` absent: the package name.

The resolver only reads ``package.toml`` and the member names; whether a Rust package can be loaded is the
caller's decision (cloacina's loader refuses it). The archive's fingerprint covers ``package.toml`` verbatim, not
the resolved values, so it is the same for a given archive whatever was filled in.

>>> minimal = b'[package]\\nname = "file-inbox"\\nversion = "0.1.0"\\n[metadata]\\nworkflow_name = "file_inbox"\\n'
>>> resolved = resolve_package_toml(minimal, ["workflow/file_inbox/tasks.py"])
>>> resolved.language, resolved.entry_module, resolved.interface, resolved.interface_version, resolved.extension
('python', 'file_inbox.tasks', 'cloacina-workflow-plugin', 1, 'cloacina')
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from cloacina.packaging.members import PackageError

PACKAGE_TOML: Final = "package.toml"
INTERFACE: Final = "cloacina-workflow-plugin"
INTERFACE_VERSION: Final = 1
EXTENSION: Final = "cloacina"
LANGUAGES: Final = ("python", "rust")
METADATA_KEYS: Final = frozenset(
    {"language", "workflow_name", "entry_module", "requires_python", "description", "author"}
)
_GRAPH_KEYS = frozenset({"graph_name", "reaction_mode", "input_strategy", "accumulators"})
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ResolvedPackageToml:
    """A ``package.toml`` with cloaca's defaults filled in and its language settled.

    ``entry_module`` is ``None`` only for a Rust package that names none; ``language_inferred`` says whether the
    language came from the layout rather than ``[metadata]``.
    """

    name: str
    version: str
    interface: str
    interface_version: int
    extension: str
    language: str
    language_inferred: bool
    workflow_name: str
    entry_module: str | None
    requires_python: str | None
    description: str
    author: str | None


def invalid(message: str, member: str = PACKAGE_TOML) -> PackageError:
    """A ``PackageError`` (reason ``invalid_manifest``) about ``member``."""
    return PackageError(f"{member}: {message}", reason="invalid_manifest", member=member)


def text_field(
    table: Mapping[str, Any], key: str, where: str, member: str = PACKAGE_TOML, *, required: bool = False
) -> str | None:
    """``table[key]`` as a string (``None`` when absent and not ``required``); ``PackageError`` otherwise."""
    value = table.get(key)
    if value is None:
        if required:
            raise invalid(f"{where} is missing {key!r}", member)
        return None
    if not isinstance(value, str) or (required and not value):
        raise invalid(f"{where} {key} must be a non-empty string, got {value!r}", member)
    return value


def check_entry_module_name(value: str | None, member: str = PACKAGE_TOML) -> str:
    """``value`` if it is a dotted module name; ``PackageError`` when it is missing or malformed."""
    if value is None:
        raise invalid("a Python package needs [metadata] entry_module (dotted, relative to workflow/)", member)
    if not _DOTTED.match(value):
        raise invalid(f"entry_module {value!r} is not a dotted module name like 'pkg.tasks'", member)
    return value


def check_requirement(value: str | None, member: str = PACKAGE_TOML) -> str | None:
    """``value`` if it is ``None`` or a PEP 440 specifier set; ``PackageError`` otherwise."""
    if value is not None:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise invalid(f"requires_python {value!r} is not a PEP 440 specifier", member) from None
    return value


def default_entry_module(name: str) -> str:
    """Cloaca's entry module for a Python package that names none: ``file-inbox`` -> ``file_inbox.tasks``."""
    return f"{name.replace('-', '_')}.tasks"


def infer_language(files: Collection[str], directories: Collection[str] = ()) -> str:
    """``"python"`` for a ``workflow/`` directory, ``"rust"`` for ``Cargo.toml`` plus ``src/lib.rs``.

    ``files`` and ``directories`` are paths relative to the package root. Both layouts, or neither, is a
    ``PackageError`` asking to declare ``[metadata] language``.
    """
    is_python = "workflow" in directories or any(p.startswith("workflow/") for p in [*files, *directories])
    is_rust = "Cargo.toml" in files and "src/lib.rs" in files
    if is_python and not is_rust:
        return "python"
    if is_rust and not is_python:
        return "rust"
    layout = (
        "both a workflow/ directory (Python) and Cargo.toml with src/lib.rs (Rust)"
        if is_python
        else "neither a workflow/ directory (Python) nor Cargo.toml with src/lib.rs (Rust)"
    )
    raise invalid(
        f"cannot infer the package's language: it has {layout}; declare it in package.toml, "
        '[metadata] language = "python" or "rust"'
    )


def _tables(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise invalid(f"not valid TOML: {exc}") from None
    package, metadata = document.get("package"), document.get("metadata", {})
    if not isinstance(package, dict):
        raise invalid("missing [package] table (name and version are required)")
    if not isinstance(metadata, dict):
        raise invalid(f"[metadata] must be a table, got {metadata!r}")
    return package, metadata


def _package_setting(package: Mapping[str, Any], key: str, default: object) -> Any:
    value = package.get(key, default)
    if value != default or type(value) is not type(default):  # True == 1: interface_version must be an int
        raise invalid(f"[package] {key} must be {default!r}, got {value!r}")
    return value


def _check_metadata_keys(metadata: Mapping[str, Any]) -> None:
    if "package_type" in metadata:
        raise invalid("[metadata] package_type is not accepted (cloaca's [metadata] is a closed schema)")
    if "triggers" in metadata:
        raise invalid("[[metadata.triggers]] is not accepted: declare triggers in code with @cloaca.trigger")
    graph = sorted(_GRAPH_KEYS & set(metadata))
    if graph:
        raise PackageError(
            f"{PACKAGE_TOML}: computation-graph packages ({', '.join(graph)}) are not supported",
            reason="unsupported_package",
            member=PACKAGE_TOML,
        )
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise invalid(f"unknown [metadata] key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(METADATA_KEYS))}")


def resolve_package_toml(raw: bytes, files: Collection[str], directories: Collection[str] = ()) -> ResolvedPackageToml:
    """Resolve ``package.toml`` (its bytes) of a package whose members (relative to its root) are ``files`` and
    ``directories``; ``PackageError`` (reason ``invalid_manifest`` or ``unsupported_package``) says what is wrong.
    """
    package, metadata = _tables(raw)
    name = text_field(package, "name", "[package]", required=True)
    version = text_field(package, "version", "[package]", required=True)
    assert name is not None and version is not None
    interface = _package_setting(package, "interface", INTERFACE)
    interface_version = _package_setting(package, "interface_version", INTERFACE_VERSION)
    extension = _package_setting(package, "extension", EXTENSION)
    _check_metadata_keys(metadata)
    language = metadata.get("language")
    inferred = language is None
    if inferred:
        language = infer_language(files, directories)
    elif language not in LANGUAGES:
        raise invalid(f"language must be 'python' or 'rust', got {language!r}")
    entry = text_field(metadata, "entry_module", "[metadata]")
    if entry is None and language == "python":
        entry = default_entry_module(name)
    return ResolvedPackageToml(
        name=name,
        version=version,
        interface=interface,
        interface_version=interface_version,
        extension=extension,
        language=language,
        language_inferred=inferred,
        workflow_name=text_field(metadata, "workflow_name", "[metadata]") or name,
        entry_module=None if entry is None else check_entry_module_name(entry),
        requires_python=check_requirement(text_field(metadata, "requires_python", "[metadata]")),
        description=text_field(metadata, "description", "[metadata]") or "",
        author=text_field(metadata, "author", "[metadata]"),
    )
