"""Embedded-mode benchmarks, printed as JSON.

1. ``execute()`` latency of a 3-task chain of no-op tasks, against a bare baseline running the same three
   functions as a chain on a ThreadPoolExecutor in the same process (what the engine adds: SQL bookkeeping,
   planning, dispatch).
2. Poll throughput: skip polls per second one runner sustains with 1,000 no-op triggers at a 1 s interval, and
   the CPU it costs.
3. Fire-to-first-task latency: from a trigger returning ``fire`` to the first task of the run starting.

Usage: python bench/bench_embedded.py [--runs 200] [--triggers 1000] [--seconds 10] [--pg URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloacina as cloaca
from cloacina.definitions import registry


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary_ms(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(_percentile(ms, 0.90), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
    }


def _noop(ctx: Any) -> Any:
    return ctx


def define_chain() -> None:
    with cloaca.WorkflowBuilder("bench_chain3"):
        cloaca.task(id="a", retry_attempts=0)(lambda ctx: ctx)
        cloaca.task(id="b", dependencies=["a"], retry_attempts=0)(lambda ctx: ctx)
        cloaca.task(id="c", dependencies=["b"], retry_attempts=0)(lambda ctx: ctx)


def bench_execute(db_url: str, runs: int) -> dict[str, Any]:
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with cloaca.DefaultRunner(db_url, config) as runner:
        for _ in range(10):
            runner.execute("bench_chain3", {"warm": True})
        samples = []
        for i in range(runs):
            start = time.perf_counter()
            result = runner.execute("bench_chain3", {"i": i})
            samples.append(time.perf_counter() - start)
            assert result.status == "Completed", result
    baseline = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i in range(runs):
            start = time.perf_counter()
            ctx: Any = {"i": i}
            for _ in range(3):
                ctx = pool.submit(_noop, ctx).result()
            baseline.append(time.perf_counter() - start)
    out = {"engine": _summary_ms(samples), "bare_threadpool_chain": _summary_ms(baseline)}
    out["overhead_p50_ms"] = round(out["engine"]["p50_ms"] - out["bare_threadpool_chain"]["p50_ms"], 3)
    out["runs_per_s"] = round(runs / sum(samples), 1)
    return out


def bench_polls(n_triggers: int, seconds: float) -> dict[str, Any]:
    saved = registry.snapshot()  # the 1,000 triggers must not leak into the next measurement
    try:
        return _bench_polls(n_triggers, seconds)
    finally:
        registry.restore(saved)


def _bench_polls(n_triggers: int, seconds: float) -> dict[str, Any]:
    with cloaca.WorkflowBuilder("bench_poll_wf"):
        cloaca.task(id="noop")(lambda ctx: ctx)
    for i in range(n_triggers):
        cloaca.trigger(workflow="bench_poll_wf", name=f"noop_{i}", poll_interval="1s")(cloaca.TriggerResult.skip)
    config = cloaca.DefaultRunnerConfig(enable_cron_scheduling=False)
    with cloaca.DefaultRunner(":memory:", config) as runner:
        time.sleep(1.5)  # let the first, simultaneous round of polls pass
        before = sum(s["poll_count"] for s in runner.list_trigger_schedules(limit=n_triggers))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        after = sum(s["poll_count"] for s in runner.list_trigger_schedules(limit=n_triggers))
        cpu1, wall1 = time.process_time(), time.perf_counter()
    wall = wall1 - wall0
    return {
        "triggers": n_triggers,
        "interval_s": 1.0,
        "expected_polls_per_s": n_triggers,
        "skip_polls_per_s": round((after - before) / wall, 1),
        "cpu_cores_used": round((cpu1 - cpu0) / wall, 3),
    }


def bench_fire_latency(samples_wanted: int) -> dict[str, Any]:
    fired_at: dict[int, float] = {}
    started: dict[int, float] = {}
    done = threading.Event()
    seq = iter(range(1_000_000))

    with cloaca.WorkflowBuilder("bench_latency_wf"):

        @cloaca.task(id="first", retry_attempts=0)
        def first(ctx: cloaca.Context) -> cloaca.Context:
            started[ctx.get("n")] = time.perf_counter()
            if len(started) >= samples_wanted:
                done.set()
            return ctx

    @cloaca.trigger(workflow="bench_latency_wf", name="latency", poll_interval="100ms", allow_concurrent=True)
    def latency() -> cloaca.TriggerResult:
        n = next(seq)
        if n >= samples_wanted:
            return cloaca.TriggerResult.skip()
        fired_at[n] = time.perf_counter()
        return cloaca.TriggerResult.fire({"n": n})

    config = cloaca.DefaultRunnerConfig(enable_cron_scheduling=False)
    with cloaca.DefaultRunner(":memory:", config) as runner:
        done.wait(samples_wanted * 0.1 + 30)
        runner.set_trigger_enabled("latency", False)
    lat = [started[n] - fired_at[n] for n in started if n in fired_at]
    return {"samples": len(lat), **_summary_ms(lat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pg", default="postgresql://postgres@localhost:5432/test")
    args = parser.parse_args()
    define_chain()
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    results["execute_chain3_sqlite_memory"] = bench_execute(":memory:", args.runs)
    try:
        results["execute_chain3_postgresql"] = bench_execute(args.pg, args.runs)
    except Exception as exc:  # no PostgreSQL here: say so, don't invent a number
        results["execute_chain3_postgresql"] = {"error": str(exc).splitlines()[0]}
    results["poll_throughput"] = bench_polls(args.triggers, args.seconds)
    results["fire_to_first_task"] = bench_fire_latency(50)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
