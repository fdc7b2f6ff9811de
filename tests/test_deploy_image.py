"""The Dockerfile (issue 13): ``hadolint`` passes, the base image is pinned by digest, dependencies come from a
hash-checked lock in a layer that sees no source (a source change rebuilds only the last layers), no build tools,
an init process (tini) as PID 1, a non-root user. No Docker engine runs here: the image is never built (README).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy_tools import ROOT, require_tool, run

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"


def instructions() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        out.append((current + line).strip())
        current = ""
    return out


def stages() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    name = None
    for line in instructions():
        if line.upper().startswith("FROM "):
            parts = line.split()
            name = parts[3] if len(parts) >= 4 and parts[2].upper() == "AS" else f"stage{len(found)}"
            found[name] = [line]
        elif name is not None:
            found[name].append(line)
    return found


def test_hadolint_passes() -> None:
    result = run([require_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    """The check above can fail: an unpinned apt package is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n")
    result = run([require_tool("hadolint"), str(bad)])
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_base_image_is_pinned_by_digest() -> None:
    arg = next(line for line in instructions() if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
    for name, lines in stages().items():
        base = lines[0].split()[1]
        assert base in ("${PYTHON_IMAGE}", "base"), f"stage {name} starts from {base}"


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    found = stages()
    deps = found["deps"]
    assert not any(line.startswith(("COPY cloacina", "COPY pyproject.toml", "COPY .")) for line in deps)
    download = next(line for line in deps if "pip download" in line)
    assert "--require-hashes" in download and "--only-binary=:all:" in download and "requirements.lock" in download
    runtime = found["runtime"]
    installs = [i for i, line in enumerate(runtime) if "pip install" in line]
    assert "from=deps" in runtime[installs[0]] and "from=app" in runtime[installs[1]]  # deps layer first
    assert "pip check" in runtime[installs[1]] and "cloacina --version" in runtime[installs[1]]


def test_no_build_tools_anywhere() -> None:
    for line in instructions():
        if line.startswith("RUN "):
            assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b|-dev\b", line), line


def test_tini_is_pid_1_and_the_user_is_not_root() -> None:
    runtime = stages()["runtime"]
    assert any(re.search(r"apt-get install .*\btini=[0-9]", line) for line in runtime)
    assert 'ENTRYPOINT ["tini", "--"]' in runtime
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1] == "10001:10001"
    env = " ".join(line for line in runtime if line.startswith("ENV ")) + " ".join(stages()["base"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_the_lock_pins_every_dependency_of_the_image_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["distributed"]]
    for spec in wanted:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate({"platform_system": "Linux"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: regenerate it (see the Dockerfile)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {spec}"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    assert all("--hash=sha256:" in block for block in blocks if "==" in block.split("\n")[0])
    assert "--find-links" not in LOCK.read_text() and "--index-url" not in LOCK.read_text()


def test_dockerignore_lets_in_exactly_what_is_copied() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in lines if line.startswith("!")]
    assert "*" in lines, ".dockerignore should be an allow-list"
    for line in instructions():
        if line.startswith("COPY ") and "--from" not in line:
            sources = [t for t in line.split()[1:-1] if not t.startswith("--")]
            for src in sources:
                src = src.rstrip("/")
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded"
                assert (ROOT / src).exists(), src
    assert ".env" not in allowed
