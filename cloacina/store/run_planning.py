"""The planning step of a run: what can happen next, applied in the transaction that changed one of its tasks.

:class:`cloacina.store.runs.RunStore` calls these with the run's row locked (``LOCK_RUN``), so two tasks of a
fan-in finishing together plan one after the other and the second always sees the first. The planner itself
(:mod:`cloacina.engine.planner`) is pure; here its decisions become guarded updates, of which only those that
still find the task ``NotStarted`` apply.

>>> from cloacina.engine.states import TaskStatus
>>> failed_tasks_message({"a": (TaskStatus.FAILED, "ValueError: bad"), "b": (TaskStatus.COMPLETED, None)})
'task failed: a: ValueError: bad'
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from cloacina.context import canonical_json
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import Decision, TaskView, final_context, plan, run_outcome
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store import run_statements as sql
from cloacina.store.run_records import RunEnd, Transition, loads


def failed_tasks_message(views: Mapping[str, Any]) -> str | None:
    """``task failed: a: ValueError: ...; b: ...`` for the run's error message, from (status, error) pairs."""
    failed = [f"{tid}: {err}" for tid, (status, err) in views.items() if status == TaskStatus.FAILED]
    return ("task failed: " + "; ".join(failed)) if failed else None


def plan_locked(c: Connection, run_id: str, run_input: str, workflow: Workflow, now: datetime) -> Transition:
    """Plan and apply what can happen next; end the run if everything is terminal.
    The caller holds the run's lock (see ``LOCK_RUN``)."""
    rows = c.execute(sql.TASKS_FOR_PLAN, {"b_run": run_id}).all()
    views = {r.task_id: TaskView(TaskStatus(r.status), loads(r.output_context), r.skip_reason) for r in rows}
    ready: list[str] = []
    for d in plan(workflow, loads(run_input) or {}, views):
        if d.task_id not in views:
            continue
        params = {"b_run": run_id, "b_task": d.task_id, "input": canonical_json(d.input_context), "now": now}
        if d.action == "run":
            applied = c.execute(sql.DECIDE_READY, params).rowcount == 1
        else:
            applied = c.execute(sql.DECIDE_SKIP, {**params, "reason": d.skip_reason}).rowcount == 1
        if not applied:
            continue
        if d.action == "run":
            ready.append(d.task_id)
            views[d.task_id] = TaskView(TaskStatus.READY)
        else:
            views[d.task_id] = TaskView(TaskStatus.SKIPPED, d.input_context, d.skip_reason)
    outcome = run_outcome(views)
    if outcome is None:
        return Transition(True, tuple(ready))
    errors = {r.task_id: (TaskStatus(r.status), r.error_message) for r in rows}
    message = failed_tasks_message(errors) if outcome == RunStatus.FAILED else None
    ended = end_run_locked(c, run_id, outcome, final_context(workflow, views), message, now)
    return Transition(True, tuple(ready), ended)


def apply_new_row_decision(
    row: dict[str, Any], decision: Decision, ready: list[str], views: dict[str, TaskView], now: datetime
) -> None:
    """Write the planner's ``decision`` for a task into its new row: Ready (and listed in ``ready``), or Skipped
    with its input passed through; ``views`` follows, for the planner's next look."""
    task_id = row["task_id"]
    row["input_context"] = canonical_json(decision.input_context)
    if decision.action == "run":
        row["status"] = TaskStatus.READY.value
        ready.append(task_id)
        views[task_id] = TaskView(TaskStatus.READY)
    else:
        row.update(
            status=TaskStatus.SKIPPED.value,
            skip_reason=decision.skip_reason,
            output_context=row["input_context"],
            completed_at=now,
        )
        views[task_id] = TaskView(TaskStatus.SKIPPED, decision.input_context, decision.skip_reason)


def initial_task_rows(
    workflow: Workflow, run_input: Mapping[str, Any], now: datetime, planned: bool
) -> tuple[list[dict[str, Any]], tuple[str, ...], dict[str, TaskView]]:
    """The task rows of a new run (without ``run_id``), the tasks they make Ready and the planner's view.

    ``planned``: the roots are decided now (Ready, or Skipped by their rule, skips cascading), so the run's first
    delivery finds its task Ready; otherwise every task starts NotStarted and a later planning step decides.
    """
    views = {tid: TaskView(TaskStatus.NOT_STARTED) for tid in workflow.tasks}
    decisions = {d.task_id: d for d in plan(workflow, run_input, views)} if planned else {}
    rows: list[dict[str, Any]] = []
    ready: list[str] = []
    for task in workflow.tasks.values():
        row: dict[str, Any] = {
            "task_id": task.task_id,
            "status": TaskStatus.NOT_STARTED.value,
            "attempt": 0,
            "max_attempts": task.retry.attempt_limit,
            "pool": task.pool,  # task pools: the slots it takes while Running are counted from these
            "pool_slots": task.pool_slots if task.pool else None,
            "updated_at": now,
            "input_context": None,
            "skip_reason": None,
            "output_context": None,
            "completed_at": None,
        }
        decision = decisions.get(task.task_id)
        if decision is not None:
            apply_new_row_decision(row, decision, ready, views, now)
        rows.append(row)
    return rows, tuple(ready), views


def end_run_locked(
    c: Connection,
    run_id: str,
    status: RunStatus,
    final: Mapping[str, Any] | None,
    message: str | None,
    now: datetime,
    *,
    fail_running: bool = False,
) -> RunEnd:
    """End the run (its row locked by the caller): free its dedup key, skip what never started and, with
    ``fail_running``, fail what is still running."""
    final_json = canonical_json(dict(final)) if final is not None else None
    c.execute(
        sql.END_RUN,
        {"b_run": run_id, "new_status": status.value, "error": message, "final": final_json, "now": now},
    )
    execution = c.execute(sql.FREE_DEDUP_KEY, {"b_run": run_id, "now": now}).first()
    c.execute(sql.SKIP_UNSTARTED, {"b_run": run_id, "now": now})
    if fail_running:  # only a run ended from outside (timeout) has tasks still running; their late results lose
        c.execute(
            sql.FAIL_RUNNING,
            {"b_run": run_id, "now": now, "error": f"run ended ({message}) while the task was running"},
        )
    if execution is None:
        return RunEnd(run_id, status)
    return RunEnd(run_id, status, execution.trigger_name, execution.context_hash, execution.lock_token)
