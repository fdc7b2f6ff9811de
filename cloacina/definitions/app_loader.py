"""Import the user's application: the module whose import registers workflows, tasks and triggers.

``cloacina run APP`` and ``cloacina worker --app APP`` both take APP in one of three forms, resolved from the
current directory:

- a module name, ``myproject.flows`` (the current directory is put on ``sys.path`` first, as ``python -m`` does);
- a path to a ``.py`` file, ``flows/ingest.py`` (its directory goes on ``sys.path``, as ``python file.py`` does, so
  it can import its neighbours);
- a path to a package directory, ``flows/`` (it must hold ``__init__.py``; its parent goes on ``sys.path``).

Every failure is an :class:`AppLoadError` (a ``ValueError``) whose message says what was looked for and, when the
app's own code raised, the original exception type, message and location:

>>> load_app("no/such/app.py")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
cloacina.definitions.app_loader.AppLoadError: app file 'no/such/app.py' not found (looked for .../no/such/app.py)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

__all__ = ["AppLoadError", "load_app"]

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class AppLoadError(ValueError):
    """The application could not be found or imported; ``spec`` is what the user passed."""

    def __init__(self, message: str, *, spec: str) -> None:
        super().__init__(message)
        self.spec = spec


def load_app(spec: str) -> ModuleType:
    """Import the application named by ``spec`` (module name, ``.py`` file or package directory).

    Importing twice returns the module imported the first time, as ``import`` does.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AppLoadError("app must be a module name or a path to a .py file or package directory", spec=str(spec))
    spec = spec.strip()
    if _looks_like_path(spec):
        return _load_path(spec)
    return _load_module_name(spec)


def _looks_like_path(spec: str) -> bool:
    # "flows" may be a module or a directory: import it as a module (a package directory imports the same way).
    return spec.endswith(".py") or os.sep in spec or "/" in spec or not _MODULE_NAME.match(spec) or os.path.isfile(spec)


def _prepend_sys_path(directory: Path) -> None:
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _load_module_name(name: str) -> ModuleType:
    cwd = Path.cwd()
    _prepend_sys_path(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Distinguish "the app itself does not exist" from "the app imports something that does not exist".
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"no module named {name!r} (searched the current directory {cwd} and sys.path); "
                "pass an importable module name or a path to a .py file",
                spec=name,
            ) from exc
        raise _import_failed(name, exc) from exc
    except (Exception, SystemExit) as exc:
        raise _import_failed(name, exc) from exc


def _load_path(spec: str) -> ModuleType:
    path = Path(spec).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    absolute = Path(os.path.normpath(absolute))
    if not absolute.exists():
        kind = "file" if spec.endswith(".py") else "file or directory"
        raise AppLoadError(f"app {kind} {spec!r} not found (looked for {absolute})", spec=spec)
    if absolute.is_dir():
        init = absolute / "__init__.py"
        if not init.is_file():
            raise AppLoadError(
                f"app directory {spec!r} is not a Python package (it has no __init__.py); "
                "pass the .py file that defines your workflows instead",
                spec=spec,
            )
        return _exec_file(spec, absolute.name, init, package_dir=absolute)
    if absolute.suffix != ".py":
        raise AppLoadError(f"app file {spec!r} is not a Python file (expected a name ending in .py)", spec=spec)
    return _exec_file(spec, absolute.stem, absolute, package_dir=None)


def _exec_file(spec: str, name: str, file: Path, *, package_dir: Path | None) -> ModuleType:
    if not _MODULE_NAME.match(name) or "." in name:
        raise AppLoadError(
            f"app {spec!r}: {name!r} is not a valid Python module name; rename it (letters, digits, '_')",
            spec=spec,
        )
    existing = sys.modules.get(name)
    if existing is not None:
        existing_file = getattr(existing, "__file__", None)
        if existing_file is not None and Path(existing_file).resolve() == file.resolve():
            return existing
        where = existing_file or "a built-in module"
        raise AppLoadError(
            f"app {spec!r} would be imported as module {name!r}, but a module of that name is already loaded "
            f"from {where}; rename the app",
            spec=spec,
        )
    search = [str(package_dir)] if package_dir is not None else None
    module_spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=search)
    if module_spec is None or module_spec.loader is None:
        raise AppLoadError(f"app {spec!r}: Python cannot import {file}", spec=spec)
    _prepend_sys_path((package_dir or file).parent)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec, so the app's own modules can import it back
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise _import_failed(spec, exc) from exc
    return module


def _import_failed(spec: str, exc: BaseException) -> AppLoadError:
    """An error that names the original exception and where in the user's code it was raised."""
    if isinstance(exc, SystemExit):
        return AppLoadError(f"importing app {spec!r} called sys.exit({exc.code!r})", spec=spec)
    where = ""
    if not isinstance(exc, SyntaxError):  # a SyntaxError's message already names file and line
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
        if frames:
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return AppLoadError(f"importing app {spec!r} failed: {type(exc).__name__}: {exc}{where}", spec=spec)
