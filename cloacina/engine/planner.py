"""The run state machine: given a workflow and what its tasks have done so far, decide what happens next.

Pure functions, no I/O: the embedded thread dispatcher and the Celery workers call the same code, so a run
behaves identically in both modes.

Semantics (DESIGN §2):
- A task is eligible when all its dependencies are terminal (Completed, Failed or Skipped).
- Its input is the run's input context for a root task, else the merge of its dependencies' outputs in
  declaration order. A Skipped task passes its input through as its output, so data flows past it.
- With no explicit rule a task is Skipped (``upstream_failed``) when a dependency Failed or was itself skipped
  for that reason; a task with an explicit rule runs when the rule is true and is Skipped (``rule_false``)
  otherwise.
- The run is terminal when every task is; it is Failed when any task Failed, else Completed.
- ``final_context`` is the merge of the leaf tasks' outputs in topological order (Failed leaves contribute
  nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloacina.definitions.workflow import Workflow
from cloacina.engine.merge import merge_contexts
from cloacina.engine.rule_eval import evaluate_rule
from cloacina.engine.states import RunStatus, SkipReason, TaskStatus


@dataclass(frozen=True)
class TaskView:
    """What the planner needs to know about one task of a run."""

    status: TaskStatus = TaskStatus.NOT_STARTED
    output: Mapping[str, Any] | None = None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Decision:
    """Start ``task_id`` with ``input_context`` (``action == "run"``), or mark it Skipped."""

    task_id: str
    action: str  # "run" | "skip"
    input_context: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None


def task_input(
    workflow: Workflow, task_id: str, run_input: Mapping[str, Any], views: Mapping[str, TaskView]
) -> dict[str, Any]:
    """The input context of ``task_id``: the run input for a root, else the merge of its dependencies' outputs."""
    deps = workflow.tasks[task_id].dependencies
    if not deps:
        return merge_contexts([run_input])
    return merge_contexts(views[d].output or {} for d in deps if views[d].output is not None)


def _upstream_failed(workflow: Workflow, task_id: str, views: Mapping[str, TaskView]) -> bool:
    for dep in workflow.tasks[task_id].dependencies:
        view = views[dep]
        if view.status == TaskStatus.FAILED:
            return True
        if view.status == TaskStatus.SKIPPED and view.skip_reason == SkipReason.UPSTREAM_FAILED:
            return True
    return False


def plan(workflow: Workflow, run_input: Mapping[str, Any], views: Mapping[str, TaskView]) -> list[Decision]:
    """Decisions for every NotStarted task that has become eligible, skips cascading in one call.

    ``views`` must hold every task of the workflow. The returned skips are already applied to the working
    view, so a task downstream of a skipped one is decided in the same call.
    """
    working = dict(views)
    decisions: list[Decision] = []
    for task_id in workflow.topological_order:
        view = working[task_id]
        if view.status != TaskStatus.NOT_STARTED:
            continue
        definition = workflow.tasks[task_id]
        if not all(working[d].status.is_terminal for d in definition.dependencies):
            continue
        inputs = task_input(workflow, task_id, run_input, working)
        if definition.trigger_rule is None:
            skip_reason = SkipReason.UPSTREAM_FAILED if _upstream_failed(workflow, task_id, working) else None
        else:
            statuses = {tid: v.status for tid, v in working.items()}
            holds = evaluate_rule(definition.trigger_rule, statuses, inputs)
            skip_reason = None if holds else SkipReason.RULE_FALSE
        if skip_reason is None:
            decisions.append(Decision(task_id, "run", inputs))
        else:
            decisions.append(Decision(task_id, "skip", inputs, str(skip_reason)))
            working[task_id] = TaskView(TaskStatus.SKIPPED, inputs, str(skip_reason))
    return decisions


def run_outcome(views: Mapping[str, TaskView]) -> RunStatus | None:
    """The run's final status once every task is terminal, else ``None``."""
    if not all(v.status.is_terminal for v in views.values()):
        return None
    if any(v.status == TaskStatus.FAILED for v in views.values()):
        return RunStatus.FAILED
    return RunStatus.COMPLETED


def final_context(workflow: Workflow, views: Mapping[str, TaskView]) -> dict[str, Any]:
    """Merge of the leaf tasks' outputs in topological order."""
    return merge_contexts(views[t].output or {} for t in workflow.leaves if views[t].output is not None)
