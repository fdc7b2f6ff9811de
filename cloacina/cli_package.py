"""``cloacina package``: build, validate and inspect ``.cloacina`` packages, and print the manifest schema.

::

    $ cloacina package build examples/packages/data_ingest -o dist
    $ cloacina package validate dist/data-ingest-1.0.0.cloacina      # exit 0 and a summary, or exit 1 and why
    $ cloacina package inspect dist/data-ingest-1.0.0.cloacina --json
    $ cloacina package schema > manifest.schema.json

``validate`` imports the package in a separate process (``--static`` skips that); ``inspect`` never imports it.
Register with ``main.add_command(package)`` in :mod:`cloacina.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cloacina.packaging.archive import PackageError, ValidatedArchive, read_archive
from cloacina.packaging.builder import build_package
from cloacina.packaging.manifest import Manifest, manifest_json_schema
from cloacina.packaging.verify import verify_archive

_TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds allowed for importing the package in a child process.",
)


def _fail(exc: PackageError) -> click.ClickException:
    return click.ClickException(f"invalid package ({exc.reason}): {exc}")


def _summary(manifest: Manifest) -> str:
    p = manifest.package
    workflows = ", ".join(manifest.workflow_names) or "none"
    triggers = ", ".join(f"{t.name} -> {t.workflow}" for t in manifest.triggers) or "none"
    return (
        f"{p.name} {p.version}  fingerprint {p.fingerprint}\n"
        f"  entry module: {manifest.python.entry_module}\n"
        f"  workflows: {workflows} ({len(manifest.tasks)} tasks)\n"
        f"  triggers: {triggers}"
    )


@click.group("package")
def package() -> None:
    """Build, validate and inspect .cloacina packages."""


@package.command("build")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write NAME-VERSION.cloacina into.",
)
@_TIMEOUT
def build_command(src_dir: Path, out_dir: Path, timeout_s: float) -> None:
    """Build SRC_DIR (with a pyproject.toml naming [tool.cloaca] entry_module) into a .cloacina archive."""
    try:
        path = build_package(src_dir, out_dir, timeout_s=timeout_s)
        validated = read_archive(path)
    except PackageError as exc:
        raise click.ClickException(f"cannot build package ({exc.reason}): {exc}") from exc
    click.echo(f"built {path} ({validated.size_bytes} bytes)")
    click.echo(_summary(validated.manifest))


@package.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--static", "static_only", is_flag=True, help="Only the checks that need no import.")
@_TIMEOUT
def validate_command(file: Path, static_only: bool, timeout_s: float) -> None:
    """Validate FILE: safety checks, manifest schema, fingerprint, then an isolated import compared with it."""
    try:
        validated = read_archive(file)
        manifest = validated.manifest if static_only else verify_archive(validated, timeout_s=timeout_s)
    except PackageError as exc:
        raise _fail(exc) from exc
    click.echo(f"valid{' (static checks only)' if static_only else ''}: {_summary(manifest)}")


def _inspect_document(validated: ValidatedArchive) -> dict[str, object]:
    return {
        "manifest": validated.manifest.model_dump(mode="json"),
        "size_bytes": validated.size_bytes,
        "files": [{"path": p, "size_bytes": len(d)} for p, d in sorted(validated.files.items())],
    }


@package.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and file list as JSON.")
def inspect_command(file: Path, as_json: bool) -> None:
    """Show FILE's manifest and contents (static checks only; the code is not imported)."""
    try:
        validated = read_archive(file)
    except PackageError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(json.dumps(_inspect_document(validated), indent=2, ensure_ascii=False))
        return
    manifest = validated.manifest
    click.echo(_summary(manifest))
    if manifest.package.description:
        click.echo(f"  description: {manifest.package.description}")
    if manifest.python.requires_python:
        click.echo(f"  requires-python: {manifest.python.requires_python}")
    click.echo("tasks:")
    for task in manifest.tasks:
        deps = f" <- {', '.join(task.dependencies)}" if task.dependencies else ""
        click.echo(f"  {task.workflow}.{task.id}{deps}  ({task.function})")
    click.echo("triggers:")
    for trig in manifest.triggers:
        click.echo(
            f"  {trig.name} -> {trig.workflow} every {trig.poll_interval}"
            f"{' (concurrent)' if trig.allow_concurrent else ''} config={json.dumps(trig.config)}"
        )
    click.echo(f"files ({len(validated.files)}, {validated.size_bytes} bytes compressed):")
    for path, data in sorted(validated.files.items()):
        click.echo(f"  {path}  {len(data)} B")


@package.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of manifest.json."""
    click.echo(json.dumps(manifest_json_schema(), indent=2))
