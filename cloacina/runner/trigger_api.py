"""Trigger management methods of ``DefaultRunner`` (names and dict keys as in the cloaca docs).

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
from cloacina.runner.paging import check_paging

if TYPE_CHECKING:
    from cloacina.deployment.wiring import Deployment
    from cloacina.scheduling.trigger_poller import TriggerScheduler

log = logging.getLogger("cloacina.trigger")


class TriggerAPI:
    """Mixed into DefaultRunner; uses its public ``deployment`` and ``trigger_scheduler`` (``None`` when trigger
    scheduling is off or runs in the pollers)."""

    deployment: Deployment
    trigger_scheduler: TriggerScheduler | None

    def list_trigger_schedules(
        self, enabled_only: bool = False, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Every trigger schedule, by name: trigger_name, workflow_name, poll_interval_ms, allow_concurrent,
        enabled, last_poll_at, next_poll_at, last_fire_at, poll/fire/skip/dedup_skip/error counts, last_error."""
        check_paging(limit, offset)
        self._flush_trigger_stats()
        return self.deployment.triggers.list_schedules(enabled_only=enabled_only, limit=limit, offset=offset)

    def get_trigger_schedule(self, name: str) -> dict[str, Any] | None:
        """The schedule of trigger ``name``, or ``None`` if there is none."""
        self._flush_trigger_stats()
        return self.deployment.triggers.get_schedule(name)

    def _flush_trigger_stats(self) -> None:
        if self.trigger_scheduler is not None:
            self.trigger_scheduler.flush_stats()

    def set_trigger_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable polling of ``name``; survives restarts. ``ValueError`` if the trigger is unknown."""
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        if not self.deployment.triggers.set_enabled(name, enabled):
            known = ", ".join(s["trigger_name"] for s in self.deployment.triggers.list_schedules(limit=50)) or "none"
            raise ValueError(f"unknown trigger {name!r}; known triggers: {known}")
        if self.trigger_scheduler is not None:
            self.trigger_scheduler.set_enabled(name, enabled)

    def get_trigger_execution_history(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """Runs fired by ``name``, newest first: run_id, status, context_hash, started_at, completed_at."""
        check_paging(limit, 0)
        return self.deployment.triggers.execution_history(name, limit=limit)

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
