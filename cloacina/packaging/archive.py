"""``.cloacina`` archives: ours (deterministic gzip-compressed tars) and cloaca's, validated before any import.

Our layout: ``manifest.json`` at the root, the package source beside it (``pyproject.toml``, ``data_ingest/...``).
Cloaca's layouts (``package.toml`` with ``workflow/`` and ``vendor/``, or the older root ``manifest.json``) are
read by :mod:`~cloacina.packaging.cloaca_format` into our manifest, which stays the canonical form everywhere
(registry rows, loaders, the CLI). :func:`read_archive` recognises the form, then checks everything it can without
importing code or touching the disk (:mod:`~cloacina.packaging.members`): sizes, member types, member names, the
manifest's schema, the fingerprint (ours: as stored; cloaca's: computed), the entry module, that no importable
top-level module shadows the standard library or cloacina, and that this interpreter satisfies the package's
``requires_python``. :func:`extract_archive` writes only what was validated. :func:`archive_bytes` /
:func:`write_archive` are deterministic: manifest first, then files in path order, mtime 1980-01-01, uid/gid 0, no
owner names, mode 0644, gzip header mtime 0 and no file name.

Our fingerprint (the package's identity) is :func:`package_fingerprint`: SHA-256 over every regular file and the
manifest (as canonical JSON, its own ``fingerprint`` field left out), so editing a source file or the manifest
(renaming a trigger, say) changes it, and an archive edited after its build is rejected (``fingerprint_mismatch``)
instead of being taken for the version already deployed. Archives built before the manifest was covered carry the
older fingerprint over the sources only (:func:`~cloacina.packaging.members.compute_fingerprint`): they are
rejected with a hint to rebuild, except when read back from the database registry that stored them
(``legacy_fingerprint=True``), where they were validated when deployed.

>>> doc = {"package": {"name": "p", "version": "1", "fingerprint": ""}, "python": {"entry_module": "p"}}
>>> package_fingerprint({"p.py": b"x = 1\\n"}, doc) == package_fingerprint({"p.py": b"x = 1\\n"}, doc)
True
>>> renamed = {**doc, "triggers": [{"name": "renamed", "workflow": "w", "poll_interval": "1s"}]}
>>> package_fingerprint({"p.py": b"x = 1\\n"}, doc) == package_fingerprint({"p.py": b"x = 1\\n"}, renamed)
False
>>> normalize_member_name("./pkg//mod.py")
'pkg/mod.py'
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cloacina.packaging.cloaca_format import check_python_version, is_cloaca_manifest, read_cloaca_archive
from cloacina.packaging.manifest import MANIFEST_NAME, Manifest
from cloacina.packaging.members import (
    DEFAULT_LIMITS,
    FORBIDDEN_TOP_LEVEL,
    MAX_COMPRESSED_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    MAX_PATH_CHARS,
    MAX_TOTAL_BYTES,
    ArchiveLimits,
    PackageError,
    check_source_tree,
    compute_fingerprint,
    load_bytes,
    load_json_object,
    normalize_member_name,
    read_members,
    subtree,
    top_level_modules,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FIXED_MTIME",
    "FORBIDDEN_TOP_LEVEL",
    "MAX_COMPRESSED_BYTES",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_PATH_CHARS",
    "MAX_TOTAL_BYTES",
    "ArchiveLimits",
    "PackageError",
    "ValidatedArchive",
    "archive_bytes",
    "check_source_tree",
    "compute_fingerprint",
    "extract_archive",
    "fingerprinted",
    "normalize_member_name",
    "package_fingerprint",
    "read_archive",
    "top_level_modules",
    "write_archive",
    "write_atomically",
]

FIXED_MTIME = 315_532_800  # 1980-01-01T00:00:00Z, as zip tools use; every member gets it
_FINGERPRINT_DOMAIN = b"cloacina package: sources and manifest\n"  # never equal to a sources-only fingerprint


def package_fingerprint(files: Mapping[str, bytes], manifest: Manifest | Mapping[str, object]) -> str:
    """Our format's fingerprint: the source ``files`` and the manifest (a :class:`Manifest` or the parsed
    ``manifest.json``), with the manifest's own ``package.fingerprint`` left out."""
    document = json.loads(manifest.to_json()) if isinstance(manifest, Manifest) else copy.deepcopy(dict(manifest))
    package = document.get("package")
    if isinstance(package, dict):
        package.pop("fingerprint", None)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return compute_fingerprint({**files, MANIFEST_NAME: canonical}, domain=_FINGERPRINT_DOMAIN, skip=None)


def fingerprinted(manifest: Manifest, files: Mapping[str, bytes]) -> Manifest:
    """``manifest`` with the fingerprint of ``files`` and itself."""
    package = manifest.package.model_copy(update={"fingerprint": package_fingerprint(files, manifest)})
    return manifest.model_copy(update={"package": package})


@dataclass(frozen=True)
class ValidatedArchive:
    """An archive that passed static validation, held in memory: nothing was written or imported.

    ``files`` are the package's files by path relative to its root: for ours without ``manifest.json``; for a
    cloaca archive every file (its ``package.toml`` or older ``manifest.json`` included, its top directory
    stripped). ``manifest`` is always our canonical manifest, ``manifest_bytes`` its JSON.
    """

    manifest: Manifest
    manifest_bytes: bytes  # ours: manifest.json exactly as stored; cloaca's: the derived manifest's JSON
    files: Mapping[str, bytes]
    directories: frozenset[str] = field(default_factory=frozenset)
    archive: bytes = b""  # the compressed bytes as read

    @property
    def fingerprint(self) -> str:
        return self.manifest.package.fingerprint

    @property
    def name(self) -> str:
        return self.manifest.package.name

    @property
    def version(self) -> str:
        return self.manifest.package.version

    @property
    def size_bytes(self) -> int:
        return len(self.archive)

    @property
    def source_format(self) -> str:
        """``"cloacina"``, ``"cloaca"`` (package.toml) or ``"cloaca-manifest"`` (older manifest.json)."""
        return self.manifest.source_format

    @property
    def import_paths(self) -> list[str]:
        """Directories, relative to the extracted root (``""`` = the root), that hold the package's modules."""
        if self.manifest.origin is None:
            return [""]
        return ["" if p == "." else p for p in self.manifest.origin.import_paths]

    def importable_modules(self) -> set[str]:
        """Top-level module names the package defines on its import path."""
        names: set[str] = set()
        for where in self.import_paths:
            names |= top_level_modules(
                [*subtree(self.files, where), *(d + "/" for d in subtree(self.directories, where))]
            )
        return names - {"vendor"} if self.source_format == "cloaca-manifest" else names

    def members(self) -> dict[str, bytes]:
        """The files extraction writes: ours get their ``manifest.json`` back; cloaca's are written as they came."""
        if self.manifest.origin is None:
            return {**self.files, MANIFEST_NAME: self.manifest_bytes}
        return dict(self.files)

    def with_manifest(self, manifest: Manifest) -> ValidatedArchive:
        """The same archive described by ``manifest`` (a cloaca package's complete manifest, after discovery)."""
        if manifest.package.fingerprint != self.fingerprint:
            raise ValueError("with_manifest() must keep the package's fingerprint")
        return dataclasses.replace(self, manifest=manifest, manifest_bytes=manifest.to_json().encode("utf-8"))


# -- writing ---------------------------------------------------------------------------------------------
def archive_bytes(manifest: Manifest, files: Mapping[str, bytes]) -> bytes:
    """The deterministic ``.cloacina`` bytes: manifest first, then files in path order, fixed metadata."""
    buffer = io.BytesIO()
    members = [(MANIFEST_NAME, manifest.to_json().encode("utf-8"))]
    members += sorted(((p, d) for p, d in files.items() if p != MANIFEST_NAME), key=lambda m: m[0].encode("utf-8"))
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, data in members:
            tar.addfile(fixed_info(path, len(data)), io.BytesIO(data))
    return buffer.getvalue()


def fixed_info(path: str, size: int | None = None) -> tarfile.TarInfo:
    """A tar header with the fixed metadata of deterministic archives (a directory when ``size`` is ``None``)."""
    info = tarfile.TarInfo(path)
    if size is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.size = size
        info.mode = 0o644
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(out_dir: str | os.PathLike[str], manifest: Manifest, files: Mapping[str, bytes]) -> Path:
    """Write ``OUT_DIR/NAME-VERSION.cloacina`` (fingerprint set from ``files`` and the manifest), validated like any
    other archive."""
    manifest = fingerprinted(manifest, files)
    data = archive_bytes(manifest, files)
    read_archive(data, runtime_checks=False)  # the same static checks a reconciler runs
    package = manifest.package
    return write_atomically(Path(out_dir) / f"{package.name}-{package.version}.cloacina", data)


def write_atomically(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


# -- reading ---------------------------------------------------------------------------------------------
def _parse_manifest(document: dict[str, object]) -> Manifest:
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise PackageError(
            f"manifest.json does not match the schema: {problems}", reason="invalid_manifest", member=MANIFEST_NAME
        ) from None


def read_archive(
    source: str | os.PathLike[str] | bytes,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    *,
    runtime_checks: bool = True,
    legacy_fingerprint: bool = False,
) -> ValidatedArchive:
    """Validate a ``.cloacina`` file (path or bytes, ours or cloaca's) in memory; nothing is extracted or imported.

    ``runtime_checks=False`` skips what depends on this interpreter (``requires_python``): for inspecting.
    ``legacy_fingerprint=True`` also accepts the older sources-only fingerprint (archives read back from the
    database registry, validated when they were deployed).
    """
    data = load_bytes(source, limits)
    files, dirs = read_members(data, limits)
    raw_manifest = files.get(MANIFEST_NAME)
    document = load_json_object(raw_manifest, MANIFEST_NAME) if raw_manifest is not None else None
    if document is None or is_cloaca_manifest(document):
        layout = read_cloaca_archive(files, dirs, document)
        validated = ValidatedArchive(
            manifest=layout.manifest,
            manifest_bytes=layout.manifest.to_json().encode("utf-8"),
            files=layout.files,
            directories=layout.directories,
            archive=data,
        )
    else:
        files.pop(MANIFEST_NAME)
        manifest = _parse_manifest(document)
        check_source_tree(files, dirs, manifest.python.entry_module)
        _check_fingerprint(files, document, manifest.package.fingerprint, legacy_fingerprint)
        validated = ValidatedArchive(
            manifest=manifest,
            manifest_bytes=raw_manifest or b"",
            files=files,
            directories=frozenset(dirs),
            archive=data,
        )
    if runtime_checks:
        member = {"cloaca": "package.toml", "cloaca-manifest": MANIFEST_NAME}.get(
            validated.source_format, MANIFEST_NAME
        )
        check_python_version(validated.manifest.python.requires_python, member)
    return validated


def _check_fingerprint(files: Mapping[str, bytes], document: dict[str, object], stated: str, legacy: bool) -> None:
    actual = package_fingerprint(files, document)
    if actual == stated:
        return
    sources_only = compute_fingerprint(files) == stated
    if sources_only and legacy:
        return
    hint = (
        " (it covers the sources only: the archive was built by an older cloacina, or its manifest was edited "
        "after the build; rebuild it with `cloacina package build`)"
        if sources_only
        else ""
    )
    raise PackageError(
        f"fingerprint mismatch: manifest says {stated}, the sources and manifest hash to {actual}{hint}",
        reason="fingerprint_mismatch",
    )


def extract_archive(validated: ValidatedArchive, dest_dir: str | os.PathLike[str]) -> Path:
    """Write a validated archive's members (ours with its manifest) under ``dest_dir``, never outside it."""
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name in sorted(validated.directories):
        _inside(root, name).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, data in sorted(validated.members().items()):
        target = _inside(root, name)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return root


def _inside(root: Path, name: str) -> Path:
    target = root.joinpath(*normalize_member_name(name).split("/"))
    if not target.resolve().is_relative_to(root):  # belt and braces: names were normalised already
        raise PackageError(f"member {name!r} would be written outside {root}", reason="unsafe_path", member=name)
    return target
