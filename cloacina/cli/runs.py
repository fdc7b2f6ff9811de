"""``cloacina runs``: list workflow runs and show one run with its tasks and their attempts.

::

    $ cloacina runs list --status Failed --limit 10
    $ cloacina runs show 6f1c0c7e-... --json
    $ cloacina runs start nightly_report --context '{"day": "2024-05-01"}' --wait
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from cloacina.cli.common import (
    cli_errors,
    console,
    db_option,
    duration_ms,
    emit_json,
    fmt_duration_ms,
    fmt_time,
    json_option,
    management_runner,
    new_table,
    shorten,
    styled_status,
)
from cloacina.definitions.app_loader import load_app
from cloacina.engine.states import RunStatus
from cloacina.runner.default_runner import DefaultRunner
from cloacina.runner.errors import WorkflowTimeoutError
from cloacina.store.runs import AttemptRecord, RunRecord, TaskRecord
from cloacina.timestamps import iso

RUN_STATUSES = [s.value for s in RunStatus]


def run_to_dict(run: RunRecord, *, contexts: bool) -> dict[str, Any]:
    """The JSON form of a run (``contexts``: include input and final context)."""
    data: dict[str, Any] = {
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "trigger_name": run.trigger_name,
        "cron_schedule_id": run.cron_schedule_id,
        "fired_by": run.fired_by,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "duration_ms": duration_ms(run.started_at or run.created_at, run.completed_at),
        "deadline_at": iso(run.deadline_at),
        "error_message": run.error_message,
        "retry_of": run.retry_of,
        "waiting_reason": run.waiting_reason,
    }
    if contexts:
        data["input_context"] = run.input_context
        data["final_context"] = run.final_context
    return data


def _attempt_to_dict(a: AttemptRecord) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "status": a.status,
        "started_at": iso(a.started_at),
        "completed_at": iso(a.completed_at),
        "duration_ms": a.duration_ms,
        "error_message": a.error_message,
        "error_kind": a.error_kind,
        "worker": a.worker,
    }


def task_to_dict(task: TaskRecord, attempts: list[AttemptRecord]) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "started_at": iso(task.started_at),
        "completed_at": iso(task.completed_at),
        "duration_ms": duration_ms(task.started_at, task.completed_at),
        "next_attempt_at": iso(task.next_attempt_at),
        "error_message": task.error_message,
        "error_kind": task.error_kind,
        "skip_reason": task.skip_reason,
        "attempts": [_attempt_to_dict(a) for a in attempts],
        "input_context": task.input_context,
        "output_context": task.output_context,
    }


@click.group("runs")
def runs_group() -> None:
    """Workflow runs: list, show, start, cancel and retry."""


@runs_group.command("list")
@db_option
@json_option
@click.option("--workflow", "-w", "workflow", metavar="NAME", help="Only runs of this workflow.")
@click.option("--status", "-s", type=click.Choice(RUN_STATUSES, case_sensitive=False), help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N runs.")
def runs_list(db_url: str, as_json: bool, workflow: str | None, status: str | None, limit: int) -> None:
    """List runs, newest first."""
    with management_runner(db_url) as runner:
        runs = runner.runs.list_runs(workflow_name=workflow, status=status, limit=limit)
    if as_json:
        emit_json([run_to_dict(r, contexts=False) for r in runs])
        return
    if not runs:
        click.echo("No runs match." if workflow or status else "No runs yet.")
        return
    table = new_table("Runs")
    table.add_column("run id", no_wrap=True)
    table.add_column("workflow")
    table.add_column("status", min_width=9)
    table.add_column("trigger")
    table.add_column("created")
    table.add_column("took", justify="right")
    table.add_column("error", overflow="fold")
    for r in runs:
        table.add_row(
            r.run_id,
            r.workflow_name,
            styled_status(r.status.value),
            r.fired_by or "-",
            fmt_time(r.created_at),
            fmt_duration_ms(duration_ms(r.started_at or r.created_at, r.completed_at)),
            shorten(r.error_message, 60),
        )
    console().print(table)


@runs_group.command("show")
@click.argument("run_id")
@db_option
@json_option
def runs_show(run_id: str, db_url: str, as_json: bool) -> None:
    """One run with its tasks: status, attempts, errors and timings."""
    with management_runner(db_url) as runner:
        run = runner.runs.get_run(run_id)
        if run is None:
            raise click.ClickException(f"unknown run {run_id!r}; `cloacina runs list` shows run ids")
        tasks = runner.runs.get_tasks(run_id)
        attempts = {task_id: runner.runs.get_attempts(run_id, task_id) for task_id in tasks}
    if as_json:
        data = run_to_dict(run, contexts=True)
        data["tasks"] = [task_to_dict(t, attempts[t.task_id]) for t in tasks.values()]
        emit_json(data)
        return
    console().print(Group(_run_table(run), "", _tasks_table(tasks, attempts)))


JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_context(_ctx: click.Context | None, _param: click.Parameter | None, value: str | None) -> dict[str, Any]:
    """``--context``: a JSON object (``{}`` when not given); anything else is a usage error (exit 2)."""
    if value is None:
        return {}
    try:
        data = json.loads(value, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        got = "null" if data is None else JSON_TYPES.get(type(data), type(data).__name__)
        raise click.BadParameter(f"must be a JSON object such as '{{\"n\": 1}}', got {got}")
    return data


@runs_group.command("start")
@click.argument("workflow")
@db_option
@json_option
@click.option("--context", "context", metavar="JSON", callback=parse_context, help="Input context: a JSON object.")
@click.option("--wait", is_flag=True, help="Wait until the run ends and show it; exit 1 unless it Completed.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="With --wait: stop waiting after this long (exit 1; the run goes on).")  # fmt: skip
def runs_start(
    workflow: str, db_url: str, as_json: bool, context: dict[str, Any], wait: bool, timeout_s: float | None
) -> None:
    """Start a run of WORKFLOW by name and print its id (with --wait: its outcome).

    The workflow's code need not be importable here: with CLOACINA_BROKER_URL set (distributed mode), any
    workflow in the catalog that the workers, pollers, runners and package deploys of the deployment record
    starts on the workers, with the version the catalog serves. Without a broker there is no process here to
    execute it: run the app instead (`cloacina run APP`).
    """
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    with management_runner(db_url) as runner:
        entry = runner.deployment.catalog.get_workflow(workflow)
        if entry is None:
            known = ", ".join(e.name for e in runner.list_catalog()) or "none yet"
            raise click.ClickException(
                f"unknown workflow {workflow!r}: no process of this deployment recorded it in the workflow "
                f"catalog (cataloged: {known})"
            )
        if not runner.broker_url:
            raise click.ClickException(
                f"workflow {workflow!r} ({entry.origin}) cannot run here: starting a run without its code needs "
                "a distributed deployment (set CLOACINA_BROKER_URL to the broker of its workers); embedded runs "
                "execute in the process that has the code (`cloacina run APP`)"
            )
        run_id = runner.start_run(workflow, context)
        if not wait:
            if as_json:
                emit_json({"run_id": run_id, "workflow_name": workflow, "workflow_version": entry.version})
            else:
                click.echo(run_id)
            return
        if not as_json:
            click.echo(f"run {run_id} of {workflow} started; waiting for it to end", err=True)
        run = _wait_for(runner, run_id, timeout_s)
    _show_outcome(run, as_json)


def _wait_for(runner: DefaultRunner, run_id: str, timeout_s: float | None) -> RunRecord:
    """Wait for ``run_id`` to end and read it; a timeout is an error that says the run goes on."""
    try:
        runner.wait_for_run(run_id, timeout_s)
    except WorkflowTimeoutError:
        raise click.ClickException(
            f"run {run_id} has not ended after {timeout_s:g}s; it goes on (`cloacina runs show {run_id}`)"
        ) from None
    run = runner.runs.get_run(run_id)
    assert run is not None
    return run


def _show_outcome(run: RunRecord, as_json: bool) -> None:
    """Print an ended run with its final context; exit 1 unless it Completed."""
    if as_json:
        emit_json(run_to_dict(run, contexts=True))
    else:
        console().print(Group(_run_table(run), "", f"final context: {escape(json.dumps(run.final_context))}"))
    if run.status != RunStatus.COMPLETED:
        raise SystemExit(1)


def _run_table(run: RunRecord) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("run", run.run_id)
    table.add_row("workflow", f"{run.workflow_name} (version {run.workflow_version[:12]})")
    table.add_row("status", styled_status(run.status.value))
    if run.waiting_reason:
        table.add_row("waiting", escape(run.waiting_reason))
    table.add_row("trigger", run.fired_by or "-")
    if run.cron_schedule_id:
        table.add_row("cron schedule", run.cron_schedule_id)
    if run.retry_of:
        table.add_row("retry of", run.retry_of)
    table.add_row("created", fmt_time(run.created_at, full=True))
    table.add_row("started", fmt_time(run.started_at, full=True))
    table.add_row("completed", fmt_time(run.completed_at, full=True))
    table.add_row("took", fmt_duration_ms(duration_ms(run.started_at or run.created_at, run.completed_at)))
    if run.error_message:
        table.add_row("error", f"[red]{escape(run.error_message)}[/red]")
    return table


def _tasks_table(tasks: dict[str, TaskRecord], attempts: dict[str, list[AttemptRecord]]) -> Table:
    table = new_table("Tasks")
    table.add_column("task", no_wrap=True)
    table.add_column("status", min_width=9)
    table.add_column("attempts", justify="right")
    table.add_column("started")
    table.add_column("took", justify="right")
    table.add_column("worker", overflow="fold")
    table.add_column("error / skip reason", overflow="fold")
    for task in tasks.values():
        # Every failed attempt's error (retries included), else the task's own error.
        notes = [f"#{a.attempt}: {shorten(a.error_message, 70)}" for a in attempts[task.task_id] if a.error_message]
        if task.error_message and not notes:
            notes.append(shorten(task.error_message, 80))
        if task.skip_reason:
            notes.append(f"skipped: {task.skip_reason}")
        if task.next_attempt_at is not None and task.status.value == "Ready":
            notes.append(f"retry at {fmt_time(task.next_attempt_at)}")
        table.add_row(
            task.task_id,
            styled_status(task.status.value),
            f"{task.attempt}/{task.max_attempts}",
            fmt_time(task.started_at),
            fmt_duration_ms(duration_ms(task.started_at, task.completed_at)),
            _workers(attempts[task.task_id]),
            "\n".join(notes) or "-",
        )
    return table


def _workers(attempts: list[AttemptRecord]) -> str:
    """Which process ran each attempt ("<host>:<pid>"); with several attempts, one line each."""
    ran = [a for a in attempts if a.worker]
    if len(attempts) == 1 and ran:
        return escape(str(ran[0].worker))
    return "\n".join(f"#{a.attempt}: {escape(str(a.worker))}" for a in ran) or "-"


# -- run control: cancel and retry ----------------------------------------------------------------------------
@runs_group.command("cancel")
@click.argument("run_id")
@db_option
@json_option
def runs_cancel(run_id: str, db_url: str, as_json: bool) -> None:
    """Cancel a run: it ends Cancelled, none of its tasks starts afterwards, a task still running finishes but its
    result is discarded, and its trigger's dedup key is free again.

    Exit status 0 when this command cancelled the run; 1 when the run had already ended (nothing is changed) or
    the id is unknown.
    """
    with management_runner(db_url) as runner:
        try:
            cancelled = runner.cancel_run(run_id)
        except KeyError:
            raise click.ClickException(f"unknown run {run_id!r}; `cloacina runs list` shows run ids") from None
        run = runner.runs.get_run(run_id)
    status = run.status.value if run is not None else "?"
    if as_json:
        emit_json({"run_id": run_id, "cancelled": cancelled, "status": status})
        if not cancelled:
            raise SystemExit(1)
    elif not cancelled:
        raise click.ClickException(f"run {run_id} had already ended ({status}); nothing to cancel")
    else:
        click.echo(f"run {run_id} cancelled")


@runs_group.command("retry")
@click.argument("run_id")
@db_option
@json_option
@click.option("--app", "app", metavar="APP", help="Import this app first (module, .py file or package directory).")
@click.option("--wait", is_flag=True, help="Wait until the new run ends and show it; exit 1 unless it Completed.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="With --wait: stop waiting after this long (exit 1; the run goes on).")  # fmt: skip
def runs_retry(run_id: str, db_url: str, as_json: bool, app: str | None, wait: bool, timeout_s: float | None) -> None:
    """Re-execute a Failed or Cancelled run from its failure and print the new run's id (with --wait: its outcome).

    The new run has the original's input and is linked to it (retry_of); the tasks that completed keep their
    outputs and do not run again, the others run afresh; the original run is not changed. With CLOACINA_BROKER_URL
    set, the workers run it. Without a broker this command runs it itself, so it always waits, and it needs the
    workflow's code: --app APP, unless the run came from a deployed package.
    """
    if timeout_s is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    if app is not None:
        with cli_errors():
            load_app(app)
    with management_runner(db_url) as runner:
        try:
            new_id = runner.retry_run(run_id)
        except KeyError:
            raise click.ClickException(f"unknown run {run_id!r}; `cloacina runs list` shows run ids") from None
        except ValueError as exc:
            hint = "" if app or runner.broker_url or "unknown workflow" not in str(exc).lower() else _CODE_HINT
            raise click.ClickException(f"{exc}{hint}") from None
        if not wait and runner.broker_url:
            if as_json:
                emit_json({"run_id": new_id, "retry_of": run_id})
            else:
                click.echo(new_id)
            return
        if not as_json:
            click.echo(f"run {new_id} retries {run_id}; waiting for it to end", err=True)
        run = _wait_for(runner, new_id, timeout_s)
    _show_outcome(run, as_json)


_CODE_HINT = " (without a broker the run executes here: pass --app with the workflow's code)"
