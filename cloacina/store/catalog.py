"""The workflow catalog: what every process that registers workflows records of them, for processes without the code.

A runner, worker, poller or daemon records each workflow it registers (``CatalogStore.record``): name, version,
description, tags, ``max_active_runs``, the task graph (ids, dependencies, retry policy, trigger rule, timeout,
queue) and its origin (``"app:<module>"``, ``"package:<fingerprint>"`` or ``"code"``). A client that never imported
the code (a
runner in broker mode, ``cloacina runs start``, the HTTP API) reads the entry and starts runs of it: the entry
gives the graph that planning and the Celery canvas need (:func:`codeless_workflow`), the workers that have the
code execute it.

Which version a name serves: the catalog keeps one row per ``(name, version)`` (the version is the workflow's
content hash), and a name serves its **most recently introduced** version (highest ``id``: ids grow with every new
pair). Recording a version that is already there only refreshes its description, tags, origin and
``updated_at``, so a process that still runs an older version and restarts never takes the name back from a newer
one; clients keep starting the newer version and the workers that run it. The newest :data:`KEEP_VERSIONS`
versions of a name are kept (runs of an older version still in flight resolve it); the entries of a package are
forgotten when the package is replaced or removed (:meth:`CatalogStore.forget`). A deliberate rollback to an
earlier version is served once the newer version's rows are forgotten (``forget_version``).

>>> from cloacina.store.database import Database
>>> db = Database(":memory:")
>>> db.upgrade()
>>> CatalogStore(db).list_workflows(), CatalogStore(db).get_workflow("nope")
([], None)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from cloacina.definitions.retry import RetryPolicy
from cloacina.definitions.rules import Rule
from cloacina.definitions.task import TaskDefinition
from cloacina.definitions.workflow import Workflow, build_workflow
from cloacina.store.database import Database, rowcount
from cloacina.store.models import CatalogWorkflow
from cloacina.timestamps import utcnow

KEEP_VERSIONS = 20  # versions of one workflow name the catalog keeps (the newest ones)
PACKAGE_ORIGIN = "package:"
APP_ORIGIN = "app:"
CODE_ORIGIN = "code"

__all__ = [
    "CODE_ORIGIN",
    "KEEP_VERSIONS",
    "CatalogEntry",
    "CatalogStore",
    "CatalogTask",
    "catalog_tasks",
    "codeless_workflow",
    "is_codeless",
]


@dataclass(frozen=True)
class CatalogTask:
    """One task of a cataloged workflow: everything the engine plans with, no code."""

    task_id: str
    dependencies: list[str]
    max_attempts: int
    retry: dict[str, Any]  # RetryPolicy.to_dict()
    trigger_rule: dict[str, Any] | None  # cloaca's rule dict, None for Always
    timeout_s: float | None
    description: str
    # The queue its messages go to (its own ``queue=``, else the workflow's default), so that a client without the
    # code routes them; None: the deployment's queue. Entries recorded before routing existed have none.
    queue: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """One version of a workflow, as recorded. ``tasks`` are in topological order."""

    name: str
    version: str
    description: str
    tags: dict[str, str]
    tasks: list[CatalogTask]
    origin: str  # "app:<module>" | "package:<fingerprint>" | "code"
    updated_at: datetime
    max_active_runs: int | None = None  # part of the version (``Workflow.version`` hashes it)

    @property
    def package_fingerprint(self) -> str | None:
        """The package whose code runs this workflow (origin ``package:<fingerprint>``), else ``None``."""
        return self.origin[len(PACKAGE_ORIGIN) :] if self.origin.startswith(PACKAGE_ORIGIN) else None


# -- converting between workflows and entries ---------------------------------------------------------------
def catalog_tasks(workflow: Workflow) -> list[CatalogTask]:
    """The task graph of ``workflow`` as catalog tasks, in topological order."""
    order = workflow.topological_order or tuple(workflow.tasks)
    return [
        CatalogTask(
            task_id=t.task_id,
            dependencies=list(t.dependencies),
            max_attempts=t.retry.attempt_limit,
            retry=t.retry.to_dict(),
            trigger_rule=t.trigger_rule.to_dict() if t.trigger_rule is not None else None,
            timeout_s=t.timeout_s,
            description=t.description,
            queue=workflow.queue_of(t.task_id),
        )
        for t in (workflow.tasks[task_id] for task_id in order)
    ]


def _code_not_here(context: Any) -> Any:
    """The function of every task of a code-less workflow: such a workflow is planned here, executed elsewhere."""
    raise RuntimeError("this task comes from the workflow catalog; its code runs on the workers, not here")


def codeless_workflow(entry: CatalogEntry) -> Workflow:
    """A ``Workflow`` with the entry's graph and version whose task functions are never called here: enough to plan
    a run's roots, compile its canvas and compute its final context (``DefinitionError`` for a malformed entry)."""
    tasks = {
        t.task_id: TaskDefinition(
            task_id=t.task_id,
            function=_code_not_here,
            dependencies=tuple(t.dependencies),
            retry=RetryPolicy.from_dict(t.retry),
            trigger_rule=Rule.from_dict(t.trigger_rule) if t.trigger_rule is not None else None,
            timeout_s=t.timeout_s,
            description=t.description,
            queue=t.queue,
        )
        for t in entry.tasks
    }
    built = build_workflow(entry.name, tasks, entry.description, entry.tags, max_active_runs=entry.max_active_runs)
    return dataclasses.replace(built, version=entry.version)  # the version of the code the workers run


def is_codeless(workflow: Workflow) -> bool:
    """``workflow`` was built from a catalog entry (:func:`codeless_workflow`): it has no code to run."""
    return bool(workflow.tasks) and all(t.function is _code_not_here for t in workflow.tasks.values())


def _entry(row: CatalogWorkflow) -> CatalogEntry:
    return CatalogEntry(
        name=row.name,
        version=row.version,
        description=row.description,
        tags=dict(json.loads(row.tags)),
        tasks=[CatalogTask(**t) for t in json.loads(row.tasks)],
        origin=row.origin,
        updated_at=row.updated_at,
        max_active_runs=row.max_active_runs,
    )


def _task_values(task: CatalogTask) -> dict[str, Any]:
    """A task as the catalog stores it. ``queue`` only when set: a process of a release before routing reads
    the entries of workflows that route nothing as it always did (it would refuse the unknown key)."""
    values = dataclasses.asdict(task)
    if values["queue"] is None:
        del values["queue"]
    return values


def _row_values(workflow: Workflow, origin: str, now: datetime) -> dict[str, Any]:
    return {
        "name": workflow.name,
        "version": workflow.version,
        "description": workflow.description or "",
        "tags": json.dumps(dict(workflow.tags), sort_keys=True),
        "tasks": json.dumps([_task_values(t) for t in catalog_tasks(workflow)]),
        "origin": origin,
        "max_active_runs": workflow.max_active_runs,
        "created_at": now,
        "updated_at": now,
    }


def _newest(query: Select[CatalogWorkflow]) -> Select[CatalogWorkflow]:
    return query.order_by(CatalogWorkflow.id.desc()).limit(1)


class CatalogStore:
    """Reads and writes the ``workflow_catalog`` table; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing ------------------------------------------------------------------------------------------
    def record(self, workflow: Workflow, origin: str) -> None:
        """Record ``workflow`` (idempotent: an upsert by name and version; see the module docstring)."""
        self.record_all([(workflow, origin)])

    def record_all(self, workflows: Iterable[tuple[Workflow, str]]) -> None:
        """Record several ``(workflow, origin)`` pairs in one transaction."""
        now = utcnow()
        rows = [_row_values(wf, origin, now) for wf, origin in workflows]
        if not rows:
            return
        insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        with self.db.connection() as c:
            for values in rows:  # one statement each: a multi-row upsert may not touch one key twice
                statement = insert(CatalogWorkflow).values(values)
                excluded = statement.excluded
                c.execute(
                    statement.on_conflict_do_update(
                        index_elements=[CatalogWorkflow.name, CatalogWorkflow.version],
                        set_={
                            "description": excluded.description,
                            "tags": excluded.tags,
                            "origin": excluded.origin,
                            "max_active_runs": excluded.max_active_runs,
                            "updated_at": excluded.updated_at,
                        },
                    )
                )
            for name in sorted({values["name"] for values in rows}):
                _prune(c, name)

    def forget(self, origin: str) -> int:
        """Remove every entry recorded with ``origin`` (a package replaced or removed); how many went."""
        with self.db.connection() as c:
            return rowcount(c.execute(delete(CatalogWorkflow).where(CatalogWorkflow.origin == origin)))

    def forget_version(self, name: str, version: str) -> bool:
        """Remove one version of ``name`` (the previous version is served again); whether it was there."""
        where = (CatalogWorkflow.name == name) & (CatalogWorkflow.version == version)
        with self.db.connection() as c:
            return rowcount(c.execute(delete(CatalogWorkflow).where(where))) > 0

    # -- reading ------------------------------------------------------------------------------------------
    def list_workflows(self) -> list[CatalogEntry]:
        """The version each name serves (its newest), by name."""
        newest = select(func.max(CatalogWorkflow.id)).group_by(CatalogWorkflow.name)
        query = select(CatalogWorkflow).where(CatalogWorkflow.id.in_(newest)).order_by(CatalogWorkflow.name)
        with self.db.session() as s:
            return [_entry(row) for row in s.scalars(query)]

    def get_workflow(self, name: str) -> CatalogEntry | None:
        """The version ``name`` serves, or ``None`` if nothing recorded that name."""
        with self.db.session() as s:
            row = s.scalars(_newest(select(CatalogWorkflow).where(CatalogWorkflow.name == name))).first()
            return _entry(row) if row is not None else None

    def get_version(self, name: str, version: str) -> CatalogEntry | None:
        """Version ``version`` of ``name`` (what a run of that version was planned with), or ``None``."""
        where = (CatalogWorkflow.name == name) & (CatalogWorkflow.version == version)
        with self.db.session() as s:
            row = s.scalars(select(CatalogWorkflow).where(where)).first()
            return _entry(row) if row is not None else None

    def versions(self, name: str) -> list[CatalogEntry]:
        """Every kept version of ``name``, the served one first."""
        query = select(CatalogWorkflow).where(CatalogWorkflow.name == name).order_by(CatalogWorkflow.id.desc())
        with self.db.session() as s:
            return [_entry(row) for row in s.scalars(query)]


def _prune(c: Connection, name: str) -> None:
    """Drop the versions of ``name`` older than its newest :data:`KEEP_VERSIONS`."""
    oldest_kept = (
        select(CatalogWorkflow.id)
        .where(CatalogWorkflow.name == name)
        .order_by(CatalogWorkflow.id.desc())
        .offset(KEEP_VERSIONS - 1)
        .limit(1)
        .scalar_subquery()
    )
    c.execute(delete(CatalogWorkflow).where(CatalogWorkflow.name == name, CatalogWorkflow.id < oldest_kept))
