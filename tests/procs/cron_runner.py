"""A process for the multi-process cron test: runs a CronScheduler against a shared PostgreSQL schema.

Usage: python cron_runner.py PG_URL SCHEMA SECONDS
The parent has migrated the schema and registered the schedules; this process builds its own store, thread
dispatcher, coordinator and scheduler (no DefaultRunner), prints ``ready``, fires for SECONDS, then prints
``created <n> refused <m>``.
"""

from __future__ import annotations

import sys
import time

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.dispatch.threads import ThreadDispatcher
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.cron import CronScheduler
from cloacina.store.cron import CronStore
from cloacina.store.database import Database
from cloacina.store.runs import RunStore

with cloaca.WorkflowBuilder("cron_rt"):

    @cloaca.task(id="tick", retry_attempts=0)
    def tick(context: cloaca.Context) -> cloaca.Context:
        return context


def main() -> None:
    url, schema, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    db = Database(url, schema=schema)
    db.check_migrated()
    dispatcher = ThreadDispatcher(4)
    coordinator = RunCoordinator(RunStore(db), lambda name, *_: registry.get_workflow(name), dispatcher=dispatcher)
    scheduler = CronScheduler(CronStore(db), coordinator, registry.get_workflow, poll_interval_s=0.5)
    scheduler.start()
    print("ready", flush=True)
    time.sleep(seconds)  # the process fires for this long: the test's observation period
    scheduler.stop()
    dispatcher.shutdown(5)
    db.dispose()
    print(f"created {scheduler.runs_created} refused {scheduler.claims_refused}", flush=True)


if __name__ == "__main__":
    main()
