"""The reconciler behind ``cloacina daemon``: keeps the live packages equal to the archives in the watched folders.

:meth:`Reconciler.reconcile_once` does one pass (tests call it directly); :meth:`Reconciler.run` repeats it on
every file-system change (``watchfiles``) and at least every ``rescan_interval_s`` as a safety net.

One pass:

- A new or changed ``*.cloacina`` file (path, mtime, size and inode are tracked) is validated statically
  (:func:`~cloacina.packaging.archive.read_archive`), then imported in a child process and compared with its
  manifest (:func:`~cloacina.packaging.verify.verify_archive`). Only then is it loaded here
  (:class:`~cloacina.packaging.loader.PackageLoader`), stored in the registry (by fingerprint) and its triggers
  registered with ``registry.register_trigger`` (the running scheduler listens), bound to the package so fires run
  its workflows. A newer version of a live package replaces its triggers by name; the old version is marked
  inactive (runs started on it keep it). Logged as ``package NAME VERSION deployed``. Its workflows enter the
  workflow catalog with origin ``package:<fingerprint>`` (and leave it when the package is replaced or removed).
- A rejected archive is logged with its reason and recorded in the report; nothing else changes: the version
  already live, if any, stays live. The file is looked at again when it changes.
- A removed file: its package's triggers are removed from the scheduler and their schedules disabled (history
  kept), the package marked inactive. If another file holds a valid version of the same package, that one is
  deployed instead.
- Packages stored with ``cloacina package deploy --db`` (active, no source file) are deployed the same way.
- Cloaca's archives (``package.toml`` with ``workflow/``, or the older root ``manifest.json``) go through the same
  steps: their manifest is derived statically, their import checked in a child process, and the registry stores
  the complete manifest that import produced. Their ``@trigger(cron=...)`` definitions become cron schedules of
  the workflow (created, or re-enabled, on deploy; disabled on removal or when an upgrade drops them); the runs
  of those schedules resolve the workflow through the loader's active package.

Trigger schedules are re-enabled when a package is deployed while no version of it is active (a redeploy after a
removal); an upgrade or a daemon restart keeps the enabled flags operators set.

Example (not run here, it spawns processes)::

    runner = DefaultRunner("sqlite:///home/me/.cloacina/cloacina.db")
    reconciler = Reconciler.for_runner(runner, [Path.home() / ".cloacina" / "packages"])
    reconciler.reconcile_once()      # ReconcileReport(deployed=['data-ingest 1.0.0 (...)'], ...)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.deployment.workflows import WorkflowCatalog
from cloacina.packaging.archive import DEFAULT_LIMITS, ArchiveLimits, PackageError, ValidatedArchive, read_archive
from cloacina.packaging.discover import IMPORT_TIMEOUT_S
from cloacina.packaging.loader import PackageLoader
from cloacina.packaging.manifest import Manifest
from cloacina.packaging.verify import verify_archive
from cloacina.scheduling import cron_math
from cloacina.scheduling.cron_triggers import register_cron_triggers
from cloacina.store.catalog import CatalogStore
from cloacina.store.cron import CronStore
from cloacina.store.packages import PackageStore
from cloacina.store.triggers import TriggerStore
from cloacina.timestamps import utcnow

if TYPE_CHECKING:
    from cloacina.runner.default_runner import DefaultRunner

log = logging.getLogger("cloacina.reconciler")
ARCHIVE_SUFFIX = ".cloacina"
REGISTRY_SOURCE = "<registry>"  # the source of packages deployed into the database only


class SchedulerHook(Protocol):
    """What the reconciler needs from a running trigger scheduler (``TriggerScheduler`` has it)."""

    def remove(self, name: str) -> None: ...


@dataclass
class ReconcileReport:
    """What one pass did. ``rejected`` maps a file (or registry fingerprint) to ``"reason: message"``."""

    deployed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0

    def __bool__(self) -> bool:
        return bool(self.deployed or self.removed or self.rejected)


@dataclass
class _FileState:
    stat_key: tuple[int, int, int]  # mtime_ns, size, inode
    fingerprint: str | None = None
    name: str | None = None
    error: str | None = None


@dataclass
class _Live:
    name: str
    version: str
    fingerprint: str
    source: str
    triggers: tuple[str, ...]
    cron_schedules: tuple[str, ...] = ()


class Reconciler:
    """Deploys, replaces and removes packages so that the live ones match the watched folders."""

    def __init__(
        self,
        store: PackageStore,
        loader: PackageLoader,
        watch_dirs: list[Path] | list[str],
        *,
        scheduler: SchedulerHook | None = None,
        trigger_store: TriggerStore | None = None,
        cron_store: CronStore | None = None,
        verify_timeout_s: float = IMPORT_TIMEOUT_S,
        limits: ArchiveLimits = DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.loader = loader
        self.watch_dirs = [Path(d).expanduser().resolve() for d in watch_dirs]
        self.scheduler = scheduler
        self.trigger_store = trigger_store or getattr(scheduler, "store", None) or TriggerStore(store.db)
        self.cron_store = cron_store or CronStore(store.db)
        self.catalog = WorkflowCatalog(loader, CatalogStore(store.db))  # a package's workflows, while it is live
        self.verify_timeout_s = verify_timeout_s
        self.limits = limits
        self._files: dict[Path, _FileState] = {}
        self._live: dict[str, _Live] = {}
        self._verified: dict[str, Manifest] = {}  # fingerprints that passed verify_archive here, and their manifests
        self._registry_rejected: set[str] = set()
        self._first_pass = True
        self._lock = threading.Lock()

    @classmethod
    def for_runner(cls, runner: DefaultRunner, watch_dirs: list[Path] | list[str], **kwargs: Any) -> Reconciler:
        """A reconciler that deploys into an embedded ``DefaultRunner`` (its registry, loader and scheduler)."""
        return cls(
            runner.packages.store or PackageStore(runner.db),
            runner.packages,
            watch_dirs,
            scheduler=runner.trigger_scheduler,
            trigger_store=runner.triggers,
            cron_store=runner.deployment.cron,
            **kwargs,
        )

    @property
    def live(self) -> dict[str, dict[str, Any]]:
        """The deployed packages by name: version, fingerprint, source and trigger names."""
        with self._lock:
            return {name: dict(live.__dict__) for name, live in self._live.items()}

    # -- one pass ---------------------------------------------------------------------------------------
    def reconcile_once(self) -> ReconcileReport:
        """Scan the watched folders and the registry once and apply every difference."""
        with self._lock:
            report = ReconcileReport()
            current = self._scan()
            if self._first_pass:
                self._forget_vanished_files(current)
                self._first_pass = False
            for path in sorted(set(self._files) - set(current)):
                self._files.pop(path)
                for live in [lv for lv in self._live.values() if lv.source == str(path)]:
                    self._undeploy(live, report)
                    for other, state in list(self._files.items()):  # fall back to another file of that package
                        if state.name == live.name and state.error is None:
                            self._files.pop(other)
            changed = [p for p, key in current.items() if p not in self._files or self._files[p].stat_key != key]
            for path in sorted(changed, key=lambda p: (current[p][0], str(p))):  # newest last: it wins
                self._process_file(path, current[path], report)
            self._reconcile_registry(report)
            return report

    def _scan(self) -> dict[Path, tuple[int, int, int]]:
        found: dict[Path, tuple[int, int, int]] = {}
        for directory in self.watch_dirs:
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                log.warning("cannot read watch directory %s: %s", directory, exc.strerror or exc)
                continue
            for item in entries:
                if item.name.endswith(ARCHIVE_SUFFIX) and not item.name.startswith("."):
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile
                    found[Path(item.path)] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return found

    def _process_file(self, path: Path, key: tuple[int, int, int], report: ReconcileReport) -> None:
        previous = self._files.get(path)
        try:
            validated = read_archive(path, self.limits)
            if previous is not None and previous.error is None and previous.fingerprint == validated.fingerprint:
                self._files[path] = _FileState(key, previous.fingerprint, previous.name)
                report.unchanged += 1
                return
            self._deploy(validated, str(path), report)
        except PackageError as exc:
            self._files[path] = _FileState(key, error=f"{exc.reason}: {exc}")
            self._reject(str(path), exc, report)
            return
        except Exception:  # the database is down, say: not the archive's fault, so try it again next pass
            log.exception("could not deploy %s; will retry", path)
            return
        name = validated.manifest.package.name
        self._files[path] = _FileState(key, validated.fingerprint, name)
        for live in [lv for lv in self._live.values() if lv.source == str(path) and lv.name != name]:
            self._undeploy(live, report)  # the file now holds another package altogether

    def _reject(self, source: str, exc: PackageError, report: ReconcileReport) -> None:
        log.warning("package %s rejected (%s): %s", source, exc.reason, exc, extra={"reason": exc.reason})
        report.rejected[source] = f"{exc.reason}: {exc}"

    # -- deploy and remove --------------------------------------------------------------------------------
    def _deploy(self, validated: ValidatedArchive, source: str | None, report: ReconcileReport) -> None:
        package = validated.manifest.package
        current = self._live.get(package.name)
        where = source or REGISTRY_SOURCE
        if current is not None and current.fingerprint == validated.fingerprint:
            self.store.put(validated, source, active=True)
            current.source = where
            report.unchanged += 1
            return
        if validated.fingerprint not in self._verified:  # before any of its code runs here
            self._verified[validated.fingerprint] = verify_archive(validated, timeout_s=self.verify_timeout_s)
        if validated.manifest.origin is not None:  # a cloaca archive: store the manifest its code completed
            validated = validated.with_manifest(self._verified[validated.fingerprint])
        self._check_trigger_names(validated.manifest)
        loaded = self.loader.load(validated)
        reenable = not any(row["name"] == package.name for row in self.store.list(active_only=True))
        self.store.put(validated, source, active=True)
        self.catalog.record_package(loaded.workflows.values(), validated.fingerprint)
        for definition in loaded.triggers:
            if reenable and definition.cron is None:
                self.trigger_store.set_enabled(definition.name, True)
            registry.register_trigger(definition)  # the scheduler replaces a trigger of the same name
        schedules = self._schedule_cron(loaded.triggers)
        names = tuple(t.name for t in loaded.triggers)
        if current is not None:
            for name in sorted(set(current.triggers) - set(names)):
                self._stop_trigger(name, current.fingerprint)
            self._stop_cron(set(current.cron_schedules) - set(schedules))
            self.store.set_active(current.fingerprint, False)
            self.catalog.forget_package(current.fingerprint)
        self._live[package.name] = _Live(package.name, package.version, validated.fingerprint, where, names, schedules)
        log.info(
            "package %s %s deployed",
            package.name,
            package.version,
            extra={"package": package.name, "fingerprint": validated.fingerprint, "source": where},
        )
        report.deployed.append(f"{package.name} {package.version} ({where})")

    def _check_trigger_names(self, manifest: Manifest) -> None:
        """A trigger name belongs to one package (or to the application): refuse to take another's."""
        for definition in manifest.triggers:
            owner = next((lv for lv in self._live.values() if definition.name in lv.triggers), None)
            if owner is not None and owner.name != manifest.package.name:
                raise PackageError(
                    f"trigger {definition.name!r} already belongs to package {owner.name} {owner.version}",
                    reason="trigger_conflict",
                    member=definition.name,
                )
            existing = registry.get_trigger(definition.name)
            if owner is None and existing is not None and existing.package_fingerprint is None:
                raise PackageError(
                    f"trigger {definition.name!r} is already declared by the application",
                    reason="trigger_conflict",
                    member=definition.name,
                )

    def _schedule_cron(self, triggers: tuple[TriggerDefinition, ...]) -> tuple[str, ...]:
        """Cron schedules (created or re-enabled) for a package's ``@trigger(cron=...)`` definitions; their ids.

        Their runs name the workflow; the package loader resolves it to the active version of the package.
        """
        crons = [t for t in triggers if t.cron is not None]
        if not crons:
            return ()
        records = register_cron_triggers(self.cron_store, definitions=crons)
        for record in records:
            if not record.enabled:  # a redeploy after a removal: from the next due time on, no catch-up
                next_run = cron_math.next_due(record.cron_expression, record.timezone, utcnow())
                self.cron_store.set_enabled(record.id, True, next_run_at=next_run)
        return tuple(sorted({r.id for r in records}))

    def _stop_cron(self, schedule_ids: set[str]) -> None:
        for schedule_id in sorted(schedule_ids):
            self.cron_store.set_enabled(schedule_id, False)  # the schedule row and its history stay

    def _undeploy(self, live: _Live, report: ReconcileReport) -> None:
        for name in live.triggers:
            self._stop_trigger(name, live.fingerprint)
        self._stop_cron(set(live.cron_schedules))
        self.store.set_active(live.fingerprint, False)
        self.catalog.forget_package(live.fingerprint)
        del self._live[live.name]
        log.info("package %s %s removed; its triggers are disabled", live.name, live.version)
        report.removed.append(f"{live.name} {live.version} ({live.source})")

    def _stop_trigger(self, name: str, fingerprint: str) -> None:
        registered = registry.get_trigger(name)
        if registered is not None and registered.package_fingerprint == fingerprint:
            registry.unregister_trigger(name)
        if self.scheduler is not None:
            self.scheduler.remove(name)
        self.trigger_store.set_enabled(name, False)  # the schedule row and its history stay

    # -- the registry -------------------------------------------------------------------------------------
    def _reconcile_registry(self, report: ReconcileReport) -> None:
        """Deploy active packages stored without a file (``deploy --db``); remove those deactivated since."""
        try:
            rows = [r for r in self.store.list(active_only=True) if r["source_path"] is None]
        except Exception as exc:
            log.warning("cannot read the package registry (will retry): %s", exc)
            return
        active = {r["fingerprint"] for r in rows}
        for live in [lv for lv in self._live.values() if lv.source == REGISTRY_SOURCE]:
            if live.fingerprint not in active:
                self._undeploy(live, report)
        for row in rows:
            fingerprint = row["fingerprint"]
            live_now = self._live.get(row["name"])
            if fingerprint in self._registry_rejected or (live_now and live_now.fingerprint == fingerprint):
                continue
            try:
                data = self.store.get_archive(fingerprint)
                if data is None:
                    continue
                validated = read_archive(data, self.limits, legacy_fingerprint=True)  # validated when deployed
                if validated.fingerprint != fingerprint:
                    raise PackageError(
                        f"registry entry {fingerprint} holds package {validated.fingerprint}",
                        reason="fingerprint_mismatch",
                    )
                self._deploy(validated, None, report)
            except PackageError as exc:
                self._registry_rejected.add(fingerprint)
                self._reject(f"{REGISTRY_SOURCE}:{fingerprint[:12]}", exc, report)
            except Exception:
                log.exception("could not deploy registry package %s; will retry", fingerprint[:12])

    def _forget_vanished_files(self, current: dict[Path, tuple[int, int, int]]) -> None:
        """At start: packages stored from a watched file that is gone (removed while no daemon ran) are removed."""
        try:
            rows = self.store.list(active_only=True)
        except Exception as exc:
            log.warning("cannot read the package registry: %s", exc)
            return
        for row in rows:
            source = row["source_path"]
            if source is None or Path(source) in current or Path(source).parent not in self.watch_dirs:
                continue
            self.store.set_active(row["fingerprint"], False)
            self.catalog.forget_package(row["fingerprint"])
            triggers = row["manifest"].get("triggers", [])
            for trigger in triggers:
                self.trigger_store.set_enabled(trigger["name"], False)
            crons = {(t["workflow"], t["cron"], t.get("timezone") or "UTC") for t in triggers if t.get("cron")}
            if crons:
                self._stop_cron({r.id for r in self.cron_store.list_schedules(limit=None)
                                 if (r.workflow_name, r.cron_expression, r.timezone) in crons})  # fmt: skip
            log.info("package %s %s: its file %s is gone; marked inactive", row["name"], row["version"], source)

    # -- the loop -----------------------------------------------------------------------------------------
    def _safe_pass(self) -> None:
        try:
            report = self.reconcile_once()
            if report:
                log.debug("reconcile pass: %s", report)
        except Exception:
            log.exception("reconcile pass failed; the next change or rescan retries")

    def run(self, stop_event: threading.Event, rescan_interval_s: float = 30.0) -> None:
        """Reconcile now, then on every change in the watched folders and every ``rescan_interval_s``."""
        import watchfiles

        def is_archive(_change: watchfiles.Change, path: str) -> bool:
            return path.endswith(ARCHIVE_SUFFIX)

        self._safe_pass()
        while not stop_event.is_set():
            dirs = [str(d) for d in self.watch_dirs if d.is_dir()]
            if not dirs:
                stop_event.wait(rescan_interval_s)
                self._safe_pass()
                continue
            try:
                for _changes in watchfiles.watch(
                    *dirs,
                    watch_filter=is_archive,
                    stop_event=stop_event,
                    recursive=False,
                    rust_timeout=max(1, int(rescan_interval_s * 1000)),
                    yield_on_timeout=True,
                    debounce=400,
                ):
                    self._safe_pass()  # an empty change set is the periodic rescan
            except Exception as exc:  # a watched folder was removed, say: rescan and watch again
                log.warning("watching %s failed (%s); retrying", ", ".join(dirs), exc)
                stop_event.wait(1.0)
                self._safe_pass()
