"""Test app for ``cloacina run``: a trigger firing every 200 ms into a 2-task workflow, a broken trigger, and a
cron schedule (every second) registered by ``setup(runner)``.

The workflow takes longer than the poll interval (two 150 ms tasks), so while a run is active the next fires
of the same (empty) context are deduplicated.
"""

import time

import cloacina as cloaca

with cloaca.WorkflowBuilder("tick_flow") as builder:

    @cloaca.task(id="extract")
    def extract(ctx):
        time.sleep(0.15)  # tasks take longer than the poll interval, so later fires are dedup skips
        ctx.set("rows", 3)
        return ctx

    @cloaca.task(id="load", dependencies=["extract"])
    def load(ctx):
        time.sleep(0.15)  # tasks take longer than the poll interval, so later fires are dedup skips
        ctx.set("loaded", ctx.get("rows"))
        return ctx


with cloaca.WorkflowBuilder("cron_flow"):

    @cloaca.task(id="beat")
    def beat(ctx):
        return ctx


@cloaca.trigger(workflow="tick_flow", name="ticker", poll_interval="200ms")
def ticker():
    return cloaca.TriggerResult.fire()


@cloaca.trigger(workflow="tick_flow", name="broken_sensor", poll_interval="300ms")
def broken_sensor():
    raise RuntimeError("sensor offline")


SETUP_CALLS = []


def setup(runner):
    """Called by ``cloacina run`` once the runner has started."""
    SETUP_CALLS.append(runner)
    runner.register_cron_workflow("cron_flow", "* * * * * *", "UTC")  # 6 fields: seconds first
    print("setup called", flush=True)
