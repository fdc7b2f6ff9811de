"""``cloacina package build`` for a cloaca package directory: ``package.toml`` plus ``workflow/`` (and ``vendor/``).

The result is a cloaca-format archive, the same format cloaca's own ``pack`` writes, so it deploys on cloaca as
well as here: ``NAME-VERSION.cloacina``, a bzip2-compressed tar with one top directory ``NAME-VERSION/`` holding
the package's files (``package.toml`` verbatim, ``workflow/``, ``vendor/``, anything else in the directory except
caches, VCS data and build outputs). It is deterministic: directories and files in path order, mtime 1980-01-01,
uid/gid 0, no owner names, modes 0755/0644.

Before writing it, the build runs the checks every loader runs: the archive's static validation
(:func:`~cloacina.packaging.archive.read_archive`, which derives our canonical manifest from ``package.toml``),
then an import in a child process (:func:`~cloacina.packaging.verify.verify_archive`: at least one task, every
trigger bound to a workflow of the package). Our manifest is not written into the archive: loaders derive it.

Example (not run here, it spawns a process)::

    path = build_cloaca_package("my-pipeline", "dist")   # dist/data-pipeline-1.0.0.cloacina
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from cloacina.packaging.archive import fixed_info, read_archive, write_atomically
from cloacina.packaging.builder import collect_sources
from cloacina.packaging.cloaca_manifest import PACKAGE_TOML
from cloacina.packaging.discover import IMPORT_TIMEOUT_S
from cloacina.packaging.manifest import Manifest
from cloacina.packaging.members import PackageError
from cloacina.packaging.verify import verify_archive


def is_cloaca_source(src_dir: str | os.PathLike[str]) -> bool:
    """Whether ``src_dir`` is a cloaca package directory (it has a ``package.toml``)."""
    return (Path(src_dir) / PACKAGE_TOML).is_file()


def cloaca_archive_bytes(top: str, files: dict[str, bytes]) -> bytes:
    """The deterministic bzip2 tar of ``files`` under ``top/`` (directories get entries, as ``tar`` writes them)."""
    directories = {top}
    for path in files:
        parts = path.split("/")[:-1]
        directories.update(f"{top}/{'/'.join(parts[: i + 1])}" for i in range(len(parts)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2", format=tarfile.PAX_FORMAT, compresslevel=9) as tar:
        for directory in sorted(directories, key=lambda d: d.encode("utf-8")):
            tar.addfile(fixed_info(directory))
        for path in sorted(files, key=lambda p: p.encode("utf-8")):
            tar.addfile(fixed_info(f"{top}/{path}", len(files[path])), io.BytesIO(files[path]))
    return buffer.getvalue()


def build_cloaca(
    src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] = ".", timeout_s: float = IMPORT_TIMEOUT_S
) -> tuple[Path, Manifest]:
    """Build ``OUT_DIR/NAME-VERSION.cloacina`` (cloaca's format); the path and the package's complete manifest."""
    if not is_cloaca_source(src_dir):
        raise PackageError(f"no {PACKAGE_TOML} in {str(src_dir)!r}", reason="source", member=PACKAGE_TOML)
    files = collect_sources(src_dir)
    probe = read_archive(cloaca_archive_bytes("package", files), runtime_checks=False)  # name and version
    top = f"{probe.name}-{probe.version}"
    data = cloaca_archive_bytes(top, files)
    manifest = verify_archive(read_archive(data, runtime_checks=False), timeout_s=timeout_s)
    return write_atomically(Path(out_dir) / f"{top}.cloacina", data), manifest


def build_cloaca_package(
    src_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] = ".", timeout_s: float = IMPORT_TIMEOUT_S
) -> Path:
    """Build ``OUT_DIR/NAME-VERSION.cloacina`` (cloaca's format) from ``src_dir``; ``PackageError`` says why not."""
    return build_cloaca(src_dir, out_dir, timeout_s)[0]
