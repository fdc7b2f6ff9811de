"""``@trigger(cron=..., on=...)`` definitions become cron schedules of their workflow.

A cron trigger is never polled (:func:`cloacina.definitions.registry.triggers` leaves it out); instead the embedded
runner and each distributed poller call :func:`register_cron_triggers` when they start. Registration is idempotent
per (workflow, expression, time zone), so starting again, or several pollers starting at once, keeps one schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cloacina.definitions import registry
from cloacina.definitions.trigger import TriggerDefinition
from cloacina.scheduling import cron_math
from cloacina.store.cron import CronScheduleRecord, CronStore
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.cron")


def register_cron_triggers(
    store: CronStore, catchup_policy: str = "skip", definitions: Iterable[TriggerDefinition] | None = None
) -> list[CronScheduleRecord]:
    """Make sure every cron trigger (default: all registered ones) has its cron schedule; returns the schedules.

    A trigger whose expression or zone the scheduler cannot use is logged and left out (the others still count).
    """
    records: list[CronScheduleRecord] = []
    for definition in registry.cron_triggers() if definitions is None else definitions:
        if definition.cron is None or definition.workflow is None:
            continue
        try:
            spec = cron_math.validate_cron(definition.cron, definition.timezone)
        except ValueError as exc:
            log.error("cron trigger %r not scheduled: %s", definition.name, exc)
            continue
        next_run_at = cron_math.next_due(spec.expression, spec.timezone, utcnow())
        record, created = store.get_or_create_schedule(
            definition.workflow, spec.expression, spec.timezone, catchup_policy, next_run_at
        )
        if created:
            log.info(
                "cron trigger %r registered as schedule %s: %s at %r (%s)",
                definition.name,
                record.id,
                definition.workflow,
                spec.expression,
                spec.timezone,
            )
        records.append(record)
    return records
