"""``cloacina package build``: turn a source directory with a ``pyproject.toml`` into ``NAME-VERSION.cloacina``.

Steps: read ``pyproject.toml`` (``[project]`` name, version, description, requires-python; ``[tool.cloaca]`` or
``[tool.cloacina]`` ``entry_module``), collect the source files, check them statically (no links, limits, no
standard-library shadowing, entry module present), import the entry module in a child process to discover its
workflows, tasks and triggers, bind every trigger to a workflow, write the manifest and the deterministic archive,
then read the archive back through the same validation a reconciler runs.

Binding: a trigger declared with ``@trigger(workflow=...)`` keeps it; one without takes
``[tool.cloaca.triggers.<name>] workflow = "..."`` if given, else the package's only workflow; with several
workflows and no choice the build fails naming the trigger. ``[tool.cloaca.triggers.<name>.config]`` becomes
the trigger's ``config`` (default ``{}``)::

    [tool.cloaca]
    entry_module = "data_ingest"

    [tool.cloaca.triggers.inbox_watcher.config]
    path = "/data/inbox/"

Example (not run here, it spawns a process)::

    path = build_package("examples/packages/data_ingest", "dist")   # dist/data-ingest-1.0.0.cloacina
"""

from __future__ import annotations

import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloacina.packaging.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    PackageError,
    check_source_tree,
    compute_fingerprint,
    normalize_member_name,
    write_archive,
)
from cloacina.packaging.discover import IMPORT_TIMEOUT_S, discover_package
from cloacina.packaging.manifest import MANIFEST_NAME, Manifest, PackageInfo, PythonInfo, TaskEntry, TriggerEntry

_TRIGGER_KEYS = {"workflow", "config"}


@dataclass(frozen=True)
class ProjectInfo:
    """What ``pyproject.toml`` says about a package."""

    name: str
    version: str
    entry_module: str
    description: str = ""
    requires_python: str | None = None
    trigger_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


def _pyproject_error(message: str) -> PackageError:
    return PackageError(f"pyproject.toml: {message}", reason="pyproject", member="pyproject.toml")


def read_pyproject(src_dir: str | os.PathLike[str]) -> ProjectInfo:
    """Parse ``SRC_DIR/pyproject.toml``; ``PackageError`` (reason ``pyproject``) says what is missing."""
    path = Path(src_dir) / "pyproject.toml"
    if not path.is_file():
        raise PackageError(f"no pyproject.toml in {str(src_dir)!r}", reason="pyproject", member="pyproject.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _pyproject_error(f"not valid TOML: {exc}") from None
    project = data.get("project")
    if not isinstance(project, dict):
        raise _pyproject_error("missing [project] table with name and version")
    name, version = project.get("name"), project.get("version")
    if not isinstance(name, str) or not name:
        raise _pyproject_error("missing [project] name")
    if not isinstance(version, str) or not version:
        dynamic = "version" in (project.get("dynamic") or [])
        raise _pyproject_error(
            "dynamic versions are not supported; set [project] version" if dynamic else "missing [project] version"
        )
    tools = data.get("tool", {})
    found = [key for key in ("cloaca", "cloacina") if key in tools]
    if not found:
        raise _pyproject_error('missing [tool.cloaca] table; add entry_module = "your_module"')
    if len(found) == 2:
        raise _pyproject_error("has both [tool.cloaca] and [tool.cloacina]; keep one")
    tool = tools[found[0]]
    entry_module = tool.get("entry_module") if isinstance(tool, dict) else None
    if not isinstance(entry_module, str) or not entry_module:
        raise _pyproject_error(f'[tool.{found[0]}] needs entry_module = "your_module"')
    settings = tool.get("triggers", {})
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise _pyproject_error(f"[tool.{found[0]}.triggers.<name>] entries must be tables")
    for trigger_name, table in settings.items():
        unknown = set(table) - _TRIGGER_KEYS
        if unknown:
            raise _pyproject_error(
                f"[tool.{found[0]}.triggers.{trigger_name}] has unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_TRIGGER_KEYS))}"
            )
    description = project.get("description", "")
    requires_python = project.get("requires-python")
    return ProjectInfo(
        name=name,
        version=version,
        entry_module=entry_module,
        description=description if isinstance(description, str) else "",
        requires_python=requires_python if isinstance(requires_python, str) else None,
        trigger_settings=settings,
    )


def bind_triggers(discovered: dict[str, Any], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest trigger entries for the discovered triggers, each bound to a workflow (see the module doc)."""
    workflows = sorted(w["name"] for w in discovered["workflows"])
    code_triggers = {t["name"]: t for t in discovered["triggers"]}
    unknown = sorted(set(settings) - set(code_triggers))
    if unknown:
        raise PackageError(
            f"pyproject.toml configures trigger(s) {', '.join(map(repr, unknown))} that the code does not define "
            f"(triggers in code: {', '.join(sorted(code_triggers)) or 'none'})",
            reason="binding",
        )
    entries = []
    for name, found in sorted(code_triggers.items()):
        table = settings.get(name, {})
        chosen = table.get("workflow")
        workflow = found["workflow"]
        if workflow is not None and chosen is not None and chosen != workflow:
            raise PackageError(
                f"trigger {name!r}: code says workflow {workflow!r}, pyproject.toml says {chosen!r}",
                reason="binding",
                member=name,
            )
        workflow = workflow or chosen
        if workflow is None:
            if len(workflows) != 1:
                listed = ", ".join(workflows) if workflows else "none"
                raise PackageError(
                    f"trigger {name!r} has no workflow and the package defines {len(workflows)} workflows "
                    f"({listed}); name one with @trigger(workflow=...) or [tool.cloaca.triggers.{name}] workflow",
                    reason="binding",
                    member=name,
                )
            workflow = workflows[0]
        entries.append(
            {
                "name": name,
                "trigger_type": "python",
                "workflow": workflow,
                "poll_interval": found["poll_interval"],
                "allow_concurrent": found["allow_concurrent"],
                "config": table.get("config", {}),
                **({"cron": found["cron"], "timezone": found.get("timezone") or "UTC"} if found.get("cron") else {}),
            }
        )
    return entries


def make_manifest(project: ProjectInfo, discovered: dict[str, Any], fingerprint: str) -> Manifest:
    """The manifest for a package from its pyproject data, its discovered code and its fingerprint."""
    tasks = [
        TaskEntry(workflow=wf["name"], **task)
        for wf in sorted(discovered["workflows"], key=lambda w: w["name"])
        for task in wf["tasks"]
    ]
    if not tasks and not discovered["triggers"]:
        raise PackageError(
            f"importing {project.entry_module!r} registered no workflow and no trigger", reason="empty_package"
        )
    try:
        return Manifest(
            package=PackageInfo(
                name=project.name, version=project.version, description=project.description, fingerprint=fingerprint
            ),
            python=PythonInfo(requires_python=project.requires_python, entry_module=project.entry_module),
            tasks=tasks,
            triggers=[TriggerEntry(**entry) for entry in bind_triggers(discovered, project.trigger_settings)],
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise PackageError(f"cannot write a valid manifest: {problems}", reason="invalid_manifest") from None


EXCLUDED_NAMES = frozenset({"__pycache__", ".git", ".hg", ".svn", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
EXCLUDED_TOP_LEVEL = frozenset({"dist", "build", ".venv", "venv", ".tox", ".nox"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".cloacina")


def _is_excluded(rel_parts: tuple[str, ...], is_dir: bool) -> bool:
    name = rel_parts[-1]
    if name in EXCLUDED_NAMES or name.endswith(".egg-info"):
        return True
    if len(rel_parts) == 1 and name in EXCLUDED_TOP_LEVEL:
        return True
    return not is_dir and (name.endswith(EXCLUDED_SUFFIXES) or name == ".DS_Store")


def collect_sources(src_dir: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """Read the package's source files by relative POSIX path; caches, VCS data and build outputs are left out.

    Excluded everywhere: ``__pycache__``, ``.git`` (and other VCS/tool caches), ``*.egg-info``, ``*.pyc``,
    ``*.pyo``, ``*.cloacina``; at the top level only: ``dist``, ``build``, ``.venv``, ``venv``, ``.tox``, ``.nox``.
    Links and special files are an error; so is exceeding ``limits``.
    """
    root = Path(src_dir)
    if not root.is_dir():
        raise PackageError(f"package directory {str(root)!r} does not exist", reason="source")
    files: dict[str, bytes] = {}
    total = 0
    for current, dirnames, filenames in os.walk(root):
        rel_dir = Path(current).relative_to(root).parts
        kept = []
        for name in sorted(dirnames):
            rel_path = "/".join((*rel_dir, name))
            if _is_excluded((*rel_dir, name), True):
                continue
            if os.path.islink(os.path.join(current, name)):
                raise PackageError(f"{rel_path!r} is a symbolic link", reason="link", member=rel_path)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _is_excluded((*rel_dir, name), False):
                continue
            rel_path = normalize_member_name("/".join((*rel_dir, name)))
            info = os.lstat(os.path.join(current, name))
            if stat.S_ISLNK(info.st_mode):
                raise PackageError(f"{rel_path!r} is a symbolic link", reason="link", member=rel_path)
            if not stat.S_ISREG(info.st_mode):
                raise PackageError(f"{rel_path!r} is not a regular file", reason="special_file", member=rel_path)
            if info.st_size > limits.file_bytes:
                raise PackageError(
                    f"{rel_path!r} is {info.st_size} bytes; the limit is {limits.file_bytes}",
                    reason="too_large",
                    member=rel_path,
                )
            total += info.st_size
            if total > limits.total_bytes:
                raise PackageError(f"sources exceed {limits.total_bytes} bytes at {rel_path!r}", reason="too_large")
            if len(files) >= limits.files:
                raise PackageError(f"sources have more than {limits.files} files", reason="too_many_files")
            files[rel_path] = Path(current, name).read_bytes()
    files.pop(MANIFEST_NAME, None)  # a stale manifest.json in the source is replaced by the generated one
    return files


def stage_files(files: dict[str, bytes], dest: Path) -> None:
    """Write collected source files under ``dest`` (paths were normalised by :func:`collect_sources`)."""
    for rel, data in files.items():
        target = dest.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def build_package(
    src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] = ".", timeout_s: float = IMPORT_TIMEOUT_S
) -> Path:
    """Build ``OUT_DIR/NAME-VERSION.cloacina`` from ``src_dir``; ``PackageError`` says what is wrong."""
    project = read_pyproject(src_dir)
    files = collect_sources(src_dir)
    check_source_tree(files, entry_module=project.entry_module)
    fingerprint = compute_fingerprint(files)  # provisional: write_archive sets the one covering the manifest too
    # Discover from a copy of exactly what goes into the archive, so an excluded file cannot hide a problem.
    with tempfile.TemporaryDirectory(prefix="cloacina-build-") as stage:
        stage_files(files, Path(stage))
        discovered = discover_package(stage, project.entry_module, timeout_s=timeout_s)
    return write_archive(out_dir, make_manifest(project, discovered, fingerprint), files)
