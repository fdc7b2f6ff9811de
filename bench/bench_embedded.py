"""Embedded-mode benchmarks, printed as JSON.

1. ``execute()`` latency of a 3-task chain of no-op tasks, against a bare baseline running the same three
   functions as a chain on a ThreadPoolExecutor in the same process (what the engine adds: SQL bookkeeping,
   planning, dispatch).
2. Poll throughput: skip polls per second one runner sustains with 1,000 no-op triggers at a 1 s interval, and
   the CPU it costs.
3. Fire-to-first-task latency: from a trigger returning ``fire`` to the first task of the run starting.
4. ``--poller-drift`` (alone): does the embedded poller keep time? One runner polls 1,000 no-op triggers at 1 s,
   100 at 100 ms and one trigger firing a one-task workflow every 200 ms (a fresh context each time). Every poll
   records its start (monotonic) inside the trigger function, the task records its own start. Reported over the
   measured window: drift = |gap between the starts of two successive polls of one trigger - its interval|
   (p50/p90/p99/max per interval), fire-to-first-task (trigger returned ``fire`` -> first task started), the
   process's CPU share (process CPU time / wall time) and the full garbage collections in the window (each one
   stops every thread: they are the usual cause of the worst drifts).

Usage: python bench/bench_embedded.py [--runs 200] [--triggers 1000] [--seconds 10] [--pg URL]
       python bench/bench_embedded.py --poller-drift [--seconds 25] [--warmup 5] [--db URL]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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


# -- 4. does the poller keep time? ------------------------------------------------------------------------------
DRIFT_CLASSES = (("1s", 1.0, 1000), ("100ms", 0.1, 100))  # (label, interval, how many no-op triggers)
FIRE_INTERVAL = "200ms"


def _recorder(starts: list[float]) -> Callable[[], Any]:
    skip = cloaca.TriggerResult.skip()
    clock = time.monotonic

    def poll() -> Any:
        starts.append(clock())  # list.append is atomic under the GIL: cheap and thread-safe
        return skip

    return poll


def _drift_summary(series: list[list[float]], interval_s: float, t0: float, t1: float) -> dict[str, Any]:
    """Drift of every pair of successive polls that both started inside [t0, t1]."""
    drifts: list[float] = []
    late_by_interval = 0
    polls = 0
    for starts in series:
        window = [t for t in starts if t0 <= t <= t1]
        polls += len(window)
        for a, b in itertools.pairwise(window):
            gap = b - a
            drifts.append(abs(gap - interval_s))
            late_by_interval += gap >= 2 * interval_s
    if not drifts:
        return {"polls": polls, "error": "no successive polls in the window"}
    ms = [d * 1000 for d in drifts]
    return {
        "triggers": len(series),
        "polls": polls,
        "expected_polls": round(len(series) * (t1 - t0) / interval_s),
        "drift_p50_ms": round(statistics.median(ms), 2),
        "drift_p90_ms": round(_percentile(ms, 0.90), 2),
        "drift_p99_ms": round(_percentile(ms, 0.99), 2),
        "drift_max_ms": round(max(ms), 2),
        "gaps_of_two_intervals_or_more": late_by_interval,
    }


def bench_poller_drift(seconds: float, warmup_s: float, db_url: str | None) -> dict[str, Any]:
    saved = registry.snapshot()
    try:
        with tempfile.TemporaryDirectory(prefix="cloacina-drift-") as tmp:
            url = db_url or f"sqlite:///{os.path.join(tmp, 'drift.db')}"
            out = _bench_poller_drift(seconds, warmup_s, url)
            out["db"] = "sqlite file" if db_url is None else db_url.split("@")[-1]
            return out
    finally:
        registry.restore(saved)


class _FullCollections:
    """Durations of the garbage collector's full (generation 2) collections, while installed."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []  # (start, seconds)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.pauses.append((self._started, time.monotonic() - self._started))

    def within(self, t0: float, t1: float) -> list[float]:
        return [round(d * 1000, 1) for at, d in self.pauses if t0 <= at <= t1]


def _drop_schema(db_url: str, schema: str) -> None:
    import sqlalchemy

    from cloacina.store.urls import parse_database_url

    engine = sqlalchemy.create_engine(parse_database_url(db_url).sqlalchemy_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


def _bench_poller_drift(seconds: float, warmup_s: float, db_url: str) -> dict[str, Any]:
    series: dict[str, list[list[float]]] = {label: [] for label, _, _ in DRIFT_CLASSES}
    for label, _, count in DRIFT_CLASSES:
        for i in range(count):
            starts: list[float] = []
            series[label].append(starts)
            cloaca.trigger(workflow="drift_wf", name=f"drift_{label}_{i}", poll_interval=label)(_recorder(starts))
    fire_starts: list[float] = []
    fired_at: dict[int, float] = {}
    task_started: dict[int, float] = {}
    counter = iter(range(10**9))

    with cloaca.WorkflowBuilder("drift_wf"):

        @cloaca.task(id="first", retry_attempts=0)
        def first(ctx: cloaca.Context) -> cloaca.Context:
            task_started[ctx.get("n")] = time.monotonic()
            return ctx

    @cloaca.trigger(workflow="drift_wf", name="drift_fire", poll_interval=FIRE_INTERVAL)
    def drift_fire() -> cloaca.TriggerResult:
        fire_starts.append(time.monotonic())
        n = next(counter)
        result = cloaca.TriggerResult.fire({"n": n})  # a fresh context: never a dedup skip
        fired_at[n] = time.monotonic()
        return result

    config = cloaca.DefaultRunnerConfig(enable_cron_scheduling=False)
    # PostgreSQL: a schema of its own, so that no schedule row of an earlier run (a disabled flag) is reused.
    schema = f"bench_drift_{os.getpid()}" if db_url.startswith("postgresql") else None
    registered = time.perf_counter()
    collections = _FullCollections()
    gc.callbacks.append(collections)
    try:
        with cloaca.DefaultRunner(db_url, config, schema=schema):
            started = time.perf_counter()
            time.sleep(warmup_s)
            t0, cpu0 = time.monotonic(), time.process_time()
            time.sleep(seconds)
            t1, cpu1 = time.monotonic(), time.process_time()
    finally:
        gc.callbacks.remove(collections)
        if schema is not None:
            _drop_schema(db_url, schema)
    out: dict[str, Any] = {
        "seconds": seconds,
        "warmup_s": warmup_s,
        "runner_start_s": round(started - registered, 2),
        "cpu_cores_used": round((cpu1 - cpu0) / (t1 - t0), 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "full_gc_pauses_ms": collections.within(t0, t1),
    }
    for label, interval_s, _ in DRIFT_CLASSES:
        out[f"drift_{label}"] = _drift_summary(series[label], interval_s, t0, t1)
    out["drift_fire_200ms"] = _drift_summary([fire_starts], 0.2, t0, t1)
    lat = [task_started[n] - fired_at[n] for n in list(task_started) if n in fired_at and t0 <= fired_at[n] <= t1]
    out["fire_to_first_task"] = {"samples": len(lat), **(_summary_ms(lat) if lat else {})}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds (10; 25 with --poller-drift)")
    parser.add_argument("--pg", default="postgresql://postgres@localhost:5432/test")
    parser.add_argument("--poller-drift", action="store_true", help="run only the poller drift benchmark (4.)")
    parser.add_argument("--warmup", type=float, default=5.0, help="--poller-drift: seconds before measuring")
    parser.add_argument("--db", default=None, help="--poller-drift: database URL (default: SQLite file in a tmp dir)")
    args = parser.parse_args()
    if args.poller_drift:
        drift = bench_poller_drift(args.seconds or 25.0, args.warmup, args.db)
        print(json.dumps({"python": sys.version.split()[0], "poller_drift": drift}, indent=2))
        return
    define_chain()
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    results["execute_chain3_sqlite_memory"] = bench_execute(":memory:", args.runs)
    try:
        results["execute_chain3_postgresql"] = bench_execute(args.pg, args.runs)
    except Exception as exc:  # no PostgreSQL here: say so, don't invent a number
        results["execute_chain3_postgresql"] = {"error": str(exc).splitlines()[0]}
    results["poll_throughput"] = bench_polls(args.triggers, args.seconds or 10.0)
    results["fire_to_first_task"] = bench_fire_latency(50)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
