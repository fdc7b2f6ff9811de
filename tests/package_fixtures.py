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
import tarfile
from collections.abc import Callable
from pathlib import Path

from cloacina.packaging.archive import archive_bytes, compute_fingerprint, read_archive
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
    manifest = validated.manifest
    package = manifest.package.model_copy(update={"fingerprint": compute_fingerprint(sources)})
    return archive_bytes(manifest.model_copy(update={"package": package}), sources)


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
