"""Import a package's code without letting it leak: its own module names, ``cloaca``, and the global registry.

:func:`import_isolated` imports the entry module as ``_cloacina_pkg_<fingerprint[:16]>.<entry_module>`` (the
extraction directory is that package's only path entry; nothing is added to ``sys.path``) and returns what the
import declared. While it runs, one import at a time per process:

- ``import cloaca`` gives cloacina. Afterwards no alias stays in ``sys.modules``; an import hook placed last on
  ``sys.meta_path`` keeps serving ``import cloaca`` to task code (an installed ``cloaca`` would still win);
- absolute imports of the package's own top-level modules (``import data_ingest.helpers``) are served from the
  package (an import hook, removed afterwards; same-named host modules step aside and come back). Absolute
  self-imports made later, inside task code, are not: packages should use relative imports there;
- the global registry is held and captured: what the import registers is returned, the registry is put back as
  it was, and registry listeners (a running scheduler) hear nothing.

A cloaca package (:mod:`~cloacina.packaging.cloaca_format`) is laid out differently: its ``workflow/`` and
``vendor/`` directories are the search locations of its private package (so both are on its import path, and
its absolute imports of vendored libraries are served like self-imports), and its entry module is imported
inside the workflow context ``workflow_name`` of package ``name``, so bare module-level ``@task`` decorators
form that workflow.

Used by :class:`cloacina.packaging.loader.PackageLoader`; call it only for archives that passed
:func:`~cloacina.packaging.verify.verify_archive` (or, in workers, static validation of registry bytes).

>>> MODULE_PREFIX
'_cloacina_pkg_'
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.definitions.workflow import Workflow
from cloacina.packaging.archive import PackageError, ValidatedArchive
from cloacina.packaging.discover import import_in_context, merge_context_workflow

MODULE_PREFIX = "_cloacina_pkg_"
# One package import at a time per process: the registry capture and the sys.modules edits are process-wide.
_IMPORT_LOCK = threading.RLock()
_suffixes = itertools.count(2)


@dataclass(frozen=True)
class ImportedCode:
    """What importing a package declared: its entry module, workflows by name, and (unbound) triggers."""

    module: ModuleType
    workflows: dict[str, Workflow]
    triggers: list[TriggerDefinition]


class _AliasLoader(importlib.abc.Loader):
    """Serves ``data_ingest`` as the already imported ``_cloacina_pkg_<fp>.data_ingest``."""

    def __init__(self, real: ModuleType) -> None:
        self.real = real
        self.real_spec = real.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.real

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.real_spec  # the import system overwrote it with the alias spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """During a package import: its own top-level module names resolve inside the package's private prefix."""

    def __init__(self, prefix: str, names: set[str]) -> None:
        self.prefix = prefix
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.names:
            return None
        real_name = f"{self.prefix}.{fullname}"
        try:
            real = importlib.import_module(real_name)
        except ModuleNotFoundError as exc:
            if exc.name == real_name:
                return None
            raise
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real), is_package=hasattr(real, "__path__"))


class _CloacaFinder(importlib.abc.MetaPathFinder):
    """``import cloaca`` gives cloacina when no real ``cloaca`` is installed (task code may import it late)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "cloaca":
            return None
        import cloacina

        return importlib.util.spec_from_loader("cloaca", _AliasLoader(cloacina), is_package=True)


def _ensure_cloaca_finder() -> None:
    if not any(isinstance(f, _CloacaFinder) for f in sys.meta_path):
        sys.meta_path.append(_CloacaFinder())  # last: an installed cloaca package would still win


def _own_modules(names: set[str]) -> dict[str, ModuleType]:
    return {k: m for k, m in sys.modules.items() if k.partition(".")[0] in names}


@contextlib.contextmanager
def _package_import_scope(prefix: str, names: set[str]) -> Iterator[None]:
    """sys.modules and sys.meta_path as a package import needs them, put back afterwards."""
    import cloacina

    hidden = _own_modules(names)  # same-named modules of the host (or of another package version) step aside
    for key in hidden:
        del sys.modules[key]
    previous_cloaca = sys.modules.get("cloaca")
    sys.modules["cloaca"] = cloacina
    _ensure_cloaca_finder()
    finder = _AliasFinder(prefix, names)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in _own_modules(names):
            del sys.modules[key]
        sys.modules.update(hidden)
        if previous_cloaca is not None:
            sys.modules["cloaca"] = previous_cloaca
        else:  # leave no alias behind; a later `import cloaca` in task code goes through _CloacaFinder
            sys.modules.pop("cloaca", None)


def import_isolated(root: Path, validated: ValidatedArchive) -> ImportedCode:
    """Import the entry module of ``validated`` (extracted at ``root``) in isolation; see the module docstring.

    A cloaca package's import paths (``workflow/``, ``vendor/``) are its private package's search locations, and
    its entry module is imported inside the workflow context its manifest names.
    """
    manifest = validated.manifest
    fingerprint = manifest.package.fingerprint
    entry = manifest.python.entry_module
    origin = manifest.origin
    context = (origin.workflow_name, manifest.package.name) if origin is not None else None
    locations = [str(root / p) if p else str(root) for p in validated.import_paths if (root / p).is_dir()]
    with _IMPORT_LOCK:
        prefix = f"{MODULE_PREFIX}{fingerprint[:16]}"
        if prefix in sys.modules:  # this fingerprint was loaded before (another loader): a fresh module tree
            prefix = f"{prefix}_{next(_suffixes)}"
        spec = importlib.machinery.ModuleSpec(prefix, None, is_package=True)
        spec.submodule_search_locations = locations
        sys.modules[prefix] = importlib.util.module_from_spec(spec)
        try:
            with registry.capture() as before, _package_import_scope(prefix, validated.importable_modules()):
                module, context_workflow = import_in_context(
                    lambda: importlib.import_module(f"{prefix}.{entry}"), context
                )
                after = registry.snapshot()
                workflows = {n: w for n, w in after["workflows"].items() if before["workflows"].get(n) is not w}
                for name, constructor in after["constructors"].items():
                    if before["constructors"].get(name) is not constructor:
                        built = constructor()
                        if not isinstance(built, Workflow):
                            raise TypeError(f"constructor of workflow {name!r} returned {type(built).__name__}")
                        workflows[name] = built
                workflows = merge_context_workflow(workflows, context_workflow)
                triggers = [t for n, t in after["triggers"].items() if before["triggers"].get(n) is not t]
        except (Exception, SystemExit) as exc:
            for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
                del sys.modules[key]
            if isinstance(exc, PackageError):
                raise
            raise PackageError(
                f"importing {entry!r} of package {manifest.package.name} {manifest.package.version} failed: "
                f"{type(exc).__name__}: {exc}",
                reason="import_failed",
                member=entry,
            ) from exc
    return ImportedCode(module, workflows, triggers)
