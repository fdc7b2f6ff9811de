"""Prometheus metrics of the poller and the worker, all named ``cloacina_*``.

Counters (``_total``):

- ``cloacina_trigger_polls_total{trigger}``: a poll finished (event ``"poll"``, or :meth:`Metrics.poll`).
- ``cloacina_trigger_fires_total{trigger}``: event ``"fire"``, a run was created.
- ``cloacina_trigger_dedup_skips_total{trigger}``: event ``"dedup_skip"``, a run for that context is active.
- ``cloacina_trigger_poll_errors_total{trigger}``: event ``"poll_error"`` (raised, timed out, wrong type).
- ``cloacina_runs_finished_total{workflow,status}``: :meth:`Metrics.run_finished`.
- ``cloacina_task_attempts_total{workflow,task,status}``: :meth:`Metrics.task_finished`.

Histograms: ``cloacina_task_duration_seconds{workflow,task}`` (:meth:`Metrics.task_finished`, 5 ms to 1 h) and
``cloacina_fire_to_start_seconds`` (:meth:`Metrics.fire_to_start`, trigger fire to first task start, 1 ms to 10 s).
Gauge: ``cloacina_poller_loop_last_tick_timestamp_seconds`` (:meth:`Metrics.tick`, unix time of the last pass).

Polls and poll errors are separate counts: a poll that raised or returned a wrong type did finish, so it counts
in both (once the scheduler emits ``"poll"``); a poll that timed out never finished and counts only as an error.
``TriggerScheduler`` does not emit ``"poll"`` yet: until it does, call :meth:`Metrics.poll` where a poll ends.

Each :class:`Metrics` registers on its own :class:`~prometheus_client.CollectorRegistry` (a new one unless given),
so two instances (two tests, two runners in one process) never collide.

>>> m = Metrics()
>>> m.observe_trigger_event("fire", "new_files", {"run_id": "r1", "context_hash": "ab"})
>>> m.value("cloacina_trigger_fires_total", trigger="new_files")
1.0

Prefork workers (multiprocess mode). A Celery prefork worker runs tasks in child processes, each with its own
memory; the parent serves ``/metrics``. ``cloacina worker`` therefore calls :func:`enable_multiprocess` (a fresh
temporary directory in ``PROMETHEUS_MULTIPROC_DIR``) *before* it creates any metric or forks; every process then
writes its samples to memory-mapped files there, the parent serves :func:`multiprocess_registry`, and the
worker's ``worker_process_shutdown`` signal calls :func:`mark_process_dead` with the child's pid.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _untyped_mark_process_dead

# prometheus_client ships type information but leaves these three unannotated; their signatures, stated once.
_get_value_class: Callable[[], Any] = values.get_value_class
_multiprocess_collector: Callable[[CollectorRegistry, str], MultiProcessCollector] = MultiProcessCollector
_mark_process_dead: Callable[[int, str], None] = _untyped_mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FIRE_TO_START_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_DURATION_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
TRIGGER_EVENTS = ("poll", "fire", "dedup_skip", "poll_error")


class Metrics:
    """The ``cloacina_*`` series of one process, on ``registry`` (default: a new private registry).

    Every method is thread-safe and cheap (a dict lookup and a lock-free add), so it may be called from the
    scheduler's listeners and from task threads directly.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.trigger_polls = Counter(
            "cloacina_trigger_polls_total", "Trigger polls that finished.", ["trigger"], registry=reg
        )
        self.trigger_fires = Counter(
            "cloacina_trigger_fires_total", "Trigger fires that created a run.", ["trigger"], registry=reg
        )
        self.trigger_dedup_skips = Counter(
            "cloacina_trigger_dedup_skips_total",
            "Trigger fires skipped because a run for the same context is still active.",
            ["trigger"],
            registry=reg,
        )
        self.trigger_poll_errors = Counter(
            "cloacina_trigger_poll_errors_total",
            "Trigger polls that raised, timed out or returned a wrong type.",
            ["trigger"],
            registry=reg,
        )
        self.runs_finished = Counter(
            "cloacina_runs_finished_total", "Workflow runs that ended, by status.", ["workflow", "status"], registry=reg
        )
        self.task_attempts = Counter(
            "cloacina_task_attempts_total",
            "Task attempts that ended, by outcome (completed, failed, retry, ...).",
            ["workflow", "task", "status"],
            registry=reg,
        )
        self.task_duration = Histogram(
            "cloacina_task_duration_seconds",
            "Wall time of one task attempt.",
            ["workflow", "task"],
            buckets=TASK_DURATION_BUCKETS_S,
            registry=reg,
        )
        self.fire_to_start_latency = Histogram(
            "cloacina_fire_to_start_seconds",
            "Time from a trigger fire to the start of the run's first task.",
            buckets=FIRE_TO_START_BUCKETS_S,
            registry=reg,
        )
        self.poller_last_tick = Gauge(
            "cloacina_poller_loop_last_tick_timestamp_seconds",
            "Unix time of the poller loop's last pass (liveness).",
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self._last_tick_monotonic: float | None = None
        self._by_event: dict[str, Counter] = {
            "poll": self.trigger_polls,
            "fire": self.trigger_fires,
            "dedup_skip": self.trigger_dedup_skips,
            "poll_error": self.trigger_poll_errors,
        }

    # -- triggers --------------------------------------------------------------------------------------
    def observe_trigger_event(self, event: str, trigger_name: str, info: dict[str, Any] | None = None) -> None:
        """Count one scheduler event; the signature of a ``TriggerScheduler.add_listener`` listener.

        ``"poll"`` increments polls, ``"fire"`` fires, ``"dedup_skip"`` dedup skips, ``"poll_error"`` poll errors;
        other events are ignored (so new scheduler events never break the listener).
        """
        counter = self._by_event.get(event)
        if counter is not None:
            counter.labels(trigger=trigger_name).inc()

    def poll(self, trigger: str) -> None:
        """Count one finished poll of ``trigger``."""
        self.trigger_polls.labels(trigger=trigger).inc()

    def tick(self, now: float | None = None) -> None:
        """Record that the poller loop made a pass (``now``: unix time, default the current time)."""
        self.poller_last_tick.set(time.time() if now is None else now)
        self._last_tick_monotonic = time.monotonic()

    def seconds_since_tick(self) -> float | None:
        """Seconds since the last :meth:`tick` in this process (``None`` before the first)."""
        if self._last_tick_monotonic is None:
            return None
        return time.monotonic() - self._last_tick_monotonic

    # -- runs and tasks --------------------------------------------------------------------------------
    def run_finished(self, workflow: str, status: str) -> None:
        """Count a run of ``workflow`` that ended with ``status`` (e.g. ``"Completed"``, ``"Failed"``)."""
        self.runs_finished.labels(workflow=workflow, status=status).inc()

    def task_finished(self, workflow: str, task: str, status: str, duration_s: float) -> None:
        """Count one attempt of ``workflow.task`` that ended with ``status`` and record how long it took."""
        self.task_attempts.labels(workflow=workflow, task=task, status=status).inc()
        self.task_duration.labels(workflow=workflow, task=task).observe(max(0.0, duration_s))

    def fire_to_start(self, seconds: float) -> None:
        """Record the latency from a trigger fire to its run's first task starting."""
        self.fire_to_start_latency.observe(max(0.0, seconds))

    # -- reading (tests, health) -----------------------------------------------------------------------
    def value(self, name: str, **labels: str) -> float | None:
        """The current value of sample ``name`` with ``labels`` in this registry (``None`` if absent)."""
        return self.registry.get_sample_value(name, labels)


def instrument_scheduler(scheduler: Any, metrics: Metrics) -> None:
    """Wire ``metrics`` into a ``TriggerScheduler``: count its events and :meth:`Metrics.tick` on every pass.

    The tick wraps the instance's ``run_once`` (the loop thread calls ``self.run_once()``), so a loop that is stuck
    or dead stops ticking and the poller's ``/livez`` turns unhealthy.
    """
    scheduler.add_listener(metrics.observe_trigger_event)
    run_once: Callable[[], float] = scheduler.run_once

    def ticking_run_once() -> float:
        result = run_once()
        metrics.tick()
        return result

    scheduler.run_once = ticking_run_once


# -- multiprocess mode (prefork workers) ------------------------------------------------------------------
def enable_multiprocess(path: str | None = None) -> str:
    """Switch this process (and the children it forks later) to prometheus multiprocess mode; returns the dir.

    ``path`` defaults to a fresh temporary directory. Call it before creating any :class:`Metrics`: metrics
    created earlier keep their in-memory values and are invisible to :func:`multiprocess_registry`.
    """
    path = path or tempfile.mkdtemp(prefix="cloacina-metrics-")
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value class when it is imported; choose again now that the variable is set
    # (the library reads ``values.ValueClass`` at every metric's creation for exactly this).
    values.ValueClass = _get_value_class()
    return path


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def multiprocess_registry(fallback: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry that sums the samples of every process writing to ``$PROMETHEUS_MULTIPROC_DIR``.

    Serve it from the parent of a prefork worker. If the variable is not set, ``fallback`` is returned (the
    single-process registry, e.g. ``metrics.registry``); without a fallback that is a ``RuntimeError``.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        if fallback is not None:
            return fallback
        raise RuntimeError(f"{MULTIPROC_ENV} is not set: call enable_multiprocess() before the worker forks")
    registry = CollectorRegistry()
    _multiprocess_collector(registry, path)
    return registry


def mark_process_dead(pid: int) -> None:
    """Forget the live gauges of a child that exited (no-op outside multiprocess mode)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _mark_process_dead(pid, path)
