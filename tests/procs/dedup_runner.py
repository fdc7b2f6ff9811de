"""A runner process for the multi-process dedup test: polls one trigger against a shared PostgreSQL schema.

Usage: python dedup_runner.py PG_URL SCHEMA SECONDS
The trigger fires contexts {"item": 0..2} round-robin every 50 ms; each run takes 0.3 s.
"""

from __future__ import annotations

import itertools
import sys
import time

import cloacina as cloaca

counter = itertools.count()

with cloaca.WorkflowBuilder("dedup_wf") as builder:

    @cloaca.task(id="work", retry_attempts=0)
    def work(context: cloaca.Context) -> cloaca.Context:
        time.sleep(0.3)  # each run takes a while: the behaviour under test (runs of one key must not overlap)
        return context


@cloaca.trigger(workflow="dedup_wf", name="items", poll_interval="50ms", allow_concurrent=False)
def items() -> cloaca.TriggerResult:
    return cloaca.TriggerResult.fire(cloaca.Context({"item": next(counter) % 3}))


def main() -> None:
    url, schema, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    config = cloaca.DefaultRunnerConfig(enable_cron_scheduling=False, trigger_base_poll_interval_ms=200)
    runner = cloaca.DefaultRunner.with_schema_config(url, schema, config)
    print("ready", flush=True)
    time.sleep(seconds)  # the process polls for this long: the test's observation period
    runner.set_trigger_enabled("items", False)
    runner.shutdown(wait_s=5)  # stops polling (a poll in flight ends first), then drains the runs in flight
    print("done", flush=True)


if __name__ == "__main__":
    main()
