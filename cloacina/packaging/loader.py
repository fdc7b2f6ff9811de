"""Load ``.cloacina`` packages into this process, each in isolation, so several versions can be live at once.

:meth:`PackageLoader.load` takes a fingerprint (fetched from the :class:`~cloacina.store.packages.PackageStore`
and re-validated with :func:`~cloacina.packaging.archive.read_archive`: bytes from a database are never trusted
blindly) or a :class:`~cloacina.packaging.archive.ValidatedArchive`, extracts it to ``CACHE/<fingerprint>/``
and imports its entry module as a submodule of a package of its own, ``_cloacina_pkg_<fingerprint[:16]>``.
So ``data_ingest`` 1.0 and 2.0 become two different modules, and a run keeps the version it started with.

The import itself (:mod:`cloacina.packaging.isolation`) gives the package ``import cloaca``, serves its absolute
self-imports, and captures what it registers so that nothing stays in the global registry or reaches a running
scheduler: package triggers reach a scheduler through the reconciler, bound to their package.

Cloaca's archives load the same way (:mod:`cloacina.packaging.cloaca_format`): ``workflow/`` and ``vendor/`` are
the package's import path, its entry module is imported in the workflow context its ``package.toml`` names, and
its triggers are bound by its code (``on=``) or, in the older form, by its ``manifest.json``. A package refused
after its import (no task, a trigger that binds nowhere) leaves no module behind.

The code runs in this process: feed the loader only archives that passed
:func:`~cloacina.packaging.verify.verify_archive` (the reconciler and ``cloacina package deploy`` do so before
storing them). :func:`install_resolver` lets the engine resolve ``(fingerprint, workflow)`` through loaders.

Example (not run here, it imports package code)::

    loader = PackageLoader(PackageStore(db))
    install_resolver(loader)
    loaded = loader.load("3f9c...")          # fetch, validate, extract, import
    loaded.workflows["data_ingest"].version, [t.name for t in loaded.triggers]
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING

from cloacina.definitions.packages import set_package_resolver
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow
from cloacina.errors import WorkflowNotFoundError
from cloacina.packaging.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    PackageError,
    ValidatedArchive,
    extract_archive,
    read_archive,
)
from cloacina.packaging.cloaca_binding import finish_manifest
from cloacina.packaging.discover import describe_triggers, describe_workflows
from cloacina.packaging.isolation import ImportedCode, import_isolated
from cloacina.packaging.manifest import Manifest

if TYPE_CHECKING:
    from cloacina.store.packages import PackageStore

log = logging.getLogger("cloacina.packages")
CACHE_ENV_VAR = "CLOACINA_PACKAGE_CACHE"


class PackageNotFoundError(PackageError):
    """The package registry has no archive with the requested fingerprint."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"package {fingerprint} is not in the package registry", reason="not_in_registry")
        self.fingerprint = fingerprint


@dataclass(frozen=True)
class LoadedPackage:
    """A package imported in isolation: its manifest, where it lives, its workflows and its bound triggers.

    ``manifest`` is complete for a cloaca package too: its tasks and triggers as its import declared them.
    """

    manifest: Manifest
    path: Path
    module: ModuleType
    workflows: Mapping[str, Workflow]
    triggers: tuple[TriggerDefinition, ...]

    @property
    def fingerprint(self) -> str:
        return self.manifest.package.fingerprint

    @property
    def name(self) -> str:
        return self.manifest.package.name

    @property
    def version(self) -> str:
        return self.manifest.package.version

    def workflow(self, name: str) -> Workflow:
        """The package's workflow ``name``; ``WorkflowNotFoundError`` naming the package if it has none."""
        found = self.workflows.get(name)
        if found is None:
            raise WorkflowNotFoundError(f"{name} (package {self.name} {self.version}, {self.fingerprint[:12]})", [
                f"{w} (in that package)" for w in self.workflows
            ])  # fmt: skip
        return found


class PackageLoader:
    """Loads packages by fingerprint (from ``store``) or from validated archives; one load per fingerprint.

    ``cache_dir``: where archives are extracted (``<cache_dir>/<fingerprint>/``); default ``$CLOACINA_PACKAGE_CACHE``,
    else a private temporary directory removed when the process exits.
    """

    def __init__(
        self,
        store: PackageStore | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        limits: ArchiveLimits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.limits = limits
        configured = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR) or None
        self._cache_dir: Path | None = Path(configured) if configured is not None else None
        self._loaded: dict[str, LoadedPackage] = {}
        self._lock = threading.RLock()

    # -- public -----------------------------------------------------------------------------------------
    def get(self, fingerprint: str) -> LoadedPackage | None:
        """The package if this loader has loaded it already (never touches the registry)."""
        return self._loaded.get(fingerprint)

    @property
    def loaded(self) -> list[LoadedPackage]:
        with self._lock:
            return list(self._loaded.values())

    def load(self, source: str | ValidatedArchive) -> LoadedPackage:
        """Load a package by fingerprint (from the registry) or from an archive that passed ``verify_archive``."""
        fingerprint = source.fingerprint if isinstance(source, ValidatedArchive) else source
        found = self._loaded.get(fingerprint)
        if found is not None:
            return found
        with self._lock:
            found = self._loaded.get(fingerprint)
            if found is not None:
                return found
            validated = source if isinstance(source, ValidatedArchive) else self._fetch(fingerprint)
            root = self._extract(validated)
            loaded = _import_isolated(root, validated)
            self._loaded[fingerprint] = loaded
        log.info(
            "package %s %s loaded (%s)",
            loaded.name,
            loaded.version,
            fingerprint[:12],
            extra={"package": loaded.name, "fingerprint": fingerprint},
        )
        return loaded

    def workflow(self, fingerprint: str, name: str) -> Workflow:
        """Workflow ``name`` of package ``fingerprint``, loading the package first if needed."""
        return self.load(fingerprint).workflow(name)

    def active_workflow(self, name: str) -> Workflow | None:
        """Workflow ``name`` of the active registry package that declares it (newest first), or ``None``.

        For runs that name a package workflow without its fingerprint: those of a cron schedule a package's
        ``@trigger(cron=...)`` created, or an ``execute("name")`` in a process that deploys packages.
        """
        if self.store is None:
            return None
        try:
            rows = self.store.list(active_only=True)
        except Exception as exc:  # the registry is unreachable: the name stays unknown
            log.warning("cannot read the package registry to find workflow %r: %s", name, exc)
            return None
        for row in rows:
            if any(task.get("workflow") == name for task in row["manifest"].get("tasks", [])):
                try:
                    return self.load(row["fingerprint"]).workflow(name)
                except (PackageError, WorkflowNotFoundError) as exc:
                    log.warning("active package %s cannot provide workflow %r: %s", row["name"], name, exc)
        return None

    # -- fetching and extracting ------------------------------------------------------------------------
    def _fetch(self, fingerprint: str) -> ValidatedArchive:
        if self.store is None:
            raise PackageNotFoundError(fingerprint)
        data = self.store.get_archive(fingerprint)
        if data is None:
            raise PackageNotFoundError(fingerprint)
        # Static validation again (the row may have been tampered with); older releases stored sources-only
        # fingerprints, validated when deployed.
        validated = read_archive(data, self.limits, legacy_fingerprint=True)
        if validated.fingerprint != fingerprint:
            raise PackageError(
                f"the registry entry {fingerprint} holds package {validated.fingerprint}; refusing to load it",
                reason="fingerprint_mismatch",
            )
        return validated

    def _cache_root(self) -> Path:
        if self._cache_dir is None:
            private = Path(tempfile.mkdtemp(prefix="cloacina-packages-"))
            atexit.register(shutil.rmtree, private, True)
            self._cache_dir = private
        self._cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._cache_dir

    def _extract(self, validated: ValidatedArchive) -> Path:
        """``CACHE/<fingerprint>/`` holding exactly the archive (reused if it does), else a fresh private copy."""
        cache = self._cache_root()
        target = cache / validated.fingerprint
        if _holds_exactly(target, validated):
            return target
        tmp = cache / f".{validated.fingerprint}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        extract_archive(validated, tmp)
        try:
            tmp.rename(target)  # atomic; refused if another process (or an old run) left the name taken
            return target
        except OSError:
            if _holds_exactly(target, validated):
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            return tmp


def _holds_exactly(root: Path, validated: ValidatedArchive) -> bool:
    """Whether ``root`` contains the archive's files and nothing else (``__pycache__`` aside), byte for byte."""
    if not root.is_dir() or root.is_symlink():
        return False
    expected = validated.members()
    seen = 0
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = Path(current, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file() or expected.get(rel) != path.read_bytes():
                return False
            seen += 1
    return seen == len(expected)


def _import_isolated(root: Path, validated: ValidatedArchive) -> LoadedPackage:
    code = import_isolated(root, validated)
    try:
        return _bind(root, validated, code)
    except PackageError:  # refused after all: its private module tree goes too
        prefix = code.module.__name__.partition(".")[0]
        for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
            del sys.modules[key]
        raise


def _bind(root: Path, validated: ValidatedArchive, code: ImportedCode) -> LoadedPackage:
    if validated.manifest.origin is None:
        bound = _bind_triggers(validated.manifest, code.workflows, code.triggers)
        return LoadedPackage(validated.manifest, root, code.module, MappingProxyType(code.workflows), bound)
    discovered = {"workflows": describe_workflows(code.workflows), "triggers": describe_triggers(code.triggers)}
    manifest = finish_manifest(validated.manifest, discovered)  # a cloaca package: its code says what it holds
    entries = {entry.name: entry for entry in manifest.triggers}
    fingerprint = manifest.package.fingerprint
    bound = tuple(
        replace(
            definition,
            workflow=entries[definition.name].workflow,
            poll_interval=entries[definition.name].poll_interval,
            poll_interval_ms=entries[definition.name].poll_interval_ms,
            allow_concurrent=entries[definition.name].allow_concurrent,
            package_fingerprint=fingerprint,
        )
        for definition in sorted(code.triggers, key=lambda t: t.name)
    )
    return LoadedPackage(manifest, root, code.module, MappingProxyType(code.workflows), bound)


def _bind_triggers(
    manifest: Manifest, workflows: Mapping[str, Workflow], triggers: list[TriggerDefinition]
) -> tuple[TriggerDefinition, ...]:
    """The code's triggers bound to their manifest workflow and package; ``PackageError`` where they disagree."""
    package = f"package {manifest.package.name} {manifest.package.version}"
    declared = {t.name: t for t in manifest.triggers}
    problems = [f"workflow {w!r} is in the manifest but not in the code" for w in manifest.workflow_names
                if w not in workflows]  # fmt: skip
    code_names = {t.name for t in triggers}
    problems += [f"trigger {n!r} is in the manifest but not in the code" for n in sorted(set(declared) - code_names)]
    bound = []
    for definition in sorted(triggers, key=lambda t: t.name):
        entry = declared.get(definition.name)
        if entry is None:
            problems.append(f"trigger {definition.name!r} is in the code but not in the manifest")
            continue
        if definition.workflow is not None and definition.workflow != entry.workflow:
            problems.append(
                f"trigger {definition.name!r}: manifest says workflow {entry.workflow!r}, "
                f"code says {definition.workflow!r}"
            )
        elif entry.workflow not in workflows:
            problems.append(f"trigger {definition.name!r} fires workflow {entry.workflow!r}, which {package} lacks")
        bound.append(replace(definition, workflow=entry.workflow, package_fingerprint=manifest.package.fingerprint))
    if problems:
        raise PackageError(f"{package} does not match its code here: {'; '.join(problems)}", reason="manifest_mismatch")
    return tuple(bound)


# -- the engine's resolver ---------------------------------------------------------------------------------------
_resolver_lock = threading.Lock()
_installed: list[weakref.ref[PackageLoader]] = []


def _live_loaders() -> list[PackageLoader]:
    with _resolver_lock:
        return [loader for ref in _installed if (loader := ref()) is not None]


def _resolve(fingerprint: str, name: str) -> Workflow:
    loaders = _live_loaders()
    for loader in loaders:  # a loaded package first: no registry round trip
        found = loader.get(fingerprint)
        if found is not None:
            return found.workflow(name)
    for loader in loaders:
        try:
            return loader.load(fingerprint).workflow(name)
        except PackageNotFoundError:
            continue
    raise WorkflowNotFoundError(f"{name} (package {fingerprint[:12]} is in no package registry this process reads)", [])


def install_resolver(loader: PackageLoader) -> None:
    """Let the engine resolve package workflows through ``loader`` (most recently installed loaders first)."""
    with _resolver_lock:
        _installed[:] = [ref for ref in _installed if ref() not in (None, loader)]
        _installed.insert(0, weakref.ref(loader))
    set_package_resolver(_resolve)


def uninstall_resolver(loader: PackageLoader) -> None:
    """Stop resolving through ``loader``; the resolver is removed once no loader is left."""
    with _resolver_lock:
        _installed[:] = [ref for ref in _installed if ref() not in (None, loader)]
        empty = not _installed
    if empty:
        set_package_resolver(None)
