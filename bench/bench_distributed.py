"""Distributed benchmark on the local Redis and PostgreSQL, printed as JSON.

1. Throughput: runs per second of a 3-task no-op chain with 2 worker processes, cloacina against bare Celery
   running the same chain on the same Redis with the same settings, both driven from this script.
2. Fire-to-first-task latency: a poller fires a trigger every 100 ms; the run's first task records when it
   started; latency = task start - trigger fire (p50, p99).

Usage: python bench/bench_distributed.py [--runs 300] [--concurrency 2] [--latency-samples 100]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@localhost:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/9")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_workers(app: Any, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        if len(replies) >= count:
            return
    raise RuntimeError(f"only {len(replies)} of {count} workers answered")


def bench_bare(runs: int, concurrency: int, env: dict[str, str], logs: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ["BENCH_BROKER_URL"] = REDIS_URL
    from celery import chain

    from bench.apps.bare_celery_app import app, step

    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.apps.bare_celery_app:app",
        "worker",
        "-Q",
        "bare",
        f"--concurrency={concurrency}",
        "--loglevel=WARNING",
    ]
    workers = [_spawn([*cmd, "-n", f"bare{i}@%h"], env, logs / f"bare{i}.log") for i in range(2)]
    try:
        _wait_workers(app, 2)
        for _ in range(10):
            chain(step.s({}), step.s(), step.s()).apply_async().get(timeout=30)
        start = time.perf_counter()
        results = [chain(step.s({"i": i}), step.s(), step.s()).apply_async() for i in range(runs)]
        for r in results:
            r.get(timeout=120)
        elapsed = time.perf_counter() - start
    finally:
        _stop(workers)
    return {"runs": runs, "seconds": round(elapsed, 3), "runs_per_s": round(runs / elapsed, 1)}


def bench_cloacina(runs: int, concurrency: int, env: dict[str, str], logs: Path, db_url: str) -> dict[str, Any]:
    import cloacina as cloaca

    cmd = [
        sys.executable,
        "-m",
        "cloacina",
        "worker",
        "--app",
        "bench/apps/cloacina_bench_app.py",
        f"--concurrency={concurrency}",
    ]
    workers = [_spawn([*cmd, "-n", f"cloacina{i}@%h"], env, logs / f"cloacina{i}.log") for i in range(2)]
    runner = None
    try:
        sys.path.insert(0, str(ROOT))
        import bench.apps.cloacina_bench_app  # noqa: F401  (registers the workflows in this process)

        config = cloaca.DefaultRunnerConfig(broker_url=REDIS_URL)
        runner = cloaca.DefaultRunner(db_url, config)
        from cloacina.deployment.settings import CloacinaSettings
        from cloacina.deployment.wiring import celery_options
        from cloacina.dispatch.celery_app import publisher_app

        _wait_workers(publisher_app(celery_options(CloacinaSettings(broker_url=REDIS_URL, database_url=db_url))), 2)
        for _ in range(10):
            runner.execute("bench_chain3", {}, timeout=30)
        start = time.perf_counter()
        run_ids = [runner.start_run("bench_chain3", {"i": i}) for i in range(runs)]
        statuses = [runner.wait_for_run(run_id, timeout=300).status for run_id in run_ids]
        elapsed = time.perf_counter() - start
        assert statuses.count("Completed") == runs, statuses
    finally:
        if runner is not None:
            runner.shutdown()
        _stop(workers)
    return {"runs": runs, "seconds": round(elapsed, 3), "runs_per_s": round(runs / elapsed, 1)}


def bench_latency(samples: int, concurrency: int, env: dict[str, str], logs: Path) -> dict[str, Any]:
    r = redis.Redis.from_url(REDIS_URL)
    r.delete("bench:latency", "bench:fire")
    app_path = "bench/apps/cloacina_bench_app.py"
    procs = [
        _spawn(
            [
                sys.executable,
                "-m",
                "cloacina",
                "worker",
                "--app",
                app_path,
                f"--concurrency={concurrency}",
                "-n",
                f"lat{i}@%h",
            ],
            env,
            logs / f"lat-worker{i}.log",
        )
        for i in range(2)
    ]
    procs.append(_spawn([sys.executable, "-m", "cloacina", "poller", "--app", app_path], env, logs / "poller.log"))
    try:
        time.sleep(8)  # workers and poller up
        r.set("bench:fire", 1)
        deadline = time.monotonic() + samples * 0.1 + 60
        while r.llen("bench:latency") < samples and time.monotonic() < deadline:
            time.sleep(0.2)
        r.delete("bench:fire")
        pairs = [json.loads(x) for x in r.lrange("bench:latency", 0, -1)]
    finally:
        _stop(procs)
    lat_ms = [(started - fired) * 1000 for fired, started in pairs]
    if not lat_ms:
        return {"samples": 0, "error": "no fire reached a task; see the logs"}
    return {
        "samples": len(lat_ms),
        "p50_ms": round(statistics.median(lat_ms), 2),
        "p99_ms": round(_pct(lat_ms, 0.99), 2),
        "max_ms": round(max(lat_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker (2 workers)")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--logs", default="bench/results")
    args = parser.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    from cloacina.store.database import Database

    db = Database(PG_URL, schema=schema)
    db.upgrade()
    db.dispose()
    db_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {
        **os.environ,
        "BENCH_BROKER_URL": REDIS_URL,
        "CLOACINA_DATABASE_URL": db_url,
        "CLOACINA_BROKER_URL": REDIS_URL,
        "CLOACINA_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    results: dict[str, Any] = {"python": sys.version.split()[0], "workers": 2, "concurrency_each": args.concurrency}
    try:
        results["bare_celery_chain3"] = bench_bare(args.runs, args.concurrency, env, logs)
        results["cloacina_chain3"] = bench_cloacina(args.runs, args.concurrency, env, logs, db_url)
        results["ratio_vs_bare_celery"] = round(
            results["cloacina_chain3"]["runs_per_s"] / results["bare_celery_chain3"]["runs_per_s"], 3
        )
        results["fire_to_first_task"] = bench_latency(args.latency_samples, args.concurrency, env, logs)
    finally:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
