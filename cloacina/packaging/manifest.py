"""The ``manifest.json`` of a ``.cloacina`` package: pydantic models that are the schema, and its JSON Schema.

A manifest says what a package contains (its workflows' tasks and its triggers) so that a reconciler can check
the code against it and register triggers without trusting the code to describe itself. Unknown fields are
rejected (``extra="forbid"``); names follow :func:`cloacina.definitions.naming.check_name`; ``poll_interval``
follows :func:`cloacina.definitions.duration.parse_duration_ms`.

>>> m = Manifest.model_validate({
...     "format_version": 1,
...     "package": {"name": "data-ingest", "version": "1.0.0", "fingerprint": "0" * 64},
...     "language": "python",
...     "python": {"entry_module": "data_ingest"},
...     "tasks": [{"id": "validate", "workflow": "data_ingest", "function": "data_ingest:validate"}],
...     "triggers": [{"name": "inbox_watcher", "workflow": "data_ingest", "poll_interval": "5s"}],
... })
>>> m.triggers[0].poll_interval_ms, m.workflow_names
(5000, ['data_ingest'])
>>> manifest_json_schema()["title"]
'Manifest'
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from cloacina.definitions.duration import parse_duration_ms
from cloacina.definitions.naming import check_name

FORMAT_VERSION: Final = 1
MANIFEST_NAME = "manifest.json"

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_!\-]{0,99}$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_<>][A-Za-z0-9_.<>]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _name(value: str, what: str) -> str:
    # check_name raises DefinitionError, a ValueError, which pydantic turns into a validation error.
    return check_name(value, what)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _drop_unset(data: Any, keys: tuple[str, ...]) -> Any:
    """Serialized model without the optional ``keys`` that are ``None`` (so older manifests keep their bytes)."""
    if isinstance(data, dict):
        for key in keys:
            if data.get(key, 0) is None:
                del data[key]
    return data


class PackageInfo(_Strict):
    """Who the package is: ``name`` and ``version`` from ``pyproject.toml``, and the content fingerprint."""

    name: str = Field(description="Package name from [project] name, e.g. 'data-ingest'.")
    version: str = Field(description="Package version from [project] version, e.g. '1.0.0'.")
    description: str = Field(default="", max_length=2000)
    fingerprint: str = Field(description="SHA-256 (64 lowercase hex digits) of the package's source files.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _name(value, "package name")

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"invalid package version {value!r}: use letters, digits and '.+_!-' (max 100)")
        return value

    @field_validator("fingerprint")
    @classmethod
    def _check_fingerprint(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("fingerprint must be 64 lowercase hexadecimal digits (SHA-256)")
        return value


class PythonInfo(_Strict):
    """How to load the package's Python code."""

    requires_python: str | None = Field(default=None, description="[project] requires-python, e.g. '>=3.10'.")
    entry_module: str = Field(description="Dotted module imported to discover workflows and triggers.")

    @field_validator("entry_module")
    @classmethod
    def _check_entry_module(cls, value: str) -> str:
        if not _DOTTED.match(value) or len(value) > 200:
            raise ValueError(f"invalid entry_module {value!r}: use a dotted Python module name like 'pkg.module'")
        return value


class TaskEntry(_Strict):
    """One task of one workflow, as declared by ``@task`` inside ``WorkflowBuilder(workflow)``."""

    id: str
    workflow: str = Field(description="The workflow this task belongs to.")
    function: str = Field(description="'module:qualname' of the task function.")
    dependencies: list[str] = Field(default_factory=list)
    description: str = ""
    retries: int = Field(default=3, ge=0, description="Retries after the first attempt.")
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return _name(value, "task id")

    @field_validator("workflow")
    @classmethod
    def _check_workflow(cls, value: str) -> str:
        return _name(value, "workflow name")

    @field_validator("function")
    @classmethod
    def _check_function(cls, value: str) -> str:
        if not _FUNCTION.match(value):
            raise ValueError(f"invalid function {value!r}: expected 'module:qualname'")
        return value

    @field_validator("dependencies")
    @classmethod
    def _check_dependencies(cls, value: list[str]) -> list[str]:
        for dep in value:
            _name(dep, "task dependency")
        if len(set(value)) != len(value):
            raise ValueError(f"dependencies list a task twice: {value}")
        return value


class TriggerEntry(_Strict):
    """One ``@trigger`` poll function and the workflow it fires."""

    name: str
    trigger_type: Literal["python"] = "python"
    workflow: str = Field(description="The workflow a fire starts (binds a trigger declared without workflow=).")
    poll_interval: str = Field(default="5s", description="'100ms', '5s', '1m' or '1h'.")
    allow_concurrent: bool = False
    config: dict[str, Any] = Field(default_factory=dict, description="Free-form JSON for the trigger.")
    cron: str | None = Field(default=None, description="@trigger(cron=...): a cron schedule, not a poll trigger.")
    timezone: str | None = Field(default=None, description="IANA zone of cron (default UTC).")

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _drop_unset(handler(self), ("cron", "timezone"))

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _name(value, "trigger name")

    @field_validator("workflow")
    @classmethod
    def _check_workflow(cls, value: str) -> str:
        return _name(value, "workflow name")

    @field_validator("poll_interval")
    @classmethod
    def _check_poll_interval(cls, value: str) -> str:
        parse_duration_ms(value, what="poll_interval", allow_zero=True)
        return value

    @field_validator("config")
    @classmethod
    def _check_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config must be plain JSON: {exc}") from None
        return value

    @property
    def poll_interval_ms(self) -> int:
        return parse_duration_ms(self.poll_interval, what="poll_interval", allow_zero=True)


class OriginInfo(_Strict):
    """Set when the manifest was derived from a cloaca archive (:mod:`cloacina.packaging.cloaca_format`)."""

    format: Literal["cloaca", "cloaca-manifest"] = Field(
        description="'cloaca': package.toml with workflow/ and vendor/; 'cloaca-manifest': the older manifest.json."
    )
    workflow_name: str = Field(description="Workflow context the loader activates while importing the entry module.")
    import_paths: list[str] = Field(description="Directories (relative to the package root) on its import path.")
    declared_tasks: list[str] = Field(default_factory=list, description="Task ids the older manifest.json lists.")
    author: str | None = None

    @field_validator("workflow_name")
    @classmethod
    def _check_workflow(cls, value: str) -> str:
        return _name(value, "workflow name")


class Manifest(_Strict):
    """The whole ``manifest.json``: package identity, how to load it, its tasks and its triggers.

    It is the canonical form of every package: a cloaca archive is described by a manifest derived from its
    ``package.toml`` (or older ``manifest.json``), with ``origin`` saying how to lay out and import it.
    """

    format_version: Literal[1] = FORMAT_VERSION
    package: PackageInfo
    language: Literal["python"] = "python"
    python: PythonInfo
    tasks: list[TaskEntry] = Field(default_factory=list)
    triggers: list[TriggerEntry] = Field(default_factory=list)
    origin: OriginInfo | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _drop_unset(handler(self), ("origin",))

    @model_validator(mode="after")
    def _check_consistency(self) -> Manifest:
        seen_tasks: set[tuple[str, str]] = set()
        for entry in self.tasks:
            key = (entry.workflow, entry.id)
            if key in seen_tasks:
                raise ValueError(f"task {entry.id!r} appears twice in workflow {entry.workflow!r}")
            seen_tasks.add(key)
        for entry in self.tasks:
            for dep in entry.dependencies:
                if (entry.workflow, dep) not in seen_tasks:
                    raise ValueError(
                        f"task {entry.id!r} (workflow {entry.workflow!r}) depends on {dep!r}, "
                        "which is not a task of that workflow"
                    )
        names = [t.name for t in self.triggers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"trigger name(s) listed twice: {', '.join(duplicates)}")
        return self

    @property
    def workflow_names(self) -> list[str]:
        """Workflows that have tasks in this package, sorted."""
        return sorted({t.workflow for t in self.tasks})

    @property
    def source_format(self) -> str:
        """``"cloacina"`` (ours), ``"cloaca"`` (package.toml) or ``"cloaca-manifest"`` (older manifest.json)."""
        return self.origin.format if self.origin is not None else "cloacina"

    def to_json(self) -> str:
        """Deterministic JSON text (field order of the models, 2-space indent, trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def manifest_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12, as pydantic emits it) of ``manifest.json``."""
    schema = Manifest.model_json_schema()
    schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    return schema
