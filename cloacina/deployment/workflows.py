"""Finding the workflow a run or a trigger names, in the order every process uses.

1. A run started from a ``.cloacina`` package carries the package's fingerprint: its workflow comes from this
   process's package loader (fetched from the registry table on first use), else from any other loader of the
   process.
2. Otherwise: a ``Workflow`` object handed to this runner directly, else the process-wide registry (workflows
   declared with ``WorkflowBuilder`` by imported code), else the active package of the registry that declares
   it (the runs of a package's ``@trigger(cron=...)`` schedule name its workflow only).
"""

from __future__ import annotations

import logging
import threading

from cloacina.definitions import registry
from cloacina.definitions.packages import package_workflow
from cloacina.definitions.workflow import Workflow
from cloacina.errors import WorkflowNotFoundError
from cloacina.packaging.loader import PackageLoader, PackageNotFoundError

log = logging.getLogger("cloacina.workflows")


class WorkflowCatalog:
    """Resolves workflows by name (and version and package) for one process."""

    def __init__(self, packages: PackageLoader | None = None) -> None:
        self.packages = packages
        self._local: dict[str, Workflow] = {}
        self._lock = threading.Lock()

    def get(self, workflow: str | Workflow) -> Workflow:
        """``workflow`` itself (remembered by name for later runs), or the workflow of that name."""
        if isinstance(workflow, Workflow):
            with self._lock:
                self._local[workflow.name] = workflow
            return workflow
        if not isinstance(workflow, str):
            raise TypeError(f"workflow must be a name or a Workflow, got {type(workflow).__name__}")
        with self._lock:
            found = self._local.get(workflow)
        if found is not None:
            return found
        try:
            return registry.get_workflow(workflow)
        except WorkflowNotFoundError:  # a deployed package's workflow (a package cron trigger's runs name it)
            packaged = self.packages.active_workflow(workflow) if self.packages is not None else None
            if packaged is None:
                raise
            return packaged

    def resolve(self, name: str, version: str, package_fingerprint: str | None = None) -> Workflow:
        """The workflow a stored run names (``RunCoordinator``'s resolver)."""
        if package_fingerprint is not None:
            if self.packages is not None:
                try:
                    return self.packages.workflow(package_fingerprint, name)
                except PackageNotFoundError:  # not in our registry: another loader of this process may know it
                    pass
            return package_workflow(package_fingerprint, name)
        workflow = self.get(name)
        if workflow.version != version:
            log.warning(
                "workflow %r changed since the run started (run has %s, code has %s); using the code",
                name,
                version,
                workflow.version,
            )
        return workflow
