"""The reconciler: deploy, reject, replace and remove packages from a watched folder into a running runner.

Each test has a ``DefaultRunner`` on its own SQLite file and a watched folder in ``tmp_path``, and calls
:meth:`Reconciler.reconcile_once` directly. The seed's own ``data_ingest`` (polling every 5 s) is deployed
once; the other tests use a variant polling every 100 ms (see ``package_fixtures``).
"""

from __future__ import annotations

import logging
import os
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from package_fixtures import SEED_PACKAGE, build_ingest, repackage, with_member

from cloacina import DefaultRunner, DefaultRunnerConfig, TriggerResult, trigger
from cloacina.definitions import registry
from cloacina.packaging.archive import MAX_FILE_BYTES, archive_bytes, fingerprinted, read_archive, write_atomically
from cloacina.packaging.builder import build_package
from cloacina.packaging.isolation import MODULE_PREFIX
from cloacina.services.reconciler import REGISTRY_SOURCE, Reconciler
from tests.support import PollCounter, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("builds")
    return {
        "seed": build_package(SEED_PACKAGE, tmp / "seed").read_bytes(),
        "v1": build_ingest(tmp, version="1.0.0").read_bytes(),
        "v2": build_ingest(tmp, version="2.0.0").read_bytes(),
    }


class Deployment:
    """A runner, its reconciler, a watched folder and an inbox holding one .parquet file."""

    def __init__(self, tmp: Path) -> None:
        self.watch = tmp / "packages"
        self.watch.mkdir()
        self.inbox = tmp / "inbox"
        self.inbox.mkdir()
        (self.inbox / "orders_20260328.parquet").write_bytes(b"PAR1")
        config = DefaultRunnerConfig(trigger_base_poll_interval_ms=100, enable_cron_scheduling=False)
        self.runner = DefaultRunner(f"sqlite:///{tmp}/cloacina.db", config)
        self.reconciler = Reconciler.for_runner(self.runner, [self.watch])

    def drop(self, name: str, data: bytes) -> Path:
        return write_atomically(self.watch / name, data)

    def history(self) -> list[dict[str, Any]]:
        return self.runner.triggers.execution_history("inbox_watcher")

    def completed_runs(self) -> list[Any]:
        runs = [self.runner.runs.get_run(h["run_id"]) for h in self.history()]
        return [r for r in runs if r is not None and str(r.status) == "Completed"]


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    monkeypatch.setenv("INBOX_PATH", str(d.inbox))
    yield d
    d.runner.shutdown()


def test_seed_package_deploys_and_its_inbox_watcher_runs_the_workflow(
    deployment: Deployment, builds: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "cloacina.reconciler")
    fingerprint = read_archive(builds["seed"]).fingerprint
    deployment.drop("data-ingest-1.0.0.cloacina", builds["seed"])
    report = deployment.reconciler.reconcile_once()
    assert report.deployed == [f"data-ingest 1.0.0 ({deployment.watch / 'data-ingest-1.0.0.cloacina'})"]
    assert "package data-ingest 1.0.0 deployed" in caplog.text
    trigger = registry.get_trigger("inbox_watcher")
    assert trigger is not None and (trigger.workflow, trigger.package_fingerprint) == ("data_ingest", fingerprint)
    assert "inbox_watcher" in deployment.runner.trigger_scheduler.trigger_names  # type: ignore[union-attr]
    row = deployment.reconciler.store.get(fingerprint)
    assert row is not None and row["active"] and row["source_path"].endswith("data-ingest-1.0.0.cloacina")

    (run,) = wait_until(deployment.completed_runs, 30, message="a run fired by inbox_watcher (polls every 5s)")
    assert run.package_fingerprint == fingerprint and run.workflow_name == "data_ingest"
    assert run.final_context["filename"] == "orders_20260328.parquet"
    assert run.final_context["valid"] is True and "loaded_at" in run.final_context
    assert not deployment.reconciler.reconcile_once()  # nothing changed: nothing to do


def _rename_trigger(files: dict[str, bytes]) -> dict[str, bytes]:
    code = files["data_ingest/__init__.py"]
    return {**files, "data_ingest/__init__.py": code.replace(b'name="inbox_watcher"', b'name="inbox_watch"')}


def _marker_code(marker_dir: Path) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    """Rename the trigger and leave a file named after the importing process: who ran the package's code?"""

    def change(files: dict[str, bytes]) -> dict[str, bytes]:
        files = _rename_trigger(files)
        mark = f"import os\nopen(os.path.join({str(marker_dir)!r}, f'imported-{{os.getpid()}}'), 'w').close()\n"
        files["data_ingest/__init__.py"] = mark.encode() + files["data_ingest/__init__.py"]
        return files

    return change


BAD_ARCHIVES: dict[str, tuple[Callable[[bytes, Path], bytes], str, str]] = {
    "name mismatch": (
        lambda good, tmp: repackage(good, _marker_code(tmp)),
        "manifest_mismatch",
        "trigger 'inbox_watcher': manifest says name 'inbox_watcher', code says 'inbox_watch'",
    ),
    "path traversal": (
        lambda good, tmp: with_member(good, "data_ingest/../../evil.py", b"x = 1\n"),
        "unsafe_path",
        "contains '..'",
    ),
    "symlink": (
        lambda good, tmp: with_member(good, "data_ingest/link.py", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "link",
        "'data_ingest/link.py' is a symbolic link to '/etc/passwd'",
    ),
    "oversize": (
        lambda good, tmp: with_member(good, "data_ingest/big.bin", b"\0" * (MAX_FILE_BYTES + 1)),
        "too_large",
        f"'data_ingest/big.bin' is {MAX_FILE_BYTES + 1} bytes",
    ),
    "stdlib shadowing": (
        lambda good, tmp: repackage(good, lambda f: {**f, "json.py": b"raise SystemExit('imported!')\n"}),
        "shadows_stdlib",
        "top-level module 'json' would shadow a standard library module",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_rejected_archives_are_logged_and_change_nothing(
    case: str, deployment: Deployment, builds: dict[str, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make, reason, message = BAD_ARCHIVES[case]
    good = builds["v1"]
    good_fp = read_archive(good).fingerprint
    deployment.drop("data-ingest-1.0.0.cloacina", good)
    assert deployment.reconciler.reconcile_once().deployed
    packages_before = deployment.reconciler.store.list()
    live_before = deployment.reconciler.live

    markers = tmp_path / "markers"
    markers.mkdir()
    bad = make(good, markers)
    for name in ("other-package.cloacina", "data-ingest-1.0.0.cloacina"):  # a new file; the live one overwritten
        caplog.clear()
        path = deployment.drop(name, bad)
        report = deployment.reconciler.reconcile_once()
        assert report.deployed == [] and report.removed == []
        assert report.rejected[str(path)].startswith(f"{reason}: ") and message in report.rejected[str(path)]
        assert f"package {path} rejected ({reason})" in caplog.text and message in caplog.text
        assert deployment.reconciler.store.list() == packages_before  # nothing stored or deactivated
        assert deployment.reconciler.live == live_before  # the good version stays live
        trigger = registry.get_trigger("inbox_watcher")
        assert trigger is not None and trigger.package_fingerprint == good_fp
        assert registry.get_trigger("inbox_watch") is None
        assert not deployment.reconciler.reconcile_once()  # rejected once; looked at again only when it changes
    if case == "name mismatch":  # the code ran only in verification's child process, never here
        assert [p.name for p in markers.iterdir()] and f"imported-{os.getpid()}" not in os.listdir(markers)
        bad_fp = read_archive(bad).fingerprint
        assert not [m for m in sys.modules if m.startswith(MODULE_PREFIX + bad_fp[:16])]
    wait_until(deployment.completed_runs, 20, message="the good version to keep firing")


def test_removing_the_archive_disables_its_trigger_and_keeps_history(
    deployment: Deployment, builds: dict[str, bytes]
) -> None:
    path = deployment.drop("data-ingest-1.0.0.cloacina", builds["v1"])
    deployment.reconciler.reconcile_once()
    wait_until(deployment.completed_runs, 20, message="a first run")
    path.unlink()
    report = deployment.reconciler.reconcile_once()
    assert report.removed == [f"data-ingest 1.0.0 ({path})"]
    schedule = deployment.runner.triggers.get_schedule("inbox_watcher")
    assert schedule is not None and schedule["enabled"] is False
    assert registry.get_trigger("inbox_watcher") is None
    assert "inbox_watcher" not in deployment.runner.trigger_scheduler.trigger_names  # type: ignore[union-attr]
    assert deployment.reconciler.store.list(active_only=True) == []
    scheduler = deployment.runner.trigger_scheduler
    assert scheduler is not None
    polls = PollCounter(scheduler)

    @trigger(workflow="data_ingest", name="canary", poll_interval="100ms")
    def canary() -> TriggerResult:  # polled all along: it shows poll intervals going by in the scheduler
        return TriggerResult.skip()

    # A poll in flight at removal may still finish (and fire).
    wait_until(lambda: "inbox_watcher" not in scheduler.polls_in_progress(), 10, message="the last poll to end")
    history = deployment.history()
    assert history  # kept
    polls.wait_for_more("canary", 10)  # ten poll intervals: no new fire
    assert len(deployment.history()) == len(history)

    deployment.drop("data-ingest-1.0.0.cloacina", builds["v1"])  # deployed again: enabled again
    assert deployment.reconciler.reconcile_once().deployed
    assert deployment.runner.triggers.get_schedule("inbox_watcher")["enabled"] is True  # type: ignore[index]
    wait_until(lambda: len(deployment.history()) > len(history), 20, message="fires after the redeploy")


def test_a_new_version_replaces_the_triggers_and_running_runs_keep_their_version(
    deployment: Deployment, builds: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("INGEST_GATE", str(gate))  # runs wait in their first task until the gate opens
    fp1, fp2 = read_archive(builds["v1"]).fingerprint, read_archive(builds["v2"]).fingerprint
    deployment.drop("data-ingest.cloacina", builds["v1"])
    deployment.reconciler.reconcile_once()
    (first,) = wait_until(deployment.history, 20, message="v1 to fire")

    deployment.drop("data-ingest.cloacina", builds["v2"])  # the same file, overwritten with version 2
    report = deployment.reconciler.reconcile_once()
    assert report.deployed == [f"data-ingest 2.0.0 ({deployment.watch / 'data-ingest.cloacina'})"]
    assert registry.get_trigger("inbox_watcher").package_fingerprint == fp2  # type: ignore[union-attr]
    assert deployment.reconciler.store.get(fp1)["active"] is False  # type: ignore[index]
    assert deployment.reconciler.store.get(fp2)["active"] is True  # type: ignore[index]

    gate.touch()
    runs = wait_until(
        lambda: len(deployment.completed_runs()) >= 2 and deployment.completed_runs(), 30, message="two runs"
    )
    by_id = {r.run_id: r for r in runs}
    old = by_id[first["run_id"]]
    assert old.package_fingerprint == fp1 and old.final_context["package_version"] == "1.0.0"
    newer = [r for r in runs if r.run_id != first["run_id"]]
    assert all(r.package_fingerprint == fp2 and r.final_context["package_version"] == "2.0.0" for r in newer)


def test_two_files_of_one_package_newest_wins_and_removal_falls_back(
    deployment: Deployment, builds: dict[str, bytes]
) -> None:
    fp1, fp2 = read_archive(builds["v1"]).fingerprint, read_archive(builds["v2"]).fingerprint
    old = deployment.drop("data-ingest-1.0.0.cloacina", builds["v1"])
    os.utime(old, (time.time() - 60, time.time() - 60))
    new = deployment.drop("data-ingest-2.0.0.cloacina", builds["v2"])
    deployment.reconciler.reconcile_once()
    assert deployment.reconciler.live["data-ingest"]["fingerprint"] == fp2
    new.unlink()
    report = deployment.reconciler.reconcile_once()
    assert report.removed and report.deployed == [f"data-ingest 1.0.0 ({old})"]
    assert registry.get_trigger("inbox_watcher").package_fingerprint == fp1  # type: ignore[union-attr]
    assert deployment.runner.triggers.get_schedule("inbox_watcher")["enabled"] is True  # type: ignore[index]


def test_registry_deployments_and_trigger_conflicts(deployment: Deployment, builds: dict[str, bytes]) -> None:
    store = deployment.reconciler.store
    store.put(read_archive(builds["v2"]), None)  # what `cloacina package deploy --db` does
    report = deployment.reconciler.reconcile_once()
    assert report.deployed == [f"data-ingest 2.0.0 ({REGISTRY_SOURCE})"]
    wait_until(deployment.completed_runs, 20, message="a run of the registry package")

    other = read_archive(builds["v1"])  # another package name, the same trigger name
    renamed = other.manifest.model_copy(
        update={"package": other.manifest.package.model_copy(update={"name": "other-ingest"})}
    )
    path = deployment.drop("other.cloacina", archive_bytes(fingerprinted(renamed, other.files), other.files))
    report = deployment.reconciler.reconcile_once()
    assert (
        "trigger_conflict: trigger 'inbox_watcher' already belongs to package data-ingest" in report.rejected[str(path)]
    )

    store.set_active(read_archive(builds["v2"]).fingerprint, False)  # deactivated in the registry
    assert deployment.reconciler.reconcile_once().removed == [f"data-ingest 2.0.0 ({REGISTRY_SOURCE})"]
    assert registry.get_trigger("inbox_watcher") is None
