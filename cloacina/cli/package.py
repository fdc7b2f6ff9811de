"""``cloacina package``: build, validate and inspect ``.cloacina`` packages, and print the manifest schema.

::

    $ cloacina package build examples/packages/data_ingest -o dist   # pyproject.toml [tool.cloaca]: our format
    $ cloacina package build my-pipeline -o dist                     # package.toml + workflow/: cloaca's format
    $ cloacina package validate dist/data-ingest-1.0.0.cloacina      # exit 0 and a summary, or exit 1 and why
    $ cloacina package inspect dist/data-ingest-1.0.0.cloacina --json
    $ cloacina package schema > manifest.schema.json
    $ cloacina package deploy dist/data-ingest-1.0.0.cloacina             # into ~/.cloacina/packages/
    $ cloacina package deploy dist/data-ingest-1.0.0.cloacina --db postgresql://db/cloacina   # registry only
    $ cloacina package list --json

Every command reads our archives and cloaca's (``package.toml`` with ``workflow/``, or the older root
``manifest.json``); a cloaca archive is described by the manifest derived from it, our canonical form.
``validate`` and ``deploy`` import the package in a separate process (``validate --static`` skips that);
``inspect`` never imports it. ``deploy`` copies atomically into a watched folder (``--to``, default the
daemon's) or stores the archive in a database's package registry (``--db``), where a running daemon picks it up
at its next rescan and marks older versions inactive. Register with ``main.add_command(package)`` in
:mod:`cloacina.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cloacina.cli.common import cli_errors, console, emit_json, fmt_bool, fmt_time, new_table, shorten, sqlite_path
from cloacina.cli.daemon import daemon_db_option, default_database_url, default_watch_dir, prepare_sqlite_dir
from cloacina.packaging.archive import PackageError, ValidatedArchive, read_archive, write_atomically
from cloacina.packaging.builder import build_package
from cloacina.packaging.cloaca_build import build_cloaca, is_cloaca_source
from cloacina.packaging.discover import IMPORT_TIMEOUT_S
from cloacina.packaging.manifest import Manifest, manifest_json_schema
from cloacina.packaging.verify import verify_archive

_FORMATS = {
    "cloacina": "cloacina (manifest.json)",
    "cloaca": "cloaca (package.toml)",
    "cloaca-manifest": "cloaca, older form (manifest.json)",
}
_TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=IMPORT_TIMEOUT_S,
    show_default=True,
    help="Seconds allowed for importing the package in a child process.",
)


def _fail(exc: PackageError) -> click.ClickException:
    return click.ClickException(f"invalid package ({exc.reason}): {exc}")


def _summary(manifest: Manifest) -> str:
    p = manifest.package
    origin = manifest.origin
    if origin is not None and not manifest.tasks:  # statically read: the code has not been imported
        workflows = f"{origin.workflow_name} (tasks are declared in code)"
    else:
        workflows = f"{', '.join(manifest.workflow_names) or 'none'} ({len(manifest.tasks)} tasks)"
    triggers = ", ".join(
        f"{t.name} -> {t.workflow}{f' (cron {t.cron})' if t.cron else ''}" for t in manifest.triggers
    ) or ("declared in code" if origin is not None and origin.format == "cloaca" and not manifest.tasks else "none")
    return (
        f"{p.name} {p.version}  fingerprint {p.fingerprint}\n"
        f"  format: {_FORMATS[manifest.source_format]}\n"
        f"  entry module: {manifest.python.entry_module}\n"
        f"  workflows: {workflows}\n"
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
    """Build SRC_DIR into a .cloacina archive.

    A cloaca package directory (package.toml, modules under workflow/) becomes a cloaca-format archive (bzip2 tar
    under NAME-VERSION/), deployable here and on cloaca; a directory with a pyproject.toml naming
    [tool.cloaca] entry_module becomes one of ours (gzip tar with our manifest.json).
    """
    try:
        if is_cloaca_source(src_dir):
            path, manifest = build_cloaca(src_dir, out_dir, timeout_s=timeout_s)
            validated = read_archive(path, runtime_checks=False)
        else:
            path = build_package(src_dir, out_dir, timeout_s=timeout_s)
            validated = read_archive(path, runtime_checks=False)
            manifest = validated.manifest
    except PackageError as exc:
        raise click.ClickException(f"cannot build package ({exc.reason}): {exc}") from exc
    click.echo(f"built {path} ({validated.size_bytes} bytes)")
    click.echo(_summary(manifest))


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
        validated = read_archive(file, runtime_checks=False)
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
    if manifest.origin is not None:
        click.echo(f"  workflow context: {manifest.origin.workflow_name}")
        click.echo(f"  import paths: {', '.join(manifest.origin.import_paths)}")
        if manifest.origin.author:
            click.echo(f"  author: {manifest.origin.author}")
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


@package.command("deploy")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--to",
    "to_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Watched folder to copy the archive into. Default: ~/.cloacina/packages.",
)
@click.option("--db", "db_url", metavar="URL", default=None, help="Store in this database's package registry instead.")
@_TIMEOUT
def deploy_command(file: Path, to_dir: Path | None, db_url: str | None, timeout_s: float) -> None:
    """Validate FILE completely, then deploy it into a watched folder or a database's package registry."""
    if to_dir is not None and db_url is not None:
        raise click.UsageError("--to and --db exclude each other: deploy into a folder or into a registry")
    try:
        validated = read_archive(file)
        validated = validated.with_manifest(verify_archive(validated, timeout_s=timeout_s))
    except PackageError as exc:
        raise _fail(exc) from exc
    p = validated.manifest.package
    if db_url is None:
        target = (to_dir or default_watch_dir()).expanduser() / f"{p.name}-{p.version}.cloacina"
        write_atomically(target, validated.archive)  # a watcher never sees a half-written archive
        click.echo(f"deployed {p.name} {p.version} ({p.fingerprint[:12]}) to {target}")
        return
    from cloacina.store.database import Database
    from cloacina.store.packages import PackageStore

    with cli_errors():
        prepare_sqlite_dir(db_url)
        db = Database(db_url, pool_size=1)
        try:
            db.upgrade()
            store = PackageStore(db)
            is_new = store.put(validated, None, active=True)
            replaced = store.deactivate_others(p.name, p.fingerprint)
        finally:
            db.dispose()
    what = "stored" if is_new else "already stored; marked active"
    click.echo(f"deployed {p.name} {p.version} ({p.fingerprint[:12]}) to the registry of {db.url.display}: {what}")
    if replaced:
        click.echo(f"  older version(s) marked inactive: {', '.join(f[:12] for f in replaced)}")


@package.command("list")
@daemon_db_option
@click.option("--active", "active_only", is_flag=True, help="Only the versions a daemon schedules.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
def list_command(db_url: str | None, active_only: bool, as_json: bool) -> None:
    """List the packages in the database's package registry, newest version first."""
    from cloacina.store.database import Database
    from cloacina.store.packages import PackageStore
    from cloacina.store.urls import parse_database_url

    db_url = db_url or default_database_url()
    with cli_errors():
        url = parse_database_url(db_url)
        path = sqlite_path(url)
        if path is not None and not Path(path).exists():
            raise click.ClickException(f"database {url.display} does not exist; check --db")
        db = Database(db_url, pool_size=1)
        try:
            db.check_migrated()
            rows = PackageStore(db).list(active_only=active_only)
        finally:
            db.dispose()
    if as_json:
        emit_json(rows)
        return
    table = new_table(f"packages in {url.display}")
    for column in ("name", "version", "fingerprint", "active", "triggers", "size", "source", "updated"):
        table.add_column(column)
    for row in rows:
        triggers = ", ".join(t["name"] for t in row["manifest"].get("triggers", [])) or "-"
        table.add_row(
            row["name"],
            row["version"],
            row["fingerprint"][:12],
            fmt_bool(row["active"]),
            shorten(triggers, 40),
            f"{row['size_bytes']} B",
            shorten(row["source_path"] or "(registry)", 60),
            fmt_time(row["updated_at"]),
        )
    console().print(table if rows else "no packages")
