"""Ticker app for the poller tests: ``DIST_TICKERS`` triggers that only record their polls, and a cron workflow.

Trigger ``tick_<n>`` polls every ``DIST_TICK_MS`` (default 300), records the poll (:mod:`tests.dist_apps.evidence`)
and skips. ``cron_flow`` has one task that records its execution under the run's scheduled time.
"""

import os

import cloacina as cloaca
from tests.dist_apps import evidence

TICKERS = int(os.environ.get("DIST_TICKERS", "0"))
TICK_MS = int(os.environ.get("DIST_TICK_MS", "300"))

with cloaca.WorkflowBuilder("cron_flow"):

    @cloaca.task(id="beat", retry_attempts=0)
    def beat(ctx):
        execution = evidence.execution_started(None, str(ctx.get("scheduled_time")), "beat")
        evidence.execution_ended(execution)
        return ctx


def _ticker(n):
    name = f"tick_{n}"

    def poll():
        evidence.poll_recorded(name)
        return cloaca.TriggerResult.skip()

    cloaca.trigger(workflow="cron_flow", name=name, poll_interval=f"{TICK_MS}ms")(poll)


for _n in range(TICKERS):
    _ticker(_n)
