"""The ``Dispatcher`` seam: how the coordinator hands work to whatever executes tasks.

The coordinator (this package) owns the state machine; a dispatcher owns *where* attempts run. Two implement it
in :mod:`cloacina.dispatch`: a thread pool in the process (embedded) and Celery canvases (distributed). The
coordinator never imports either; the wiring (:mod:`cloacina.deployment.wiring`) picks one.

A dispatcher is attached to exactly one coordinator, which it drives through :class:`RunDriver`: plan a run,
run one task attempt, expire a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from cloacina.definitions.workflow import Workflow
from cloacina.store.runs import RunStore, StartedAttempt, Transition


@dataclass(frozen=True)
class NodeOutcome:
    """What happened to one delivery of a task.

    ``completed``/``failed``: this delivery ran the final attempt. ``retry``: run it again after ``delay_s``.
    ``done``: nothing to do (already finished, skipped, taken by another delivery). ``waiting``: a dependency
    or another delivery of this task is still running; try again later.

    ``ready``: the tasks this delivery's finish made Ready, of ``workflow``, handed back to the delivery's
    executor instead of the dispatcher (it runs one of them next and publishes the others). ``continued``: the
    successor the finish already started for this executor to run next (see ``ContinueWith``), not in ``ready``.
    """

    kind: Literal["completed", "failed", "retry", "done", "waiting"]
    delay_s: float = 0.0
    ready: tuple[str, ...] = ()
    workflow: Workflow | None = None
    continued: tuple[str, StartedAttempt] | None = None


class RunDriver(Protocol):
    """What a dispatcher may ask of the coordinator it is attached to (``RunCoordinator`` is one)."""

    @property
    def store(self) -> RunStore: ...

    def resolve_workflow(self, name: str, version: str, package_fingerprint: str | None, /) -> Workflow: ...

    def advance(self, run_id: str, workflow: Workflow | None = None) -> Transition: ...

    def run_task(self, run_id: str, task_id: str, *, dispatch_ready: bool = True) -> NodeOutcome: ...

    def expire_run(self, run_id: str, deadline_s: float) -> None: ...


class Dispatcher(Protocol):
    """Where task attempts execute. Every method returns quickly; none raises for a broker or pool hiccup."""

    def attach(self, coordinator: RunDriver) -> None:
        """Bind to the coordinator that created this run's rows (called once, by the coordinator)."""

    def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
        """A run was just created in the store, its root tasks ``ready`` already: start executing it."""

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...], workflow: Workflow | None = None) -> None:
        """Planning made these tasks Ready (after a completion, or when a run is planned); ``workflow`` is the
        run's, when the caller has it."""

    def resume_run(self, run_id: str) -> None:
        """Recovery: execute whatever is left of ``run_id``, never redoing finished tasks."""

    def cancel_run(self, run_id: str) -> None:
        """The run was cancelled in the store: drop or revoke what is queued for it where that is cheap and safe
        (never required for correctness: the store refuses every start of a cancelled run)."""

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        """Fail the run if it is still going ``deadline_s`` seconds from now (or leave that to the sweeper)."""

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Stop taking work; wait up to ``wait_s`` for attempts in flight."""


class PlanOnly:
    """The dispatcher of a process that executes nothing on its own (a worker runs canvas nodes it is given,
    tests drive attempts by hand): a new run, its roots Ready, is left in the store."""

    def __init__(self) -> None:
        self._coordinator: RunDriver | None = None

    def attach(self, coordinator: RunDriver) -> None:
        self._coordinator = coordinator

    def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
        return None

    def tasks_ready(self, run_id: str, task_ids: tuple[str, ...], workflow: Workflow | None = None) -> None:
        return None

    def resume_run(self, run_id: str) -> None:
        if self._coordinator is not None:
            self._coordinator.advance(run_id)

    def cancel_run(self, run_id: str) -> None:
        return None

    def watch_deadline(self, run_id: str, deadline_s: float) -> None:
        return None

    def shutdown(self, wait_s: float = 5.0) -> None:
        return None
