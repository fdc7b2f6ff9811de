"""``TaskNamespace`` and ``WorkflowContext``: cloaca's four-part task addresses ``tenant::package::workflow::task``.

Plain value objects: read-only parts, compared and hashed by those parts. A namespace with an empty ``task_id`` is
the namespace of a workflow (``parent()``).

>>> ns = TaskNamespace("public", "embedded", "etl", "extract")
>>> str(ns), ns.parent()
('public::embedded::etl::extract', TaskNamespace('public', 'embedded', 'etl', ''))
>>> TaskNamespace.from_string("public::embedded::etl::load").is_sibling_of(ns)
True
>>> WorkflowContext("public", "embedded", "etl").task_namespace("extract") == ns
True
"""

from __future__ import annotations

SEPARATOR = "::"


def _part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}")
    return value


class TaskNamespace:
    """The address of a task: ``TaskNamespace(tenant_id, package_name, workflow_id, task_id)``."""

    __slots__ = ("_parts",)
    _parts: tuple[str, str, str, str]

    def __init__(self, tenant_id: str, package_name: str, workflow_id: str, task_id: str) -> None:
        self._parts = (
            _part(tenant_id, "tenant_id"),
            _part(package_name, "package_name"),
            _part(workflow_id, "workflow_id"),
            _part(task_id, "task_id"),
        )

    @staticmethod
    def from_string(namespace_str: str) -> TaskNamespace:
        """Parse ``"tenant::package::workflow::task"``: exactly four ``::``-separated parts, else ``ValueError``."""
        parts = _part(namespace_str, "namespace_str").split(SEPARATOR)
        if len(parts) != 4:
            raise ValueError(
                f"Invalid namespace format {namespace_str!r}: expected 'tenant::package::workflow::task' "
                f"(4 parts separated by '::'), got {len(parts)} part(s)"
            )
        return TaskNamespace(parts[0], parts[1], parts[2], parts[3])

    @property
    def tenant_id(self) -> str:
        return self._parts[0]

    @property
    def package_name(self) -> str:
        return self._parts[1]

    @property
    def workflow_id(self) -> str:
        return self._parts[2]

    @property
    def task_id(self) -> str:
        return self._parts[3]

    def parent(self) -> TaskNamespace:
        """The workflow's namespace: a copy with ``task_id`` ``""``."""
        return TaskNamespace(self._parts[0], self._parts[1], self._parts[2], "")

    def is_child_of(self, parent: TaskNamespace) -> bool:
        """Same tenant, package and workflow; this one names a task and ``parent`` does not."""
        _check_namespace(parent, "parent")
        return self._parts[:3] == parent._parts[:3] and self.task_id != "" and parent.task_id == ""

    def is_sibling_of(self, other: TaskNamespace) -> bool:
        """Same tenant, package and workflow; both name a task, and different ones."""
        _check_namespace(other, "other")
        return (
            self._parts[:3] == other._parts[:3]
            and self.task_id != ""
            and other.task_id != ""
            and self.task_id != other.task_id
        )

    def __str__(self) -> str:
        return SEPARATOR.join(self._parts)

    def __repr__(self) -> str:
        return "TaskNamespace({})".format(", ".join(f"'{p}'" for p in self._parts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskNamespace):
            return NotImplemented
        return self._parts == other._parts

    def __hash__(self) -> int:
        return hash(("TaskNamespace", self._parts))


class WorkflowContext:
    """The namespace of one workflow: ``WorkflowContext(tenant_id, package_name, workflow_id)``."""

    __slots__ = ("_parts",)
    _parts: tuple[str, str, str]

    def __init__(self, tenant_id: str, package_name: str, workflow_id: str) -> None:
        self._parts = (
            _part(tenant_id, "tenant_id"),
            _part(package_name, "package_name"),
            _part(workflow_id, "workflow_id"),
        )

    @property
    def tenant_id(self) -> str:
        return self._parts[0]

    @property
    def package_name(self) -> str:
        return self._parts[1]

    @property
    def workflow_id(self) -> str:
        return self._parts[2]

    def task_namespace(self, task_id: str) -> TaskNamespace:
        """``TaskNamespace(tenant, package, workflow, task_id)``."""
        return TaskNamespace(*self._parts, _part(task_id, "task_id"))

    def resolve_dependency(self, task_name: str) -> TaskNamespace:
        """The namespace of dependency ``task_name`` within this workflow (same as :meth:`task_namespace`)."""
        return TaskNamespace(*self._parts, _part(task_name, "task_name"))

    def workflow_namespace(self) -> TaskNamespace:
        """``TaskNamespace(tenant, package, workflow, "")``."""
        return TaskNamespace(*self._parts, "")

    def contains_namespace(self, namespace: TaskNamespace) -> bool:
        """Whether ``namespace`` has this workflow's tenant, package and workflow."""
        _check_namespace(namespace, "namespace")
        return namespace._parts[:3] == self._parts

    def __str__(self) -> str:
        return SEPARATOR.join(self._parts)

    def __repr__(self) -> str:
        return "WorkflowContext({})".format(", ".join(f"'{p}'" for p in self._parts))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkflowContext):
            return NotImplemented
        return self._parts == other._parts

    def __hash__(self) -> int:
        return hash(("WorkflowContext", self._parts))


def _check_namespace(value: object, what: str) -> None:
    if not isinstance(value, TaskNamespace):
        raise TypeError(f"{what} must be a TaskNamespace, got {type(value).__name__}")
