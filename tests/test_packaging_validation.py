"""Packages, the hostile path: every malformed or malicious archive is rejected with a clear reason naming the
offending member, before anything is imported; code that disagrees with its manifest, fails or hangs on import
is rejected by the isolated import.

Archives are crafted here with :mod:`tarfile` directly (so they can contain what our builder never writes) or,
for import-time cases, with :func:`archive_bytes` and a correct fingerprint.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloacina.cli.package import package
from cloacina.packaging.archive import (
    MAX_FILE_BYTES,
    MAX_FILES,
    ArchiveLimits,
    PackageError,
    archive_bytes,
    fingerprinted,
    package_fingerprint,
    read_archive,
)
from cloacina.packaging.builder import build_package
from cloacina.packaging.manifest import Manifest
from cloacina.packaging.verify import verify_package

pytestmark = pytest.mark.timeout(120)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "packages" / "data_ingest"
Member = tuple[tarfile.TarInfo, bytes | None]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_package(EXAMPLE, tmp_path_factory.mktemp("dist")).read_bytes()


def members_of(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]  # type: ignore[union-attr]


def make_tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def entry(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, data if kind == tarfile.REGTYPE else None


def with_member(good: bytes, extra: Member) -> bytes:
    return make_tar([*members_of(good), extra])


def rewrite_manifest(good: bytes, change: Callable[[dict[str, Any]], None], *, refingerprint: bool = True) -> bytes:
    """The good archive with its manifest.json edited and, unless ``refingerprint=False``, its fingerprint updated
    to cover the edit (as a builder would: the fingerprint covers the manifest too)."""
    sources = {i.name: d or b"" for i, d in members_of(good) if i.isfile() and i.name != "manifest.json"}
    members = []
    for info, data in members_of(good):
        if info.name == "manifest.json":
            document = json.loads(data or b"")
            change(document)
            if refingerprint and isinstance(document.get("package"), dict):
                document["package"]["fingerprint"] = package_fingerprint(sources, document)
            data = json.dumps(document).encode()
        members.append((info, data))
    return make_tar(members)


def package_with(good: bytes, files: dict[str, str], **python: str) -> bytes:
    """A correctly fingerprinted archive: the good manifest, ``files`` replacing the sources."""
    manifest = read_archive(good).manifest
    sources = {path: text.encode() for path, text in files.items()}
    python_info = manifest.python.model_copy(update=python)
    return archive_bytes(fingerprinted(manifest.model_copy(update={"python": python_info}), sources), sources)


def rejected(data: bytes, reason: str, match: str, **kwargs: Any) -> PackageError:
    with pytest.raises(PackageError, match=match) as info:
        read_archive(data, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


# -- names, member types, sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.py", "contains '..'"),
        ("data_ingest/../../evil.py", "contains '..'"),
        ("/etc/evil.py", "absolute path"),
        ("data_ingest\\evil.py", "backslash"),
        ("C:/evil.py", "drive"),
        ("bad\x01name.py", "control characters"),
    ],
)
def test_unsafe_member_names(good: bytes, name: str, why: str) -> None:
    error = rejected(with_member(good, entry(name, b"x = 1\n")), "unsafe_path", why)
    assert name in str(error) or repr(name) in str(error)
    assert error.member == name


@pytest.mark.parametrize(
    ("member", "reason", "match"),
    [
        (
            entry("data_ingest/link.py", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
            "link",
            "symbolic link to '/etc/passwd'",
        ),
        (
            entry("data_ingest/hard.py", kind=tarfile.LNKTYPE, linkname="pyproject.toml"),
            "link",
            "'data_ingest/hard.py' is a hard link",
        ),
        (entry("dev_null", kind=tarfile.CHRTYPE), "special_file", "'dev_null' is a device"),
        (entry("disk", kind=tarfile.BLKTYPE), "special_file", "'disk' is a device"),
        (entry("pipe", kind=tarfile.FIFOTYPE), "special_file", "'pipe' is a FIFO"),
    ],
)
def test_links_devices_and_fifos_are_rejected(good: bytes, member: Member, reason: str, match: str) -> None:
    rejected(with_member(good, member), reason, match)


def test_duplicate_members_are_rejected(good: bytes) -> None:
    rejected(
        with_member(good, entry("pyproject.toml", b"[project]\n")), "duplicate_member", "'pyproject.toml' appears twice"
    )


def test_oversize_file_is_rejected_by_its_header(good: bytes) -> None:
    big = entry("data_ingest/big.bin", b"\0" * (MAX_FILE_BYTES + 1))
    rejected(with_member(good, big), "too_large", f"'data_ingest/big.bin' is {MAX_FILE_BYTES + 1} bytes")


def test_too_many_files(good: bytes) -> None:
    many = [entry(f"data_ingest/f{i}.txt") for i in range(MAX_FILES)]
    rejected(make_tar([*members_of(good), *many]), "too_many_files", f"more than {MAX_FILES} members")


def test_too_many_bytes_in_total(good: bytes) -> None:
    limits = ArchiveLimits(total_bytes=10_000, file_bytes=6_000)
    parts = [entry(f"data_ingest/part{i}.bin", b"\0" * 5_000) for i in range(3)]
    rejected(make_tar([*members_of(good), *parts]), "too_large", "expands to more than 10000 bytes", limits=limits)


def test_gzip_bomb_member_is_stopped_without_inflating_it(good: bytes) -> None:
    bomb = with_member(good, entry("data_ingest/zeros.bin", b"\0" * (200 * 1024 * 1024)))
    assert len(bomb) < 1024 * 1024  # 200 MiB of zeros compress to a few hundred KiB
    started = time.monotonic()
    rejected(bomb, "too_large", "'data_ingest/zeros.bin' is 209715200 bytes")
    assert time.monotonic() - started < 2


def test_gzip_bomb_in_a_pax_header_is_stopped_by_the_byte_counter() -> None:
    # A PAX extended header is read into memory whole by tarfile; our reader stops it at the limit.
    header = tarfile.TarInfo("x")
    header.type = tarfile.XHDTYPE
    header.size = 100 * 1024 * 1024
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(header.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(100):
            gz.write(b"9" * 1024 * 1024)
    limits = ArchiveLimits(total_bytes=1024 * 1024)
    rejected(raw.getvalue(), "too_large", "gzip bomb", limits=limits)


def test_compressed_size_limit(good: bytes) -> None:
    rejected(good, "too_large", "the limit is 100", limits=ArchiveLimits(compressed_bytes=100))


def test_not_an_archive() -> None:
    rejected(b"definitely not gzip", "not_an_archive", "expected a gzip- or bzip2-compressed tar file")
    rejected(gzip.compress(b"not a tar either" * 100), "not_an_archive", "not a gzip-compressed tar archive")


# -- manifest, fingerprint, entry module, shadowing ----------------------------------------------------------
def test_missing_manifest(good: bytes) -> None:
    data = make_tar([m for m in members_of(good) if m[0].name != "manifest.json"])
    rejected(data, "missing_manifest", "manifest.json is missing")


def test_manifest_in_a_subdirectory_does_not_count(good: bytes) -> None:
    members = [
        (entry("sub/manifest.json", d)[0], d) if i.name == "manifest.json" else (i, d) for i, d in members_of(good)
    ]
    rejected(make_tar(members), "missing_manifest", "manifest.json is missing")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"x": NaN}', "NaN is not JSON"),
        (b"[]", "must hold a JSON object"),
        (b'{"format_version": 1, "language": "rust"}', "does not match the schema"),
    ],
)
def test_invalid_manifest_json(good: bytes, raw: bytes, match: str) -> None:
    members = [(i, raw if i.name == "manifest.json" else d) for i, d in members_of(good)]
    rejected(make_tar(members), "invalid_manifest", match)


def test_schema_invalid_manifest_names_the_field(good: bytes) -> None:
    data = rewrite_manifest(good, lambda m: m["triggers"][0].update(poll_interval="soon"))
    rejected(data, "invalid_manifest", r"triggers\.0\.poll_interval: .*'soon'")
    data = rewrite_manifest(good, lambda m: m.update(language="rust"))
    rejected(data, "invalid_manifest", "language")


def test_fingerprint_mismatch_when_a_source_is_edited(good: bytes) -> None:
    members = [
        (i, d + b"\nimport os; os.system('curl evil')\n" if i.name == "data_ingest/__init__.py" else d)
        for i, d in members_of(good)
    ]
    rejected(make_tar(members), "fingerprint_mismatch", "fingerprint mismatch: manifest says [0-9a-f]{64}")


def test_entry_module_missing(good: bytes) -> None:
    data = rewrite_manifest(good, lambda m: m["python"].update(entry_module="data_ingest.nope"))
    error = rejected(data, "missing_entry_module", r"expected data_ingest/nope.py or data_ingest/nope/__init__.py")
    assert error.member == "data_ingest.nope"


@pytest.mark.parametrize(
    ("path", "name"),
    [("os.py", "os"), ("json/__init__.py", "json"), ("cloaca/__init__.py", "cloaca"), ("Socket.py", "Socket")],
)
def test_top_level_modules_may_not_shadow_the_stdlib_or_cloacina(good: bytes, path: str, name: str) -> None:
    files = {"pyproject.toml": "", "data_ingest/__init__.py": "", path: "raise SystemExit('imported!')\n"}
    error = rejected(package_with(good, files), "shadows_stdlib", f"top-level module '{name}' would shadow")
    assert error.member == name


def test_nested_stdlib_names_are_fine(good: bytes) -> None:
    files = {"pyproject.toml": "", "data_ingest/__init__.py": "", "data_ingest/json.py": ""}
    assert read_archive(package_with(good, files)).files.keys() == files.keys()


# -- import-time checks (child process) ---------------------------------------------------------------------
def test_trigger_name_mismatch_between_manifest_and_code(good: bytes) -> None:
    data = rewrite_manifest(good, lambda m: m["triggers"][0].update(name="inbox_watch"))
    assert read_archive(data).manifest.triggers[0].name == "inbox_watch"  # statically fine: the sources are intact
    with pytest.raises(PackageError) as info:
        verify_package(data)
    assert info.value.reason == "manifest_mismatch"
    assert "trigger 'inbox_watch': manifest says name 'inbox_watch', code says 'inbox_watcher'" in str(info.value)
    assert "data_ingest" not in sys.modules


def test_cli_validate_exits_1_with_the_reason(good: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cloacina"
    bad.write_bytes(rewrite_manifest(good, lambda m: m["triggers"][0].update(name="inbox_watch")))
    result = CliRunner().invoke(package, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "manifest_mismatch" in result.output and "code says 'inbox_watcher'" in result.output
    static = CliRunner().invoke(package, ["validate", "--static", str(bad)])
    assert static.exit_code == 0 and "static checks only" in static.output
    traversal = tmp_path / "traversal.cloacina"
    traversal.write_bytes(with_member(good, entry("../evil.py", b"")))
    for command in ("validate", "inspect"):
        result = CliRunner().invoke(package, [command, str(traversal)])
        assert result.exit_code == 1 and "unsafe_path" in result.output and "'../evil.py'" in result.output


EXPLICIT = """\
import cloaca

for name in ("alpha", "beta"):
    with cloaca.WorkflowBuilder(name) as builder:
        @cloaca.task(id="step_" + name)
        def step(context):
            return context

@cloaca.trigger(name="watcher", workflow="alpha", poll_interval="1s")
def watcher():
    return cloaca.TriggerResult.skip()
"""


def _explicit_package(good: bytes, code: str = EXPLICIT) -> bytes:
    files = {"pyproject.toml": "", "data_ingest/__init__.py": code}
    manifest = Manifest.model_validate(
        {
            "package": {"name": "explicit", "version": "1", "fingerprint": "0" * 64},
            "python": {"entry_module": "data_ingest"},
            "tasks": [
                {"id": "step_alpha", "workflow": "alpha", "function": "data_ingest:step"},
                {"id": "step_beta", "workflow": "beta", "function": "data_ingest:step"},
            ],
            "triggers": [{"name": "watcher", "workflow": "alpha", "poll_interval": "1s"}],
        }
    )
    sources = {k: v.encode() for k, v in files.items()}
    return archive_bytes(fingerprinted(manifest, sources), sources)


def test_trigger_workflow_mismatch_between_manifest_and_code(good: bytes) -> None:
    data = _explicit_package(good)
    assert verify_package(data).triggers[0].workflow == "alpha"  # the honest manifest passes
    lying = rewrite_manifest(data, lambda m: m["triggers"][0].update(workflow="beta"))
    with pytest.raises(PackageError, match="trigger 'watcher': manifest says workflow 'beta', code says 'alpha'"):
        verify_package(lying)


def test_task_and_interval_mismatches_are_all_listed(good: bytes) -> None:
    def lie(m: dict[str, Any]) -> None:
        m["tasks"][1]["workflow"] = "alpha"
        m["tasks"].append({"id": "ghost", "workflow": "alpha", "function": "data_ingest:ghost"})
        m["triggers"][0].update(poll_interval="5s", allow_concurrent=True)

    with pytest.raises(PackageError) as info:
        verify_package(rewrite_manifest(_explicit_package(good), lie))
    message = str(info.value)
    assert "task 'step_beta': manifest says workflow 'alpha', code says 'beta'" in message
    assert "task 'ghost' of workflow 'alpha' is in the manifest but not in the code" in message
    assert "trigger 'watcher': manifest says poll_interval '5s', code says '1s'" in message
    assert "trigger 'watcher': manifest says allow_concurrent True, code says False" in message


def test_module_that_raises_on_import(good: bytes) -> None:
    code = "import cloaca\nraise RuntimeError('boom at import time')\n"
    data = package_with(good, {"pyproject.toml": "", "data_ingest/__init__.py": code})
    with pytest.raises(PackageError, match="RuntimeError: boom at import time") as info:
        verify_package(data)
    assert info.value.reason == "import_failed"


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("import sys\nsys.exit('leaving early')\n", r"exit status 1\): leaving early"),
        ("import sys\nsys.exit(0)\n", r"no discovery output \(did it call sys.exit\(\)\?\)"),
    ],
)
def test_module_that_exits_on_import(good: bytes, code: str, match: str) -> None:
    data = package_with(good, {"pyproject.toml": "", "data_ingest/__init__.py": code})
    with pytest.raises(PackageError, match=match):
        verify_package(data)


def test_threads_left_running_by_the_import_do_not_hold_discovery(good: bytes) -> None:
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\n"
    code += read_archive(good).files["data_ingest/__init__.py"].decode()
    started = time.monotonic()
    assert verify_package(package_with(good, {"pyproject.toml": "", "data_ingest/__init__.py": code}), timeout_s=20)
    assert time.monotonic() - started < 15


def test_module_that_hangs_on_import_times_out(good: bytes) -> None:
    code = "import time\nprint('about to hang', flush=True)\ntime.sleep(600)\n"
    data = package_with(good, {"pyproject.toml": "", "data_ingest/__init__.py": code})
    started = time.monotonic()
    with pytest.raises(PackageError, match=r"took longer than 4s; stderr: about to hang") as info:
        verify_package(data, timeout_s=4)
    assert info.value.reason == "import_timeout"
    assert time.monotonic() - started < 15


def test_import_sees_no_secrets_and_its_prints_do_not_corrupt_discovery(
    good: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    code = (
        "import os, sys\nimport cloaca\nprint('noise on stdout')\nos.write(1, b'raw noise')\n"
        "assert 'AWS_SECRET_ACCESS_KEY' not in os.environ, 'secret leaked'\n"
        "assert '/nonexistent' not in sys.path, 'PYTHONPATH leaked'\n"
        + read_archive(good).files["data_ingest/__init__.py"].decode()
    )
    data = package_with(good, {"pyproject.toml": "", "data_ingest/__init__.py": code})
    assert verify_package(data).triggers[0].name == "inbox_watcher"
