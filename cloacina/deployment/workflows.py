"""Finding the workflow a run or a trigger names, in the order every process uses, and recording what it knows.

1. A run started from a ``.cloacina`` package carries the package's fingerprint: its workflow comes from this
   process's package loader (fetched from the registry table on first use), else from any other loader of the
   process.
2. Otherwise: a ``Workflow`` object handed to this runner directly, else the process-wide registry (workflows
   declared with ``WorkflowBuilder`` by imported code), else the active package of the registry that declares
   it (the runs of a package's ``@trigger(cron=...)`` schedule name its workflow only).

A process that executes no task itself (a runner in broker mode, a poller, a command-line tool) may also plan
runs of a workflow whose code it never imported: it finds the workflow in the store's catalog
(:mod:`cloacina.store.catalog`) and builds a *code-less* copy of it (the graph, the retry limits, the rules),
before trying the package registry. Such a run carries the catalog version, and the package fingerprint of a
package's workflow, so that the workers run exactly that code.

Versions: a run records the version (content hash) of the workflow it was planned with. A worker whose code has
another version runs it with its own code (with a warning) when both versions have the same tasks and
dependencies, so a rolling upgrade that changed task bodies or settings never fails the runs in flight; when the
graph differs it refuses (:class:`WorkflowVersionError`, the task is given back so that a worker with that version
can take it, and fails with that message if none does). An embedded runner (which planned the run itself, or
adopts runs of a previous process of its own after a code change) runs its code with a warning, as before. A
process that plans only uses the catalog's copy of the run's version when it has it.

Recording: :meth:`WorkflowCatalog.record` writes a workflow to the catalog once per process (remembered by name,
version and origin), so a process records what it registered when it starts and any workflow it meets later
on its first use, never per run. A catalog that cannot be written is logged, and tried again on the next use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from cloacina.definitions import registry
from cloacina.definitions.packages import package_workflow
from cloacina.definitions.workflow import Workflow
from cloacina.errors import CloacinaError, WorkflowNotFoundError
from cloacina.packaging.isolation import MODULE_PREFIX
from cloacina.packaging.loader import PackageLoader, PackageNotFoundError
from cloacina.store.catalog import (
    APP_ORIGIN,
    CODE_ORIGIN,
    PACKAGE_ORIGIN,
    CatalogEntry,
    CatalogStore,
    codeless_workflow,
    is_codeless,
)

log = logging.getLogger("cloacina.workflows")


class WorkflowVersionError(CloacinaError, ValueError):
    """A run was planned with a version of its workflow whose tasks or dependencies differ from the code of the
    process asked to run it."""

    def __init__(self, name: str, run_version: str, code_version: str) -> None:
        super().__init__(
            f"workflow {name!r}: the run was started with version {run_version}, this process has version "
            f"{code_version} of its code, with other tasks or dependencies; deploy the same code to the clients "
            "and the workers"
        )
        self.workflow_name = name
        self.run_version = run_version
        self.code_version = code_version


@dataclass(frozen=True)
class StartableWorkflow:
    """What a run is started with: the workflow, and the package whose code runs it (``None``: imported code)."""

    workflow: Workflow
    package_fingerprint: str | None = None


def _code_module(workflow: Workflow) -> str | None:
    """The module of the workflow's first task's function."""
    first = workflow.topological_order[0] if workflow.topological_order else next(iter(workflow.tasks), None)
    module = getattr(workflow.tasks[first].function, "__module__", None) if first is not None else None
    return module if isinstance(module, str) and module else None


def origin_of(workflow: Workflow) -> str:
    """``"app:<module>"`` for a workflow declared in an importable module (the module of its first task's function),
    else ``"code"`` (a script's ``__main__``, an interactive session)."""
    module = _code_module(workflow)
    if module is None or module == "__main__" or module.startswith(MODULE_PREFIX):
        return CODE_ORIGIN
    return APP_ORIGIN + module


def is_package_code(workflow: Workflow) -> bool:
    """``workflow`` was loaded from a ``.cloacina`` package (recorded with its package, where it is deployed)."""
    module = _code_module(workflow)
    return module is not None and module.startswith(MODULE_PREFIX)


class WorkflowCatalog:
    """Resolves workflows by name (and version and package) for one process, and records them in the catalog.

    ``plans_only``: this process executes no task (it may plan runs of cataloged workflows without their code).
    ``strict_versions``: refuse to run a stored run whose version has another task graph than this process's code
    (workers).
    """

    def __init__(
        self,
        packages: PackageLoader | None = None,
        store: CatalogStore | None = None,
        *,
        plans_only: bool = False,
        strict_versions: bool = False,
    ) -> None:
        self.packages = packages
        self.store = store
        self.plans_only = plans_only and store is not None
        self.strict_versions = strict_versions
        self._local: dict[str, Workflow] = {}
        self._codeless: dict[tuple[str, str], Workflow] = {}
        self._compatible: dict[tuple[str, str, str], bool] = {}
        self._recorded: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    # -- resolving ----------------------------------------------------------------------------------------
    def get(self, workflow: str | Workflow) -> Workflow:
        """``workflow`` itself (remembered by name for later runs), or the workflow of that name."""
        return self.find(workflow).workflow

    def find(self, workflow: str | Workflow) -> StartableWorkflow:
        """As :meth:`get`, with the package fingerprint a run of it must carry (set for a cataloged package's
        workflow planned without its code)."""
        if isinstance(workflow, Workflow):
            with self._lock:
                self._local[workflow.name] = workflow
            return StartableWorkflow(workflow)
        if not isinstance(workflow, str):
            raise TypeError(f"workflow must be a name or a Workflow, got {type(workflow).__name__}")
        with self._lock:
            found = self._local.get(workflow)
        if found is not None:
            return StartableWorkflow(found)
        try:
            return StartableWorkflow(registry.get_workflow(workflow))
        except WorkflowNotFoundError:
            if self.plans_only:  # the catalog first: no package code is imported only to plan a run
                entry = self._catalog_entry(workflow)
                if entry is not None:
                    return StartableWorkflow(self._codeless_of(entry), entry.package_fingerprint)
            # A deployed package's workflow (a package cron trigger's runs name it).
            packaged = self.packages.active_workflow(workflow) if self.packages is not None else None
            if packaged is None:
                if self.plans_only:  # name what could have been started here: the catalog's names too
                    known = [*registry.workflow_names(), *self._catalog_names()]
                    raise WorkflowNotFoundError(workflow, known) from None
                raise
            return StartableWorkflow(packaged)

    def resolve(self, name: str, version: str, package_fingerprint: str | None = None) -> Workflow:
        """The workflow a stored run names (``RunCoordinator``'s resolver)."""
        if self.plans_only:
            planned = self._codeless_version(name, version)
            if planned is not None:
                return planned
        if package_fingerprint is not None:
            if self.packages is not None:
                try:
                    return self.packages.workflow(package_fingerprint, name)
                except PackageNotFoundError:  # not in our registry: another loader of this process may know it
                    pass
            return package_workflow(package_fingerprint, name)
        workflow = self.get(name)
        if workflow.version != version:
            if self.strict_versions and not is_codeless(workflow) and not self._same_graph(name, version, workflow):
                raise WorkflowVersionError(name, version, workflow.version)
            log.warning(
                "workflow %r changed since the run started (run has %s, code has %s); using the code",
                name,
                version,
                workflow.version,
            )
        return workflow

    def _same_graph(self, name: str, version: str, workflow: Workflow) -> bool:
        """Whether a run of ``version`` can be run with ``workflow``'s code: the same tasks with the same
        dependencies (a rolling upgrade that only changed task bodies, callbacks or retry settings must not fail
        the runs in flight; the attempts a run allows were stored with its tasks). A version the catalog does not
        know is given the benefit of the doubt, as before there was a catalog."""
        key = (name, version, workflow.version)
        with self._lock:
            known = self._compatible.get(key)
        if known is not None:
            return known
        entry = None
        if self.store is not None:
            try:
                entry = self.store.get_version(name, version)
            except Exception as exc:  # the catalog is unreachable: decide as without one
                log.warning("cannot read the workflow catalog to compare versions of %r: %s", name, exc)
                return True
        same = entry is None or {t.task_id: sorted(t.dependencies) for t in entry.tasks} == {
            tid: sorted(task.dependencies) for tid, task in workflow.tasks.items()
        }
        with self._lock:
            self._compatible[key] = same
        return same

    def _catalog_entry(self, name: str) -> CatalogEntry | None:
        assert self.store is not None
        try:
            return self.store.get_workflow(name)
        except Exception as exc:  # the catalog is unreachable: the name stays unknown here
            log.warning("cannot read the workflow catalog to find %r: %s", name, exc)
            return None

    def _catalog_names(self) -> list[str]:
        assert self.store is not None
        try:
            return [entry.name for entry in self.store.list_workflows()]
        except Exception:  # only for the message
            return []

    def _codeless_version(self, name: str, version: str) -> Workflow | None:
        with self._lock:
            found = self._codeless.get((name, version))
        if found is not None or self.store is None:
            return found
        try:
            entry = self.store.get_version(name, version)
        except Exception as exc:
            log.warning("cannot read the workflow catalog to find %r version %s: %s", name, version, exc)
            return None
        return self._codeless_of(entry) if entry is not None else None

    def _codeless_of(self, entry: CatalogEntry) -> Workflow:
        key = (entry.name, entry.version)
        with self._lock:
            found = self._codeless.get(key)
        if found is None:
            found = codeless_workflow(entry)  # entries are immutable per (name, version): built once
            with self._lock:
                self._codeless[key] = found
        return found

    # -- recording ----------------------------------------------------------------------------------------
    def record(self, workflows: Iterable[Workflow], origin: str | None = None) -> None:
        """Record ``workflows`` in the catalog unless this process already did (``origin``: each workflow's
        :func:`origin_of` if not given). Code-less copies are never recorded back, nor package code without its
        package's origin. Never raises."""
        if self.store is None:
            return
        pending: list[tuple[Workflow, str]] = []
        with self._lock:
            for workflow in workflows:
                if origin is None and is_package_code(workflow):
                    continue  # a package's workflow met by name: its deploy recorded it, with its package
                where = origin or origin_of(workflow)
                key = (workflow.name, workflow.version, where)
                if key not in self._recorded and not is_codeless(workflow):
                    pending.append((workflow, where))
        if not pending:
            return
        try:
            self.store.record_all(pending)
        except Exception as exc:  # never stops a process from working; the next use tries again
            log.warning("cannot record workflows %s in the catalog: %s", ", ".join(w.name for w, _ in pending), exc)
            return
        with self._lock:
            self._recorded.update((w.name, w.version, where) for w, where in pending)

    def record_registered(self) -> None:
        """Record every workflow of the process-wide registry (what this process's imported code declared)."""
        names = registry.workflow_names()
        found = []
        for name in names:
            try:
                found.append(registry.get_workflow(name))
            except (WorkflowNotFoundError, ValueError) as exc:  # a constructor that fails: not recordable
                log.warning("workflow %r is not recorded in the catalog: %s", name, exc)
        self.record(found)

    def record_package(self, workflows: Iterable[Workflow], fingerprint: str) -> None:
        """Record the workflows of package ``fingerprint``."""
        self.record(workflows, PACKAGE_ORIGIN + fingerprint)

    def forget_package(self, fingerprint: str) -> None:
        """Remove the catalog entries of package ``fingerprint`` (replaced or removed). Never raises."""
        if self.store is None:
            return
        origin = PACKAGE_ORIGIN + fingerprint
        try:
            self.store.forget(origin)
        except Exception as exc:
            log.warning("cannot remove package %s from the workflow catalog: %s", fingerprint[:12], exc)
            return
        with self._lock:
            self._recorded = {key for key in self._recorded if key[2] != origin}
