"""Trigger management methods of ``DefaultRunner``, as in cloaca: ids are UUID strings, times RFC 3339 text.

Schedule dicts carry cloaca's keys (id, trigger_name, workflow_name, poll_interval_ms, allow_concurrent,
enabled, last_poll_at, created_at, updated_at) plus cloacina's poll statistics; execution dicts carry cloaca's
(id, schedule_id, context_hash, workflow_execution_id, started_at, completed_at, created_at) plus the run's
status. An unknown trigger name is never an error: ``None``, ``[]``, or nothing done.

>>> import cloacina as cloaca
>>> with cloaca.DefaultRunner(":memory:") as runner:
...     runner.get_trigger_schedule("nope") is None
True
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.runner.errors import operation
from cloacina.runner.paging import paging

if TYPE_CHECKING:
    from cloacina.deployment.wiring import Deployment
    from cloacina.scheduling.trigger_poller import TriggerScheduler

log = logging.getLogger("cloacina.trigger")


def _check_name(trigger_name: object) -> None:
    if not isinstance(trigger_name, str):
        raise TypeError(f"trigger_name must be a str, got {type(trigger_name).__name__}")


class TriggerAPI:
    """Mixed into DefaultRunner; uses its public ``deployment`` and ``trigger_scheduler`` (``None`` when trigger
    scheduling is off or runs in the pollers)."""

    deployment: Deployment
    trigger_scheduler: TriggerScheduler | None

    @operation("Failed to list trigger schedules")
    def list_trigger_schedules(
        self, enabled_only: bool | None = None, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """Trigger schedules, newest first and paged (``None``: 100, 0). With ``enabled_only=True`` every
        enabled trigger, oldest first, and ``limit``/``offset`` are ignored (cloaca's semantics)."""
        limit, offset = paging(limit, offset)
        if enabled_only is not None and not isinstance(enabled_only, bool):
            raise TypeError(f"enabled_only must be True, False or None, got {enabled_only!r}")
        self._flush_trigger_stats()
        return self.deployment.triggers.list_schedules(enabled_only=bool(enabled_only), limit=limit, offset=offset)

    @operation("Failed to get trigger schedule")
    def get_trigger_schedule(self, trigger_name: str) -> dict[str, Any] | None:
        """The schedule of trigger ``trigger_name``, or ``None`` if there is none."""
        _check_name(trigger_name)
        self._flush_trigger_stats()
        return self.deployment.triggers.get_schedule(trigger_name)

    def _flush_trigger_stats(self) -> None:
        if self.trigger_scheduler is not None:
            self.trigger_scheduler.flush_stats()

    @operation("Failed to update trigger")
    def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> None:
        """Enable or disable polling of ``trigger_name``; survives restarts. An unknown name does nothing."""
        _check_name(trigger_name)
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        if not self.deployment.triggers.set_enabled(trigger_name, enabled):
            log.debug("set_trigger_enabled: no trigger schedule named %r", trigger_name)
            return
        if self.trigger_scheduler is not None:
            self.trigger_scheduler.set_enabled(trigger_name, enabled)

    @operation("Failed to get trigger execution history")
    def get_trigger_execution_history(
        self, trigger_name: str, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs fired by ``trigger_name``, newest first (``None``: 100, 0); ``[]`` for an unknown name."""
        _check_name(trigger_name)
        limit, offset = paging(limit, offset)
        return self.deployment.triggers.execution_history(trigger_name, limit=limit, offset=offset)

    def _register_known_triggers(self) -> list[TriggerDefinition]:
        """Write a schedule row for every trigger declared so far (without polling them)."""
        found = [d for d in registry.triggers() if d.workflow is not None]
        for unbound in (d for d in registry.triggers() if d.workflow is None):
            log.error("trigger %r names no workflow; add workflow=... or bind it in a package manifest", unbound.name)
        for definition in found:
            self.deployment.triggers.upsert_schedule(
                definition.name, definition.workflow or "", definition.poll_interval_ms, definition.allow_concurrent
            )
        return found
