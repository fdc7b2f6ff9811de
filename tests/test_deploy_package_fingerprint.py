"""The package fingerprint covers the manifest (issue 13).

Before, the fingerprint hashed the sources only: an archive whose manifest was edited after the build (a renamed
trigger, say) kept its fingerprint, and the daemon took it for the version already deployed and ignored it without
a word. Now such an archive is rejected with its reason (``fingerprint_mismatch``), by ``package validate`` and by
the daemon alike; archives built by the older rule are refused with a hint to rebuild, except when read back from
the database registry that stored them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from package_fixtures import build_ingest

from cloacina import DefaultRunner, DefaultRunnerConfig
from cloacina.cli.package import package
from cloacina.definitions import registry
from cloacina.packaging.archive import (
    PackageError,
    archive_bytes,
    compute_fingerprint,
    read_archive,
    write_atomically,
)
from cloacina.packaging.loader import PackageLoader
from cloacina.services.reconciler import Reconciler
from cloacina.store.packages import PackageStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_ingest(tmp_path_factory.mktemp("build"), version="1.0.0").read_bytes()


def renamed_trigger(data: bytes) -> bytes:
    """``data`` with the trigger renamed in its manifest only: the fingerprint is left as the build wrote it."""
    validated = read_archive(data)
    triggers = [t.model_copy(update={"name": "renamed_watcher"}) for t in validated.manifest.triggers]
    return archive_bytes(validated.manifest.model_copy(update={"triggers": triggers}), validated.files)


def sources_only_fingerprint(data: bytes) -> bytes:
    """``data`` as an older cloacina built it: the fingerprint over the sources only."""
    validated = read_archive(data)
    package = validated.manifest.package.model_copy(update={"fingerprint": compute_fingerprint(validated.files)})
    return archive_bytes(validated.manifest.model_copy(update={"package": package}), validated.files)


def test_an_edited_manifest_is_rejected_with_its_reason(good: bytes, tmp_path: Path) -> None:
    edited = renamed_trigger(good)
    with pytest.raises(PackageError, match="fingerprint mismatch") as info:
        read_archive(edited)
    assert info.value.reason == "fingerprint_mismatch"
    path = write_atomically(tmp_path / "edited.cloacina", edited)
    result = CliRunner().invoke(package, ["validate", str(path)])
    assert result.exit_code == 1 and "fingerprint_mismatch" in result.output, result.output


def test_sources_only_fingerprints_need_a_rebuild_unless_read_from_the_registry(good: bytes, tmp_path: Path) -> None:
    legacy = sources_only_fingerprint(good)
    with pytest.raises(PackageError, match=r"covers the sources only.*rebuild it") as info:
        read_archive(legacy)
    assert info.value.reason == "fingerprint_mismatch"
    validated = read_archive(legacy, legacy_fingerprint=True)
    assert validated.fingerprint == compute_fingerprint(validated.files)
    # Stored by an older release, loaded by this one (what a worker or a poller does with a run's package).
    runner = DefaultRunner(f"sqlite:///{tmp_path}/registry.db")
    try:
        store = PackageStore(runner.db)
        store.put(validated, None)
        loaded = PackageLoader(store, cache_dir=tmp_path / "cache").load(validated.fingerprint)
        assert loaded.fingerprint == validated.fingerprint and "data_ingest" in loaded.workflows
    finally:
        runner.shutdown()
    # An edited manifest is not let through by the registry path either.
    with pytest.raises(PackageError, match="fingerprint mismatch"):
        read_archive(renamed_trigger(legacy), legacy_fingerprint=True)


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Reconciler, Path]]:
    watch = tmp_path / "packages"
    watch.mkdir()
    monkeypatch.setenv("INBOX_PATH", str(tmp_path / "inbox"))
    config = DefaultRunnerConfig(trigger_base_poll_interval_ms=100, enable_cron_scheduling=False)
    runner = DefaultRunner(f"sqlite:///{tmp_path}/cloacina.db", config)
    try:
        yield Reconciler.for_runner(runner, [watch]), watch
    finally:
        runner.shutdown()


def test_the_daemon_rejects_an_edited_manifest_instead_of_ignoring_it(
    good: bytes, daemon: tuple[Reconciler, Path]
) -> None:
    reconciler, watch = daemon
    path = write_atomically(watch / "data-ingest.cloacina", good)
    assert reconciler.reconcile_once().deployed == ["data-ingest 1.0.0 (" + str(path) + ")"]
    live_before = reconciler.live

    write_atomically(path, renamed_trigger(good))  # the same file, its manifest edited in place
    report = reconciler.reconcile_once()
    assert report.rejected[str(path)].startswith("fingerprint_mismatch: "), report
    assert report.unchanged == 0 and report.deployed == []
    assert reconciler.live == live_before  # the good version stays deployed
    assert registry.get_trigger("inbox_watcher") is not None and registry.get_trigger("renamed_watcher") is None
