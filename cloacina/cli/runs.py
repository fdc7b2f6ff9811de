"""``cloacina runs``: list workflow runs and show one run with its tasks and their attempts.

::

    $ cloacina runs list --status Failed --limit 10
    $ cloacina runs show 6f1c0c7e-... --json
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from cloacina.cli.common import (
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
from cloacina.engine.states import RunStatus
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
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "duration_ms": duration_ms(run.started_at or run.created_at, run.completed_at),
        "deadline_at": iso(run.deadline_at),
        "error_message": run.error_message,
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
    """Workflow runs: list and show."""


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
            r.trigger_name or "-",
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


def _run_table(run: RunRecord) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("run", run.run_id)
    table.add_row("workflow", f"{run.workflow_name} (version {run.workflow_version[:12]})")
    table.add_row("status", styled_status(run.status.value))
    table.add_row("trigger", run.trigger_name or "-")
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
            "\n".join(notes) or "-",
        )
    return table
