"""The run state machine: given a workflow and what its tasks have done so far, decide what happens next.

Pure functions, no I/O: the embedded thread dispatcher and the Celery workers call the same code, so a run
behaves identically in both modes.

Semantics (DESIGN §2):
- A task is eligible when all its dependencies are terminal (Completed, Failed or Skipped).
- Its input is the run's input context for a root task, else the merge of its dependencies' outputs in
  declaration order. A Skipped task passes its input through as its output, so data flows past it.
- A task with no ``trigger_rules`` has cloaca's default rule ``Always``: it runs once its dependencies are
  terminal, **even after one Failed** (its input then merges the outputs of the dependencies that have one). A
  task with a rule runs when the rule is true and is Skipped (``rule_false``) otherwise.
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
        rule = definition.trigger_rule
        if rule is None or evaluate_rule(rule, {tid: v.status for tid, v in working.items()}, inputs):
            decisions.append(Decision(task_id, "run", inputs))
        else:
            reason = str(SkipReason.RULE_FALSE)
            decisions.append(Decision(task_id, "skip", inputs, reason))
            working[task_id] = TaskView(TaskStatus.SKIPPED, inputs, reason)
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
