"""Full validation of a ``.cloacina`` package: static checks, then an isolated import compared with the manifest.

:func:`verify_package` first runs :func:`~cloacina.packaging.archive.read_archive` (nothing is imported if the
archive is unsafe), then extracts it to a temporary directory and imports the entry module in a child process
(:func:`~cloacina.packaging.discover.discover_package`, 60 s at most by default, cloaca's limit).

A cloaca archive is imported with its own layout and workflow context and checked by
:func:`~cloacina.packaging.cloaca_binding.finish_manifest` (tasks registered, triggers bound); the result is its
complete manifest, which is what the registry stores. One of ours must agree with its manifest:

- every manifest task exists in code in the same workflow with the same dependencies, and vice versa;
- every manifest trigger exists in code with the same name, workflow, poll interval and ``allow_concurrent``,
  and vice versa. A trigger declared in code without ``workflow=`` is bound by the manifest (that is allowed).

A disagreement rejects the package (``PackageError``, reason ``manifest_mismatch``) with a message naming the
trigger or task and both values, e.g. ``trigger 'inbox_watcher': manifest says name 'inbox_watcher', code says
'inbox_watch'``.

Example (not run here, it spawns a process)::

    manifest = verify_package("data-ingest-1.0.0.cloacina")
    [t.name for t in manifest.triggers]   # ['inbox_watcher']
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from cloacina.definitions.duration import parse_duration_ms
from cloacina.packaging.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    PackageError,
    ValidatedArchive,
    extract_archive,
    read_archive,
)
from cloacina.packaging.cloaca_binding import finish_manifest
from cloacina.packaging.discover import IMPORT_TIMEOUT_S, discover_package, discovery_options
from cloacina.packaging.manifest import Manifest, TaskEntry, TriggerEntry


def _task_problems(manifest_tasks: list[TaskEntry], workflows: list[dict[str, Any]]) -> list[str]:
    code = {(w["name"], t["id"]): t for w in workflows for t in w["tasks"]}
    code_by_id: dict[str, list[str]] = {}
    for wf, task_id in code:
        code_by_id.setdefault(task_id, []).append(wf)
    declared = {(t.workflow, t.id): t for t in manifest_tasks}
    problems = []
    for (wf, task_id), entry in declared.items():
        found = code.get((wf, task_id))
        if found is None:
            elsewhere = [w for w in code_by_id.get(task_id, []) if (w, task_id) not in declared]
            if elsewhere:
                problems.append(f"task {task_id!r}: manifest says workflow {wf!r}, code says {elsewhere[0]!r}")
            else:
                problems.append(f"task {task_id!r} of workflow {wf!r} is in the manifest but not in the code")
        elif list(found["dependencies"]) != list(entry.dependencies):
            problems.append(
                f"task {task_id!r} of workflow {wf!r}: manifest says dependencies {entry.dependencies}, "
                f"code says {found['dependencies']}"
            )
    for wf, task_id in code:
        if (wf, task_id) not in declared and not any(task_id == t and w != wf for w, t in declared):
            problems.append(f"task {task_id!r} of workflow {wf!r} is in the code but not in the manifest")
    return problems


def _trigger_problems(manifest_triggers: list[TriggerEntry], code_triggers: list[dict[str, Any]]) -> list[str]:
    declared = {t.name: t for t in manifest_triggers}
    code = {t["name"]: t for t in code_triggers}
    missing = sorted(set(declared) - set(code))
    extra = sorted(set(code) - set(declared))
    problems = []
    if len(missing) == 1 and len(extra) == 1:  # one renamed trigger: say it the way a person would
        problems.append(f"trigger {missing[0]!r}: manifest says name {missing[0]!r}, code says {extra[0]!r}")
    else:
        problems += [f"trigger {n!r} is in the manifest but not in the code" for n in missing]
        problems += [f"trigger {n!r} is in the code but not in the manifest" for n in extra]
    for name in sorted(set(declared) & set(code)):
        entry, found = declared[name], code[name]
        if found["workflow"] is not None and found["workflow"] != entry.workflow:
            problems.append(
                f"trigger {name!r}: manifest says workflow {entry.workflow!r}, code says {found['workflow']!r}"
            )
        if parse_duration_ms(found["poll_interval"], allow_zero=True) != entry.poll_interval_ms:
            problems.append(
                f"trigger {name!r}: manifest says poll_interval {entry.poll_interval!r}, "
                f"code says {found['poll_interval']!r}"
            )
        if found.get("cron") != entry.cron:
            problems.append(f"trigger {name!r}: manifest says cron {entry.cron!r}, code says {found.get('cron')!r}")
        if bool(found["allow_concurrent"]) != entry.allow_concurrent:
            problems.append(
                f"trigger {name!r}: manifest says allow_concurrent {entry.allow_concurrent}, "
                f"code says {found['allow_concurrent']}"
            )
    return problems


def compare_with_code(manifest: Manifest, discovered: dict[str, Any]) -> None:
    """Raise ``PackageError`` (reason ``manifest_mismatch``) listing every disagreement between manifest and code."""
    problems = _task_problems(manifest.tasks, discovered.get("workflows", []))
    problems += _trigger_problems(manifest.triggers, discovered.get("triggers", []))
    if problems:
        package = f"{manifest.package.name} {manifest.package.version}"
        raise PackageError(
            f"package {package} does not match its code: {'; '.join(problems)}", reason="manifest_mismatch"
        )


def verify_archive(validated: ValidatedArchive, timeout_s: float = IMPORT_TIMEOUT_S) -> Manifest:
    """Import an already statically validated archive in isolation and check it; returns its complete manifest."""
    entry = validated.manifest.python.entry_module
    with tempfile.TemporaryDirectory(prefix="cloacina-verify-") as tmp:
        src = extract_archive(validated, os.path.join(tmp, "src"))
        discovered = discover_package(src, entry, timeout_s=timeout_s, options=discovery_options(validated))
    if validated.manifest.origin is not None:
        return finish_manifest(validated.manifest, discovered)
    compare_with_code(validated.manifest, discovered)
    return validated.manifest


def verify_package(
    archive: str | os.PathLike[str] | bytes,
    timeout_s: float = IMPORT_TIMEOUT_S,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> Manifest:
    """Validate a ``.cloacina`` file or its bytes completely; returns its manifest or raises ``PackageError``."""
    return verify_archive(read_archive(archive, limits), timeout_s=timeout_s)
