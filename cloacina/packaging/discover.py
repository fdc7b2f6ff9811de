"""Discover a package's workflows, tasks and triggers by importing its entry module in a separate process.

The child process (``python -m cloacina.packaging.discover SRC_DIR ENTRY_MODULE [OPTIONS]``) puts ``SRC_DIR``
first on ``sys.path``, makes ``import cloaca`` resolve to cloacina, imports the entry module, and prints one JSON
document on stdout (anything the package prints goes to stderr). For a cloaca package ``OPTIONS``
(:func:`discovery_options`) puts its ``workflow/`` and ``vendor/`` on the path instead and imports the entry module
inside the workflow context of its ``package.toml``, whose bare ``@task`` decorators form that workflow::

    {"entry_module": "data_ingest",
     "workflows": [{"name": "data_ingest", "description": "...", "tasks": [
         {"id": "validate", "function": "data_ingest:validate", "dependencies": [], "description": "...",
          "retries": 3, "timeout_seconds": null}, ...]}],
     "triggers": [{"name": "inbox_watcher", "workflow": null, "poll_interval": "5s", "poll_interval_ms": 5000,
                   "allow_concurrent": false, "function": "data_ingest:inbox_watcher"}]}

:func:`discover_package` runs that child under a timeout with ``-I -B`` (isolated: no ``PYTHONPATH``, no user
site, no bytecode written) and an environment reduced to ``PATH``, ``HOME``, locale and temp-dir variables, so
the package's import-time code never sees the caller's secrets. The package is never imported in the caller.
A package error found in the child (a workflow declared twice) comes back as ``{"error": {...}}`` and is raised
here with its reason. The default limit is cloaca's: 60 s.

Example (not run here, it spawns a process)::

    found = discover_package("examples/packages/data_ingest", "data_ingest")
    [w["name"] for w in found["workflows"]]   # ['data_ingest']
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

from cloacina.packaging.members import PackageError

if TYPE_CHECKING:
    from cloacina.definitions.trigger import TriggerDefinition
    from cloacina.definitions.workflow import Workflow
    from cloacina.packaging.archive import ValidatedArchive

IMPORT_TIMEOUT_S = 60.0  #: cloaca's limit on importing a package's entry module

_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "TZ")
_MAX_STDOUT_BYTES = 16 * 1024 * 1024
_STDERR_TAIL_BYTES = 4000

# Runs in the child: make sure the caller's cloacina is the one imported, then hand over to main().
_BOOTSTRAP = """\
import importlib.util, os, sys
root = sys.argv[1]
spec = importlib.util.find_spec("cloacina")
if spec is None or os.path.dirname(os.path.dirname(os.path.realpath(spec.origin or ""))) != root:
    sys.path.insert(0, root)
from cloacina.packaging.discover import run_child
run_child(sys.argv[2:])
"""


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "unknown"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}:{qualname}"


def _retries(policy: object) -> int:
    """Retries after the first attempt (the manifest's ``retries``), from a policy counting total attempts."""
    attempts = getattr(policy, "max_attempts", None)
    if isinstance(attempts, int):
        return max(attempts - 1, 0)
    return int(getattr(policy, "max_retries", 0))


def describe_workflows(workflows: Mapping[str, Workflow]) -> list[dict[str, Any]]:
    """Workflows as the discovery document lists them (name, description, tasks in topological order)."""
    described = []
    for name in sorted(workflows):
        workflow = workflows[name]
        tasks = [
            {
                "id": task_id,
                "function": _function_name(t.function),
                "dependencies": list(t.dependencies),
                "description": t.description,
                "retries": _retries(t.retry),
                "timeout_seconds": t.timeout_s,
            }
            for task_id in workflow.topological_order
            for t in (workflow.tasks[task_id],)
        ]
        described.append({"name": name, "description": workflow.description, "tasks": tasks})
    return described


def describe_triggers(triggers: Iterable[TriggerDefinition]) -> list[dict[str, Any]]:
    """Triggers as the discovery document lists them (``cron`` set for ``@trigger(cron=...)``)."""
    return [
        {
            "name": t.name,
            "workflow": t.workflow,
            "poll_interval": t.poll_interval,
            "poll_interval_ms": t.poll_interval_ms,
            "allow_concurrent": t.allow_concurrent,
            "cron": t.cron,
            "timezone": t.timezone,
            "function": _function_name(t.function),
        }
        for t in sorted(triggers, key=lambda t: t.name)
    ]


def describe_registry() -> dict[str, Any]:
    """The workflows and triggers registered in this process, as the JSON-able discovery document."""
    from cloacina.definitions import registry

    workflows = {name: registry.get_workflow(name) for name in registry.workflow_names()}
    return {"workflows": describe_workflows(workflows), "triggers": describe_triggers(registry.all_triggers())}


def import_in_context(
    import_entry: Callable[[], ModuleType], context: tuple[str, str] | None
) -> tuple[ModuleType, Workflow | None]:
    """Import (``import_entry()``), inside the workflow context ``(workflow, package)`` if one is given.

    Returns the module and the workflow the bare ``@task`` decorators formed in that context (``None`` if none
    registered there). This is how a cloaca package is imported, here and in the loader.
    """
    from cloacina.definitions import registry

    if context is None:
        return import_entry(), None
    workflow, package = context
    before = registry.namespace_tasks(workflow, package=package)
    with registry.workflow_context(workflow, package=package):
        module = import_entry()
    added = {k: t for k, t in registry.namespace_tasks(workflow, package=package).items() if before.get(k) is not t}
    if not added:
        return module, None
    return module, registry.collect_workflow(workflow, package=package)


def merge_context_workflow(workflows: dict[str, Workflow], context_workflow: Workflow | None) -> dict[str, Workflow]:
    """``workflows`` (registered by ``WorkflowBuilder`` blocks) plus the context's workflow; a name clash fails."""
    if context_workflow is None:
        return workflows
    if context_workflow.name in workflows:
        raise PackageError(
            f"workflow {context_workflow.name!r} is declared twice: by module-level @cloaca.task decorators "
            "(the package's workflow context) and by a WorkflowBuilder block of the same name",
            reason="duplicate_workflow",
            member=context_workflow.name,
        )
    return {**workflows, context_workflow.name: context_workflow}


def _parse_options(raw: str | None) -> tuple[list[str], tuple[str, str] | None]:
    if raw is None:
        return [""], None
    options = json.loads(raw)
    context = options.get("context")
    return list(options.get("paths") or [""]), (context[0], context[1]) if context else None


def discovery_options(validated: ValidatedArchive) -> str | None:
    """The child's third argument for a cloaca package (import paths and workflow context), ``None`` for ours."""
    origin = validated.manifest.origin
    if origin is None:
        return None
    return json.dumps({"paths": validated.import_paths, "context": [origin.workflow_name, validated.name]})


def main(argv: list[str] | None = None) -> int:
    """Child entry point: import ``ENTRY_MODULE`` from ``SRC_DIR`` and print the discovery JSON on stdout.

    An optional third argument (JSON, :func:`discovery_options`) gives a cloaca package's import paths (relative
    to ``SRC_DIR``) and the workflow context to import it in.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m cloacina.packaging.discover SRC_DIR ENTRY_MODULE [OPTIONS_JSON]", file=sys.stderr)
        return 2
    src_dir, entry_module = os.path.abspath(args[0]), args[1]
    paths, context = _parse_options(args[2] if len(args) == 3 else None)
    import cloacina
    from cloacina.definitions import registry

    sys.modules["cloaca"] = cloacina  # package code written for cloaca says `import cloaca`
    sys.path[:0] = [os.path.join(src_dir, p) if p else src_dir for p in paths]
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the package prints (even from C) lands on stderr, not in our JSON
    sys.stdout = sys.stderr
    before = set(registry.workflow_names())
    _, context_workflow = import_in_context(lambda: importlib.import_module(entry_module), context)
    document: dict[str, Any]
    try:
        if context is not None:  # a cloaca package: what its import declared, the context's workflow included
            declared = {n: registry.get_workflow(n) for n in registry.workflow_names() if n not in before}
            for name, workflow in merge_context_workflow(declared, context_workflow).items():
                registry.register_workflow(workflow, name)
        document = {"entry_module": entry_module, **describe_registry()}
    except PackageError as exc:  # the code imported, but declares what no package may: say why, precisely
        document = {"error": {"message": str(exc), "reason": exc.reason, "member": exc.member}}
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        json.dump(document, out)
    return 0


def run_child(argv: list[str]) -> None:
    """Run :func:`main` and leave at once, so threads or atexit hooks the package started cannot hold us up."""
    code = 1
    try:
        code = main(argv)
    except SystemExit as exc:  # the package called sys.exit() while being imported
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _clean_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env["PYTHONIOENCODING"] = "utf-8"  # ignored under -I, harmless; the child decodes JSON as UTF-8 anyway
    return env


def _drain(stream: IO[bytes], sink: bytearray, limit: int, keep_tail: bool) -> None:
    """Read a pipe to EOF keeping at most ``limit`` bytes (the head, or the tail), so a chatty child is harmless."""
    while chunk := stream.read(65536):
        sink.extend(chunk)
        if len(sink) > limit:
            if keep_tail:
                del sink[: len(sink) - limit]
            else:
                del sink[limit + 1 :]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the package may have spawned children
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _tail(data: bytes | bytearray) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-_STDERR_TAIL_BYTES:] if text else "(no output on stderr)"


def discover_package(
    src_dir: str | os.PathLike[str], entry_module: str, timeout_s: float = IMPORT_TIMEOUT_S, options: str | None = None
) -> dict[str, Any]:
    """Import ``entry_module`` from ``src_dir`` in a child process; ``PackageError`` on failure or timeout.

    ``options``: :func:`discovery_options` of a cloaca package.
    """
    import cloacina

    src = Path(src_dir).resolve()
    root = str(Path(cloacina.__file__).resolve().parent.parent)
    cmd = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, root, str(src), entry_module]
    if options is not None:
        cmd.append(options)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=src,
        env=_clean_env(),
        start_new_session=os.name == "posix",
    )
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out, _MAX_STDOUT_BYTES, False), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err, _STDERR_TAIL_BYTES * 4, True), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
        for reader in readers:
            reader.join(5)
        raise PackageError(
            f"importing {entry_module!r} took longer than {timeout_s:g}s; stderr: {_tail(err)}",
            reason="import_timeout",
            member=entry_module,
        ) from None
    for reader in readers:
        reader.join(5)
    proc.stdout.close()
    proc.stderr.close()
    if code != 0:
        raise PackageError(
            f"importing {entry_module!r} failed (exit status {code}): {_tail(err)}",
            reason="import_failed",
            member=entry_module,
        )
    if not out:
        raise PackageError(
            f"importing {entry_module!r} produced no discovery output (did it call sys.exit()?); stderr: {_tail(err)}",
            reason="import_failed",
            member=entry_module,
        )
    try:
        document = json.loads(bytes(out).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PackageError(
            f"discovery printed no valid JSON ({exc}); stderr: {_tail(err)}", reason="import_failed"
        ) from None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        raise PackageError(str(error.get("message")), reason=str(error.get("reason")), member=error.get("member"))
    if not isinstance(document, dict) or not isinstance(document.get("workflows"), list):
        raise PackageError("discovery returned an unexpected document", reason="import_failed")
    return document


if __name__ == "__main__":
    run_child(sys.argv[1:])
