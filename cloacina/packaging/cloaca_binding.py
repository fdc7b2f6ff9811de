"""What a cloaca package's import registered, checked and turned into its complete canonical manifest.

:func:`finish_manifest` takes the discovery document (``{"workflows": [...], "triggers": [...]}``, as
:mod:`~cloacina.packaging.discover` describes a registry) of a package read by
:mod:`~cloacina.packaging.cloaca_format` and returns the manifest with its tasks and bound triggers:

- at least one task must have been registered (bare ``@cloaca.task`` in the loader's workflow context, or a
  ``WorkflowBuilder`` block), else ``PackageError`` reason ``empty_package``;
- the older form: the task ids must be those ``manifest.json`` lists, and every code trigger needs an entry of
  the same name, which binds its workflow (the package's name stands for its only workflow), poll interval,
  concurrency and config;
- today's form: a trigger fires its ``on=`` workflow; a poll trigger without one fires the package's
  ``workflow_name`` workflow (or its only workflow). A ``cron=`` trigger keeps its expression and zone.

>>> from cloacina.packaging.cloaca_format import TOML_EXAMPLE, read_cloaca_archive
>>> static = read_cloaca_archive({"p-1/package.toml": TOML_EXAMPLE, "p-1/workflow/p.py": b""}, set()).manifest
>>> task = {"id": "a", "function": "p:a", "dependencies": [], "description": "", "retries": 2,
...         "timeout_seconds": None}
>>> trig = {"name": "t", "workflow": None, "poll_interval": "30s", "allow_concurrent": False}
>>> full = finish_manifest(static, {"workflows": [{"name": "p_flow", "tasks": [task]}], "triggers": [trig]})
>>> [(t.workflow, t.id) for t in full.tasks], [(t.name, t.workflow) for t in full.triggers]
([('p_flow', 'a')], [('t', 'p_flow')])
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from cloacina.packaging.manifest import Manifest, OriginInfo, TaskEntry, TriggerEntry
from cloacina.packaging.members import PackageError


def _default_workflow(origin: OriginInfo, workflows: Collection[str]) -> str | None:
    if origin.workflow_name in workflows:
        return origin.workflow_name
    return next(iter(workflows)) if len(workflows) == 1 else None


def bind_triggers(manifest: Manifest, workflows: Collection[str], code: list[Mapping[str, Any]]) -> list[TriggerEntry]:
    """The code's triggers bound to workflows by the rules of the manifest's form; ``PackageError`` on a mismatch."""
    origin = manifest.origin
    assert origin is not None, "bind_triggers is for cloaca packages"
    problems: list[str] = []
    declared = {t.name: t for t in manifest.triggers}
    bound = []
    for found in sorted(code, key=lambda t: str(t["name"])):
        name, own = found["name"], found.get("workflow")
        cron = found.get("cron")
        if origin.format == "cloaca":
            target = own if own is not None else _default_workflow(origin, workflows)
            entry = {"poll_interval": found["poll_interval"], "allow_concurrent": bool(found["allow_concurrent"])}
        else:
            listed = declared.get(name)
            if listed is None:
                problems.append(f"trigger {name!r} is defined in code but has no entry in manifest.json")
                continue
            target = listed.workflow
            if target not in workflows and target == manifest.package.name:
                target = _default_workflow(origin, workflows) or target
            if own is not None and own != target:
                problems.append(f"trigger {name!r}: manifest.json says workflow {target!r}, code says {own!r}")
                continue
            entry = {"poll_interval": listed.poll_interval, "allow_concurrent": listed.allow_concurrent,
                     "config": listed.config}  # fmt: skip
        if target is None or target not in workflows:
            listed_names = ", ".join(sorted(workflows)) or "none"
            problems.append(
                f"trigger {name!r} fires workflow {target!r}, which the package lacks (has: {listed_names})"
            )
            continue
        timing = {"cron": cron, "timezone": found.get("timezone") or "UTC"} if cron else {}
        bound.append(TriggerEntry.model_validate({"name": name, "workflow": target, **entry, **timing}))
    if origin.format == "cloaca-manifest":
        names = {t["name"] for t in code}
        problems += [f"manifest.json lists trigger {n!r} but the code defines no such @cloaca.trigger"
                     for n in sorted(set(declared) - names)]  # fmt: skip
    if problems:
        raise PackageError(
            f"package {manifest.package.name} {manifest.package.version}: {'; '.join(problems)}",
            reason="manifest_mismatch",
        )
    return bound


def finish_manifest(manifest: Manifest, discovered: Mapping[str, Any]) -> Manifest:
    """The complete manifest of a cloaca package from what importing it registered (the discovery document)."""
    origin = manifest.origin
    assert origin is not None, "finish_manifest is for cloaca packages"
    package = f"package {manifest.package.name} {manifest.package.version}"
    workflows = [w for w in discovered.get("workflows", []) if w["tasks"]]
    if not workflows:
        raise PackageError(
            f"{package}: importing {manifest.python.entry_module!r} registered no tasks; declare them with "
            f"@cloaca.task at module level (they join workflow {origin.workflow_name!r})",
            reason="empty_package",
        )
    if origin.format == "cloaca-manifest":
        code_ids = {t["id"] for w in workflows for t in w["tasks"]}
        missing = sorted(set(origin.declared_tasks) - code_ids)
        extra = sorted(code_ids - set(origin.declared_tasks))
        problems = [f"manifest.json lists task {t!r} but the code defines none" for t in missing]
        problems += [f"task {t!r} is defined in code but not listed in manifest.json" for t in extra]
        if problems:
            raise PackageError(f"{package}: {'; '.join(problems)}", reason="manifest_mismatch")
    names = [w["name"] for w in workflows]
    triggers = bind_triggers(manifest, names, list(discovered.get("triggers", [])))
    try:
        tasks = [
            TaskEntry(workflow=w["name"], **t) for w in sorted(workflows, key=lambda w: w["name"]) for t in w["tasks"]
        ]
        return Manifest.model_validate(
            {**manifest.model_dump(), "tasks": [t.model_dump() for t in tasks],
             "triggers": [t.model_dump() for t in triggers]}
        )  # fmt: skip
    except ValidationError as exc:
        problems_text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise PackageError(
            f"{package}: its code cannot be described: {problems_text}", reason="invalid_manifest"
        ) from None
