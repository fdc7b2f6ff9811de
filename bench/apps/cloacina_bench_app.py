"""cloacina side of bench/bench_distributed.py: the benchmark's workflow shapes as cloacina workflows.

- ``bench_chain3``: a -> b -> c
- ``bench_chain10``: a -> s1 -> ... -> s9
- ``bench_single``: a
- ``bench_diamond``: a -> (b1, b2, b3, b4) -> d
- ``bench_fanout16``: a -> (w0 .. w15) -> z

Every task returns its context. The first task of each shape records its start time for the latency probe
(:mod:`bench.apps.latency_probe`) when the run's context carries a token. Started as
``cloacina worker --app bench.apps.cloacina_bench_app``; with ``BENCH_SQL_COUNT_DIR`` set, each worker process
counts its SQL statements and transactions (:mod:`bench.apps.sql_counter`).
"""

from __future__ import annotations

import cloacina as cloaca
from bench.apps import latency_probe, sql_counter

WORKFLOWS = {
    "chain3": "bench_chain3",
    "chain10": "bench_chain10",
    "single": "bench_single",
    "diamond": "bench_diamond",
    "fanout16": "bench_fanout16",
}


def _first(ctx: cloaca.Context) -> cloaca.Context:
    latency_probe.record_start(ctx.get(latency_probe.TOKEN_KEY))
    return ctx


def _step(ctx: cloaca.Context) -> cloaca.Context:
    return ctx


def _declare(name: str, edges: list[tuple[str, list[str]]]) -> None:
    with cloaca.WorkflowBuilder(name):
        for task_id, deps in edges:
            body = _first if not deps else _step
            cloaca.task(id=task_id, dependencies=deps, retry_attempts=0)(body)


sql_counter.install_from_env()
_declare(WORKFLOWS["chain3"], [("a", []), ("b", ["a"]), ("c", ["b"])])
_declare(WORKFLOWS["single"], [("a", [])])
_declare(
    WORKFLOWS["diamond"],
    [("a", []), *((f"b{i}", ["a"]) for i in range(1, 5)), ("d", ["b1", "b2", "b3", "b4"])],
)
_declare(WORKFLOWS["chain10"], [("a", []), ("s1", ["a"]), *((f"s{i}", [f"s{i - 1}"]) for i in range(2, 10))])
_declare(
    WORKFLOWS["fanout16"],
    [("a", []), *((f"w{i}", ["a"]) for i in range(16)), ("z", [f"w{i}" for i in range(16)])],
)
