"""``.cloacina`` archives: deterministic gzip-compressed tar files, and their validation before any import.

Layout: ``manifest.json`` at the root, the package source beside it (``pyproject.toml``, ``data_ingest/...``).
:func:`read_archive` checks everything it can without importing code or touching the disk: sizes (counted while
decompressing, so a gzip bomb stops at the limit), member types (regular files and directories only), member
names (relative, normalised, no ``..``), the manifest's schema, the fingerprint, the entry module, and that no
top-level module shadows the standard library or cloacina. Every failure is a :class:`PackageError` whose
``reason`` is a short code and whose message names the offending member. :func:`extract_archive` writes only
what was validated. :func:`archive_bytes` / :func:`write_archive` are deterministic: manifest first, then files
in path order, mtime 1980-01-01, uid/gid 0, no owner names, mode 0644, gzip header mtime 0 and no file name.

Fingerprint (the package's identity): SHA-256 over the source files, i.e. every regular file except the root
``manifest.json``, taken in order of their UTF-8 encoded relative POSIX paths; each file contributes
``path || 0x00 || str(len(content)) || 0x00 || content`` (lengths in ASCII decimal). Directories, modes and
times do not count. So editing ``manifest.json`` keeps the fingerprint; editing any source file changes it.

>>> compute_fingerprint({"a.py": b"x = 1\\n"}) == compute_fingerprint({"a.py": b"x = 1\\n"})
True
>>> normalize_member_name("./pkg//mod.py")
'pkg/mod.py'
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cloacina.errors import CloacinaError
from cloacina.packaging.manifest import MANIFEST_NAME, Manifest

MiB = 1024 * 1024
MAX_COMPRESSED_BYTES = 20 * MiB  #: size of the .cloacina file itself
MAX_TOTAL_BYTES = 50 * MiB  #: sum of all member sizes once decompressed
MAX_FILE_BYTES = 10 * MiB  #: any single member
MAX_FILES = 2000  #: members (files and directories)
MAX_MANIFEST_BYTES = 1 * MiB
MAX_PATH_CHARS = 1024
_TAR_OVERHEAD_BYTES = 8 * MiB  # headers and padding allowed on top of MAX_TOTAL_BYTES in the raw tar stream
FIXED_MTIME = 315_532_800  # 1980-01-01T00:00:00Z, as zip tools use; every member gets it

#: Top-level names a package may not define: importing them would replace the real module for the process.
FORBIDDEN_TOP_LEVEL = frozenset(sys.stdlib_module_names) | {"cloacina", "cloaca", "sitecustomize", "usercustomize"}
_FORBIDDEN_FOLDED = frozenset(n.casefold() for n in FORBIDDEN_TOP_LEVEL)  # case-insensitive file systems
_MODULE_SUFFIXES = (".py", ".pyc", ".pyw", ".so", ".pyd")


class PackageError(CloacinaError, ValueError):
    """A package or its archive is invalid; ``reason`` is a short code, ``member`` the offending path if any."""

    def __init__(self, message: str, *, reason: str, member: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.member = member


@dataclass(frozen=True)
class ArchiveLimits:
    """Resource limits applied while reading or building an archive (tests pass smaller ones)."""

    compressed_bytes: int = MAX_COMPRESSED_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    file_bytes: int = MAX_FILE_BYTES
    files: int = MAX_FILES


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ValidatedArchive:
    """An archive that passed static validation, held in memory: nothing was written or imported."""

    manifest: Manifest
    manifest_bytes: bytes  # manifest.json exactly as stored
    files: Mapping[str, bytes]  # source files by normalised path (manifest.json excluded)
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


# -- names and trees -------------------------------------------------------------------------------------
def normalize_member_name(name: str) -> str:
    """The safe relative POSIX form of an archive member name; ``PackageError`` if it is unsafe."""

    def unsafe(why: str) -> PackageError:
        return PackageError(f"unsafe member name {name!r}: {why}", reason="unsafe_path", member=name)

    if not name or len(name) > MAX_PATH_CHARS:
        raise unsafe(f"empty or longer than {MAX_PATH_CHARS} characters")
    if "\x00" in name or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise unsafe("contains NUL or control characters")
    if "\\" in name:
        raise unsafe("contains a backslash")
    if name.startswith("/"):
        raise unsafe("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise unsafe("names the archive root")
    if ".." in parts:
        raise unsafe("contains '..'")
    if ":" in parts[0]:
        raise unsafe("looks like a drive or URL prefix")
    if any(len(p.encode("utf-8")) > 255 for p in parts):
        raise unsafe("a path component is longer than 255 bytes")
    return "/".join(parts)


def top_level_modules(paths: Iterable[str]) -> set[str]:
    """Names the paths would make importable from the archive root (``pkg/`` gives ``pkg``, ``mod.py`` ``mod``)."""
    names: set[str] = set()
    for path in paths:
        first, sep, _ = path.partition("/")
        if sep:
            names.add(first)
        elif first.endswith(_MODULE_SUFFIXES):
            names.add(first.split(".", 1)[0])
    return names


def check_source_tree(
    files: Mapping[str, bytes], directories: Iterable[str] = (), entry_module: str | None = None
) -> None:
    """File/directory conflicts, standard-library shadowing and (if given) the entry module's presence.

    Size and count limits are enforced by whoever reads the files (:func:`collect_sources`, :func:`read_archive`).
    """
    dirs = set(directories)
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                raise PackageError(
                    f"member {path!r} lies under {parent!r}, which is a file", reason="unsafe_path", member=path
                )
        if path in dirs:
            raise PackageError(f"member {path!r} is both a file and a directory", reason="unsafe_path", member=path)
    for name in sorted(top_level_modules([*files, *(d + "/" for d in dirs)])):
        if name.casefold() in _FORBIDDEN_FOLDED:
            what = "cloacina itself" if name.casefold() in ("cloacina", "cloaca") else "a standard library module"
            raise PackageError(
                f"top-level module {name!r} would shadow {what}; rename it", reason="shadows_stdlib", member=name
            )
    if entry_module is not None:
        base = entry_module.replace(".", "/")
        if f"{base}.py" not in files and f"{base}/__init__.py" not in files:
            raise PackageError(
                f"entry module {entry_module!r} not found: expected {base}.py or {base}/__init__.py in the package",
                reason="missing_entry_module",
                member=entry_module,
            )


def compute_fingerprint(files: Mapping[str, bytes]) -> str:
    """SHA-256 hex digest of the source files (see the module docstring for the exact definition)."""
    digest = hashlib.sha256()
    for path in sorted((p for p in files if p != MANIFEST_NAME), key=lambda p: p.encode("utf-8")):
        data = files[path]
        digest.update(path.encode("utf-8") + b"\x00" + str(len(data)).encode("ascii") + b"\x00")
        digest.update(data)
    return digest.hexdigest()


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
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(out_dir: str | os.PathLike[str], manifest: Manifest, files: Mapping[str, bytes]) -> Path:
    """Write ``OUT_DIR/NAME-VERSION.cloacina`` (fingerprint set from ``files``), validated like any other archive."""
    package = manifest.package.model_copy(update={"fingerprint": compute_fingerprint(files)})
    data = archive_bytes(manifest.model_copy(update={"package": package}), files)
    read_archive(data)  # the same static checks a reconciler runs
    return write_atomically(Path(out_dir) / f"{package.name}-{package.version}.cloacina", data)


def write_atomically(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


# -- reading ---------------------------------------------------------------------------------------------
class _BoundedReader:
    """Reads decompressed bytes and fails as soon as more than ``limit`` came out (the gzip-bomb guard)."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        budget = self._limit - self.count + 1
        chunk = self._raw.read(budget if size is None or size < 0 else min(size, budget))
        self.count += len(chunk)
        if self.count > self._limit:
            raise PackageError(f"archive expands to more than {self._limit} bytes (gzip bomb?)", reason="too_large")
        return chunk


def _load_bytes(source: str | os.PathLike[str] | bytes, limits: ArchiveLimits) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > limits.compressed_bytes:
                raise PackageError(
                    f"{path.name} is {size} bytes; the limit is {limits.compressed_bytes}", reason="too_large"
                )
            with path.open("rb") as handle:
                data = handle.read(limits.compressed_bytes + 1)
        except OSError as exc:
            raise PackageError(f"cannot read {str(path)!r}: {exc.strerror or exc}", reason="not_an_archive") from exc
    if len(data) > limits.compressed_bytes:
        raise PackageError(f"archive is {len(data)} bytes; the limit is {limits.compressed_bytes}", reason="too_large")
    return data


def _read_members(data: bytes, limits: ArchiveLimits) -> tuple[dict[str, bytes], set[str]]:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    seen: set[str] = set()
    total = 0
    reader = _BoundedReader(
        gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), limits.total_bytes + _TAR_OVERHEAD_BYTES
    )
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if len(seen) >= limits.files:
                raise PackageError(f"archive has more than {limits.files} members", reason="too_many_files")
            name = normalize_member_name(member.name)
            if name.casefold() in seen:
                raise PackageError(f"member {name!r} appears twice", reason="duplicate_member", member=name)
            seen.add(name.casefold())
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise PackageError(
                    f"member {name!r} is a {kind} link to {member.linkname!r}; links are not allowed",
                    reason="link",
                    member=name,
                )
            if member.isdir():
                dirs.add(name)
                continue
            if not member.isreg() or member.issparse():
                kind = "device" if member.ischr() or member.isblk() else "FIFO" if member.isfifo() else "special file"
                raise PackageError(
                    f"member {name!r} is a {kind}; only files and directories are allowed",
                    reason="special_file",
                    member=name,
                )
            limit = MAX_MANIFEST_BYTES if name == MANIFEST_NAME else limits.file_bytes
            if member.size > limit:
                raise PackageError(
                    f"member {name!r} is {member.size} bytes; the limit is {limit}", reason="too_large", member=name
                )
            total += member.size
            if total > limits.total_bytes:
                raise PackageError(
                    f"archive expands to more than {limits.total_bytes} bytes at member {name!r}",
                    reason="too_large",
                    member=name,
                )
            handle = tar.extractfile(member)
            content = handle.read() if handle is not None else b""
            if len(content) != member.size:
                raise PackageError(f"member {name!r} is truncated", reason="not_an_archive", member=name)
            files[name] = content
    return files, dirs


def _parse_manifest(raw: bytes) -> Manifest:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate key(s) {', '.join(dupes)}")
        return dict(pairs)

    def no_constants(token: str) -> object:
        raise ValueError(f"{token} is not JSON")

    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError(
            f"manifest.json is not valid JSON: {exc}", reason="invalid_manifest", member=MANIFEST_NAME
        ) from None
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise PackageError(
            f"manifest.json does not match the schema: {problems}", reason="invalid_manifest", member=MANIFEST_NAME
        ) from None


def read_archive(source: str | os.PathLike[str] | bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> ValidatedArchive:
    """Validate a ``.cloacina`` file (path or bytes) in memory; nothing is extracted or imported."""
    data = _load_bytes(source, limits)
    try:
        files, dirs = _read_members(data, limits)
    except PackageError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"not a gzip-compressed tar archive: {exc}", reason="not_an_archive") from exc
    raw_manifest = files.pop(MANIFEST_NAME, None)
    if raw_manifest is None:
        raise PackageError("manifest.json is missing from the archive root", reason="missing_manifest")
    manifest = _parse_manifest(raw_manifest)
    check_source_tree(files, dirs, manifest.python.entry_module)
    actual = compute_fingerprint(files)
    if actual != manifest.package.fingerprint:
        raise PackageError(
            f"fingerprint mismatch: manifest says {manifest.package.fingerprint}, the sources hash to {actual}",
            reason="fingerprint_mismatch",
        )
    return ValidatedArchive(
        manifest=manifest, manifest_bytes=raw_manifest, files=files, directories=frozenset(dirs), archive=data
    )


def extract_archive(validated: ValidatedArchive, dest_dir: str | os.PathLike[str]) -> Path:
    """Write a validated archive's members (manifest included) under ``dest_dir``, never outside it."""
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    members = {**validated.files, MANIFEST_NAME: validated.manifest_bytes}
    for name in sorted(validated.directories):
        _inside(root, name).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, data in sorted(members.items()):
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
