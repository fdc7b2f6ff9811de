"""Reading archive members safely, before anything is extracted or imported: the checks every package format shares.

:func:`read_members` decompresses a ``.cloacina`` file (gzip, as ours are written, or bzip2, as cloaca's are,
recognised by their magic bytes) and reads its tar members in memory while enforcing the limits: sizes (counted
while decompressing, so a compression bomb stops at the limit), member types (regular files and directories
only: no links, devices or FIFOs), member names (relative, normalised, no ``..``) and counts. Every failure is a
:class:`PackageError` whose ``reason`` is a short code and whose message names the offending member.
:func:`check_source_tree` then refuses trees whose top-level modules would shadow the standard library or
cloacina, and entry modules that are not there.

Fingerprint (a package's identity): SHA-256 over the source files, taken in order of their UTF-8 encoded relative
POSIX paths; each file contributes ``path || 0x00 || str(len(content)) || 0x00 || content`` (lengths in ASCII
decimal). Our archives leave their root ``manifest.json`` out; a cloaca archive counts every file and prefixes a
domain tag (see :mod:`cloacina.packaging.cloaca_format`).

>>> compute_fingerprint({"a.py": b"x = 1\\n"}) == compute_fingerprint({"a.py": b"x = 1\\n"})
True
>>> normalize_member_name("./pkg//mod.py")
'pkg/mod.py'
>>> sorted(top_level_modules(["pkg/__init__.py", "mod.py", "README.md"]))
['mod', 'pkg']
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloacina.errors import CloacinaError

MiB = 1024 * 1024
MAX_COMPRESSED_BYTES = 20 * MiB  #: size of the .cloacina file itself
MAX_TOTAL_BYTES = 50 * MiB  #: sum of all member sizes once decompressed
MAX_FILE_BYTES = 10 * MiB  #: any single member
MAX_FILES = 2000  #: members (files and directories)
MAX_MANIFEST_BYTES = 1 * MiB  #: manifest.json or package.toml
MAX_PATH_CHARS = 1024
_TAR_OVERHEAD_BYTES = 8 * MiB  # headers and padding allowed on top of MAX_TOTAL_BYTES in the raw tar stream

#: Top-level names a package may not define: importing them would replace the real module for the process.
FORBIDDEN_TOP_LEVEL = frozenset(sys.stdlib_module_names) | {"cloacina", "cloaca", "sitecustomize", "usercustomize"}
_FORBIDDEN_FOLDED = frozenset(n.casefold() for n in FORBIDDEN_TOP_LEVEL)  # case-insensitive file systems
_MODULE_SUFFIXES = (".py", ".pyc", ".pyw", ".so", ".pyd")
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"


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


def subtree(files: Iterable[str], prefix: str) -> list[str]:
    """The paths under directory ``prefix`` (``""`` = all), relative to it."""
    if not prefix:
        return list(files)
    start = prefix.rstrip("/") + "/"
    return [p[len(start) :] for p in files if p.startswith(start)]


def check_shadowing(paths: Iterable[str], where: str = "") -> None:
    """``PackageError`` (reason ``shadows_stdlib``) if a top-level module of ``paths`` is a stdlib name or cloacina."""
    for name in sorted(top_level_modules(paths)):
        if name.casefold() in _FORBIDDEN_FOLDED:
            what = "cloacina itself" if name.casefold() in ("cloacina", "cloaca") else "a standard library module"
            place = f" in {where}" if where else ""
            raise PackageError(
                f"top-level module {name!r}{place} would shadow {what}; rename it",
                reason="shadows_stdlib",
                member=f"{where}/{name}" if where else name,
            )


def check_entry_module(files: Mapping[str, bytes], entry_module: str, where: str = "") -> None:
    """``PackageError`` (reason ``missing_entry_module``) unless ``entry_module`` is a file under ``where``."""
    base = (f"{where}/" if where else "") + entry_module.replace(".", "/")
    if f"{base}.py" not in files and f"{base}/__init__.py" not in files:
        raise PackageError(
            f"entry module {entry_module!r} not found: expected {base}.py or {base}/__init__.py in the package",
            reason="missing_entry_module",
            member=entry_module,
        )


def check_conflicts(files: Mapping[str, bytes], directories: Iterable[str] = ()) -> None:
    """``PackageError`` (reason ``unsafe_path``) if a member lies under a file, or is both a file and a directory."""
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


def check_source_tree(
    files: Mapping[str, bytes], directories: Iterable[str] = (), entry_module: str | None = None
) -> None:
    """File/directory conflicts, standard-library shadowing and (if given) the entry module's presence.

    Size and count limits are enforced by whoever reads the files (``collect_sources``, :func:`read_members`).
    """
    dirs = set(directories)
    check_conflicts(files, dirs)
    check_shadowing([*files, *(d + "/" for d in dirs)])
    if entry_module is not None:
        check_entry_module(files, entry_module)


def load_json_object(raw: bytes, member: str) -> dict[str, Any]:
    """Strict JSON (no duplicate keys, no NaN) holding an object; ``PackageError`` (``invalid_manifest``) if not."""

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
        raise PackageError(f"{member} is not valid JSON: {exc}", reason="invalid_manifest", member=member) from None
    if not isinstance(document, dict):
        raise PackageError(f"{member} must hold a JSON object", reason="invalid_manifest", member=member)
    return document


def compute_fingerprint(files: Mapping[str, bytes], *, domain: bytes = b"", skip: str | None = "manifest.json") -> str:
    """SHA-256 hex digest of the source files (see the module docstring); ``skip`` names a root file left out."""
    digest = hashlib.sha256(domain)
    for path in sorted((p for p in files if p != skip), key=lambda p: p.encode("utf-8")):
        data = files[path]
        digest.update(path.encode("utf-8") + b"\x00" + str(len(data)).encode("ascii") + b"\x00")
        digest.update(data)
    return digest.hexdigest()


# -- reading ---------------------------------------------------------------------------------------------
class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _BoundedReader:
    """Reads decompressed bytes and fails as soon as more than ``limit`` came out (the bomb guard)."""

    def __init__(self, raw: _Readable, limit: int, compression: str) -> None:
        self._raw = raw
        self._limit = limit
        self._compression = compression
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        budget = self._limit - self.count + 1
        chunk = self._raw.read(budget if size is None or size < 0 else min(size, budget))
        self.count += len(chunk)
        if self.count > self._limit:
            raise PackageError(
                f"archive expands to more than {self._limit} bytes ({self._compression} bomb?)", reason="too_large"
            )
        return chunk


def compression_of(data: bytes) -> str:
    """``"gzip"`` or ``"bzip2"`` from the magic bytes; ``PackageError`` (reason ``not_an_archive``) otherwise."""
    if data.startswith(_GZIP_MAGIC):
        return "gzip"
    if data.startswith(_BZIP2_MAGIC):
        return "bzip2"
    raise PackageError(
        "not a .cloacina archive: expected a gzip- or bzip2-compressed tar file", reason="not_an_archive"
    )


def load_bytes(source: str | os.PathLike[str] | bytes, limits: ArchiveLimits) -> bytes:
    """The archive's bytes (from a path or as given), refusing anything larger than ``limits.compressed_bytes``."""
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


def read_members(data: bytes, limits: ArchiveLimits) -> tuple[dict[str, bytes], set[str]]:
    """Files (by normalised path) and directories of a gzip or bzip2 tar held in ``data``; nothing touches disk."""
    compression = compression_of(data)
    try:
        return _read_members(data, compression, limits)
    except PackageError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise PackageError(f"not a {compression}-compressed tar archive: {exc}", reason="not_an_archive") from exc


def _is_manifest(name: str) -> bool:
    """``manifest.json`` at the root, ``package.toml`` at the root or in the one top directory."""
    return name == "manifest.json" or (name.rpartition("/")[2] == "package.toml" and name.count("/") <= 1)


def _read_members(data: bytes, compression: str, limits: ArchiveLimits) -> tuple[dict[str, bytes], set[str]]:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    seen: set[str] = set()
    total = 0
    raw: _Readable = (
        gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") if compression == "gzip" else bz2.BZ2File(io.BytesIO(data))
    )
    reader = _BoundedReader(raw, limits.total_bytes + _TAR_OVERHEAD_BYTES, compression)
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if len(seen) >= limits.files:
                raise PackageError(f"archive has more than {limits.files} members", reason="too_many_files")
            if member.isdir() and set(member.name.split("/")) <= {"", "."}:
                continue  # "./", as `tar -cf x.cloacina .` writes first: the root itself
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
            limit = MAX_MANIFEST_BYTES if _is_manifest(name) else limits.file_bytes
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
