"""Where workflows loaded from ``.cloacina`` packages live, keyed by package fingerprint.

Package code is imported in isolation (see :mod:`cloacina.packaging.loader`): its workflows do not enter the
global registry, so two versions of one package can be live at once and every run keeps the version it started
with. The loader registers a *resolver* here; the engine asks it for ``(fingerprint, workflow name)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloacina.errors import WorkflowNotFoundError

if TYPE_CHECKING:
    from cloacina.definitions.workflow import Workflow

PackageResolver = Callable[[str, str], "Workflow"]
_lock = threading.Lock()
_resolver: PackageResolver | None = None


def set_package_resolver(resolver: PackageResolver | None) -> None:
    """Install the function that returns the workflow ``name`` of the package with a given fingerprint."""
    global _resolver
    with _lock:
        _resolver = resolver


def package_workflow(fingerprint: str, name: str) -> Workflow:
    """The workflow ``name`` of package ``fingerprint``; ``WorkflowNotFoundError`` if no loader can provide it."""
    with _lock:
        resolver = _resolver
    if resolver is None:
        raise WorkflowNotFoundError(f"{name} (package {fingerprint[:12]})", [])
    return resolver(fingerprint, name)
