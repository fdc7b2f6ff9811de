"""App for tests/test_recovery.py: task ``slow`` hangs on its first attempt (the process gets SIGKILLed there).

Each attempt appends its pid to ``$RECOVERY_MARKERS/<task>``, so the test sees exactly which attempts ran.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloacina as cloaca

MARKERS = Path(os.environ["RECOVERY_MARKERS"])


def _mark(task: str) -> int:
    path = MARKERS / task
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


with cloaca.WorkflowBuilder("recovery_wf"):

    @cloaca.task(id="slow", retry_attempts=0)
    def slow(ctx: cloaca.Context) -> cloaca.Context:
        if _mark("slow") == 1:
            time.sleep(600)  # first attempt: the test kills the process here
        ctx.set("slow", "done")
        return ctx

    @cloaca.task(id="after", dependencies=["slow"], retry_attempts=0)
    def after(ctx: cloaca.Context) -> cloaca.Context:
        _mark("after")
        ctx.set("after", "done")
        return ctx


if __name__ == "__main__":
    config = cloaca.DefaultRunnerConfig(recovery_stale_after_seconds=2, enable_trigger_scheduling=False)
    runner = cloaca.DefaultRunner(sys.argv[1], config)
    print(runner.start_run("recovery_wf", {"n": 1}), flush=True)
    time.sleep(600)  # stays alive (a runner mid-run) until the test kills it
