"""Package builders shared by the registry, reconciler and worker tests.

:func:`build_ingest` writes a variant of the tutorial-08 ``data_ingest`` package (same module name, workflow and
trigger; a version of our choosing, a fast poll interval, a task that can be held at a gate) and builds it with
the real builder. :func:`repackage` re-packs an archive with edited sources and a correct fingerprint, so that
only the check under test fails; :func:`with_member` adds a raw tar member no builder would write.

>>> sorted(INGEST_FILES)
['data_ingest/__init__.py', 'pyproject.toml']
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from cloacina.packaging.archive import archive_bytes, fingerprinted, read_archive
from cloacina.packaging.builder import build_package

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_PACKAGE = REPO_ROOT / "examples" / "packages" / "data_ingest"

PYPROJECT = """\
[project]
name = "data-ingest"
version = "{version}"
description = "File ingestion workflow with inbox watcher trigger"
requires-python = ">=3.10"

[tool.cloaca]
entry_module = "data_ingest"
"""

CODE = """\
import os
import time
from datetime import datetime

import cloaca

with cloaca.WorkflowBuilder("data_ingest") as builder:
    builder.description("Ingest data files detected by trigger")

    @cloaca.task(id="validate")
    def validate(context):
        gate = os.environ.get("INGEST_GATE")  # tests hold a run here to upgrade the package under it
        deadline = time.monotonic() + 30
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        context.set("valid", True)
        return context

    @cloaca.task(id="load", dependencies=["validate"])
    def load(context):
        context.set("loaded_at", datetime.now().isoformat())
        context.set("package_version", "{version}")
        context.set("module", __name__)
        context.set("module_file", __file__)
        context.set("pid", os.getpid())
        return context


@cloaca.trigger(name="inbox_watcher", poll_interval="{poll}", allow_concurrent=False)
def inbox_watcher():
    inbox = os.environ.get("INBOX_PATH", "/data/inbox/")
    found = sorted(f for f in os.listdir(inbox) if f.endswith(".parquet")) if os.path.isdir(inbox) else []
    if found:
        return cloaca.TriggerResult.fire(cloaca.Context({{"filename": found[0], "trigger_name": "inbox_watcher"}}))
    return cloaca.TriggerResult.skip()
"""

INGEST_FILES = {"pyproject.toml": PYPROJECT, "data_ingest/__init__.py": CODE}


def write_sources(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def build_ingest(
    tmp: Path, *, version: str = "1.0.0", poll: str = "100ms", extra: dict[str, str] | None = None
) -> Path:
    """Build the ``data_ingest`` variant; returns the ``.cloacina`` path (in ``tmp/dist-<version>``)."""
    files = {rel: text.format(version=version, poll=poll) for rel, text in INGEST_FILES.items()}
    src = write_sources(tmp / f"src-{version}-{poll}", {**files, **(extra or {})})
    return build_package(src, tmp / f"dist-{version}-{poll}")


def repackage(data: bytes, change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> bytes:
    """``data`` with its sources edited by ``change``, the manifest kept, the fingerprint recomputed."""
    validated = read_archive(data)
    sources = change(dict(validated.files))
    return archive_bytes(fingerprinted(validated.manifest, sources), sources)


def with_member(data: bytes, name: str, content: bytes | None = b"", kind: bytes = tarfile.REGTYPE,
                linkname: str = "") -> bytes:  # fmt: skip
    """``data`` plus one raw tar member (links, ``..`` paths, oversize files: what no builder writes)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    extra = tarfile.TarInfo(name)
    extra.type = kind
    extra.linkname = linkname
    members.append((extra, content if kind == tarfile.REGTYPE else None))
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as out:
        for info, body in members:
            if body is not None:
                info.size = len(body)
            out.addfile(info, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


# -- cloaca's archive forms ----------------------------------------------------------------------------------
CLOACA_TOML = """\
[package]
name = "{name}"
version = "{version}"
interface = "cloacina-workflow-plugin"
interface_version = 1
extension = "cloacina"

[metadata]
language = "python"
workflow_name = "{workflow}"
entry_module = "{entry}"
description = "ETL pipeline for analytics data"
author = "you@example.com"
requires_python = ">=3.10"
"""

#: Today's cloaca: bare module-level decorators; the loader supplies the workflow context.
CLOACA_TASKS = """\
import cloaca

from . import helpers


@cloaca.task(dependencies=[])
def extract(context):
    context.set("raw", helpers.numbers())
    return context


@cloaca.task(dependencies=["extract"])
def transform(context):
    context.set("total", sum(context.get("raw")))
    context.set("module", __name__)
    return context


@cloaca.trigger(on="{workflow}", poll_interval="100ms")
def new_data():
    return cloaca.TriggerResult.fire(cloaca.Context({{"source": "trigger"}}))
"""


def cloaca_sources(*, name: str = "data-pipeline", version: str = "1.0.0", workflow: str = "data_pipeline",
                   tasks: str = CLOACA_TASKS) -> dict[str, str]:  # fmt: skip
    """A cloaca package directory (``package.toml``, ``workflow/data_pipeline/``) as relative path -> text."""
    return {
        "package.toml": CLOACA_TOML.format(name=name, version=version, workflow=workflow, entry="data_pipeline.tasks"),
        "workflow/data_pipeline/__init__.py": "",
        "workflow/data_pipeline/helpers.py": "def numbers():\n    return [1, 2, 3]\n",
        "workflow/data_pipeline/tasks.py": tasks.format(workflow=workflow),
    }


def tar_bytes(members: dict[str, bytes | str | None], compression: str = "bz2",
              raw: list[tarfile.TarInfo] | None = None) -> bytes:  # fmt: skip
    """A tar written the way ``tar -cjf`` would (``None`` = a directory), plus ``raw`` headers (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:  # type: ignore[call-overload]
        for path, body in members.items():
            info = tarfile.TarInfo(path)
            if body is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            data = body.encode() if isinstance(body, str) else body
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in raw or []:
            tar.addfile(info)
    return buffer.getvalue()


def cloaca_archive(files: dict[str, str] | None = None, *, top: str = "data-pipeline-1.0.0",
                   extra: dict[str, bytes | str | None] | None = None, compression: str = "bz2") -> bytes:  # fmt: skip
    """A ``.cloacina`` file as cloaca packs it: bzip2 tar, everything under ``top/`` (plus ``extra`` members)."""
    sources = cloaca_sources() if files is None else files
    members: dict[str, bytes | str | None] = {f"{top}/": None}
    members.update({f"{top}/{path}": text for path, text in sources.items()})
    members.update(extra or {})
    return tar_bytes(members, compression)


#: The older documented form: a WorkflowBuilder block; the trigger is bound by manifest.json.
OLDER_CODE = """\
import cloaca

with cloaca.WorkflowBuilder("data_pipeline") as builder:
    builder.description("ETL pipeline, older packaging")

    @cloaca.task(id="extract")
    def extract(context):
        context.set("raw", [4, 5, 6])
        return context

    @cloaca.task(id="load", dependencies=["extract"])
    def load(context):
        context.set("total", sum(context.get("raw")))
        context.set("module", __name__)
        return context


@cloaca.trigger(name="inbox_watcher", poll_interval="5s")
def inbox_watcher():
    return cloaca.TriggerResult.fire(cloaca.Context({"source": "older"}))
"""


def older_manifest(**changes: object) -> dict[str, object]:
    """Cloaca's older ``manifest.json`` (format "2") for :data:`OLDER_CODE`; ``changes`` replace top-level keys."""
    document: dict[str, object] = {
        "format_version": "2",
        "package": {
            "name": "data-pipeline",
            "version": "1.0.0",
            "description": "ETL pipeline for analytics data",
            "fingerprint": "sha256:placeholder",
            "targets": ["linux-x86_64", "linux-arm64", "macos-x86_64", "macos-arm64"],
        },
        "language": "python",
        "python": {"requires_python": ">=3.10", "entry_module": "data_pipeline"},
        "tasks": [
            {"id": "extract", "function": "data_pipeline:extract", "dependencies": []},
            {"id": "load", "function": "data_pipeline:load", "dependencies": ["extract"], "retries": 2},
        ],
        "triggers": [
            {
                "name": "inbox_watcher",
                "trigger_type": "python",
                "workflow": "data-pipeline",  # the package's name stands for its only workflow
                "poll_interval": "100ms",
                "allow_concurrent": False,
                "config": {"path": "/data/inbox/"},
            }
        ],
        "created_at": "2026-01-15T10:30:00Z",
    }
    document.update(changes)
    return document


def older_archive(manifest: dict[str, object] | None = None, code: str = OLDER_CODE,
                  extra: dict[str, bytes | str | None] | None = None, compression: str = "bz2") -> bytes:  # fmt: skip
    """An older-form archive as its docs built it (``cd build && tar -cjf ../x.cloacina .``)."""
    members: dict[str, bytes | str | None] = {
        "./": None,
        "./manifest.json": json.dumps(older_manifest() if manifest is None else manifest, indent=2),
        "./data_pipeline/": None,
        "./data_pipeline/__init__.py": code,
    }
    members.update(extra or {})
    return tar_bytes(members, compression)
