"""``cloacina run APP``: run an app in this process and watch its triggers fire and its runs finish.

The runner's threads (trigger polls, task workers) only put raw events on a queue; the main thread turns them
into :class:`cloacina.cli.live_table.Event` values, counts and prints them. Signals only set a flag, so shutdown
always happens on the main thread, in order: stop polling triggers, wait (up to ``--grace``) for the runs they
started, shut the runner down, print the events that came in meanwhile, then the summary.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from cloacina.cli.common import cli_errors, console, db_option, duration_ms, parse_db
from cloacina.cli.live_table import Event, LiveView, LogView, Totals, View
from cloacina.definitions import registry
from cloacina.definitions.app_loader import load_app
from cloacina.definitions.duration import parse_duration_ms
from cloacina.engine.states import RunStatus
from cloacina.runner.config import DefaultRunnerConfig
from cloacina.runner.default_runner import DefaultRunner
from cloacina.store.runs import RunEnd

log = logging.getLogger("cloacina.cli.main")
RawEvent = tuple[Any, ...]


def _parse_duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration_ms(value, what="duration") / 1000
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("run", short_help="Run an app; show its fires, poll errors and runs live.")
@click.argument("app")
@db_option
@click.option(
    "--for",
    "duration_s",
    metavar="DURATION",
    callback=_parse_duration,
    help="Stop after this long (e.g. 30s, 2m, 1h). Default: run until Ctrl-C or SIGTERM.",
)
@click.option(
    "--grace",
    "grace_s",
    metavar="DURATION",
    default="10s",
    show_default=True,
    callback=_parse_duration,
    help="When stopping, how long to wait for runs already started to finish.",
)
@click.option("--plain", is_flag=True, help="Print one line per event even on a terminal (no live table).")
def run_command(app: str, db_url: str, duration_s: float | None, grace_s: float, plain: bool) -> None:
    """Run APP: poll its triggers, fire its cron schedules, execute the runs, and show what happens.

    APP is a module name (found from the current directory), a .py file or a package directory. Importing it
    registers its workflows, tasks and @trigger functions. If APP defines a function `setup(runner)`, it is
    called once the runner has started; that is where an app registers its cron schedules:

    \b
        def setup(runner):
            runner.register_cron_workflow("nightly_report", "0 2 * * *", "UTC")

    Each fire, dedup skip, poll error and finished run is shown as it happens: a live table on a terminal, one
    line per event otherwise. Ctrl-C or SIGTERM (or the end of --for) stops polling, waits for the runs already
    started to finish (up to --grace; a second Ctrl-C skips the wait), prints a summary and exits with status 0.
    """
    url = parse_db(db_url)
    with cli_errors():
        module = load_app(app)
    setup = getattr(module, "setup", None)
    if setup is not None and not callable(setup):
        raise click.ClickException(f"app {app!r} defines `setup`, but it is not a function (expected setup(runner))")
    events: queue.SimpleQueue[RawEvent] = queue.SimpleQueue()
    runner = _start_runner(db_url, events)
    try:
        if setup is not None:
            _call_setup(app, setup, runner)
        banner = _banner(app, url.display, runner, duration_s)
    except BaseException:
        runner.shutdown()
        raise
    view: View = LogView() if plain or not sys.stdout.isatty() else LiveView(console())
    _watch(runner, view, banner, events, duration_s, grace_s)


def _start_runner(db_url: str, events: queue.SimpleQueue[RawEvent]) -> DefaultRunner:
    """A runner with trigger and cron scheduling on, whose events all reach ``events``.

    The app's triggers are held back from the registry while the runner starts, and registered again once our
    listeners are attached, so that not even the first poll's events are missed. (A runner option to attach
    listeners before it starts polling would make this unnecessary.)
    """

    def on_trigger_event(kind: str, trigger: str, info: dict[str, Any]) -> None:
        if kind != "poll":  # every poll would drown the interesting events
            events.put(("trigger", datetime.now(UTC), kind, trigger, dict(info)))

    def on_run_finished(ended: RunEnd) -> None:
        events.put(("run", datetime.now(UTC), ended.run_id, str(ended.status)))

    held = registry.triggers()
    for definition in held:
        registry.unregister_trigger(definition.name)
    try:
        with cli_errors():
            runner = DefaultRunner(db_url, DefaultRunnerConfig(enable_trigger_scheduling=True))
        if runner.trigger_scheduler is not None:
            runner.trigger_scheduler.add_listener(on_trigger_event)
        runner.coordinator.add_run_finished_listener(on_run_finished)
    finally:
        for definition in held:  # with a runner: its scheduler's registry listener starts polling each one
            registry.register_trigger(definition)
    return runner


def _call_setup(app: str, setup: Callable[..., Any], runner: DefaultRunner) -> None:
    try:
        setup(runner)
    except Exception as exc:
        raise click.ClickException(f"setup(runner) in app {app!r} failed: {type(exc).__name__}: {exc}") from exc


def _banner(app: str, db_display: str, runner: DefaultRunner, duration_s: float | None) -> str:
    names = runner.trigger_scheduler.trigger_names if runner.trigger_scheduler is not None else []
    parts = [f"cloacina run {app}", f"database {db_display}", f"triggers: {', '.join(names) or 'none'}"]
    lister = getattr(runner, "list_cron_schedules", None)
    if lister is not None:
        try:
            parts.append(f"cron schedules: {len(lister(enabled_only=True))}")
        except Exception as exc:  # the banner must not stop the run
            log.debug("could not count cron schedules: %s", exc)
    parts.append(f"stopping after {duration_s:g}s" if duration_s is not None else "Ctrl-C to stop")
    return " | ".join(parts)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``; a second Ctrl-C interrupts the graceful shutdown."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled on the main thread (e.g. when embedded in another program)
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _watch(
    runner: DefaultRunner,
    view: View,
    banner: str,
    events: queue.SimpleQueue[RawEvent],
    duration_s: float | None,
    grace_s: float,
) -> None:
    totals = Totals()
    stop = threading.Event()
    started = time.monotonic()

    def handle(raw: RawEvent) -> None:
        event = _to_event(runner, raw)
        totals.add(event)
        view.show(event, totals)

    def pump(until: float | None, keep_going: Callable[[], bool]) -> None:
        """Show events as they arrive, until ``until`` (monotonic) or ``keep_going()`` turns false."""
        while keep_going():
            timeout = 0.25 if until is None else min(0.25, until - time.monotonic())
            if timeout <= 0:
                return
            try:
                handle(events.get(timeout=timeout))
            except queue.Empty:
                continue

    with _stop_on_signals(stop):
        view.start(banner)
        try:
            pump(None if duration_s is None else started + duration_s, lambda: not stop.is_set())
        finally:
            try:
                # Graceful stop: no new fires, then give the runs already started time to finish.
                if runner.trigger_scheduler is not None:
                    runner.trigger_scheduler.stop()
                if totals.unfinished:
                    view.status(f"stopping: waiting up to {grace_s:g}s for {len(totals.unfinished)} run(s)...")
                    pump(time.monotonic() + grace_s, lambda: bool(totals.unfinished))
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                pass
            view.status("stopping: shutting down the runner...")
            runner.shutdown()
            while True:  # runs that finished during shutdown
                try:
                    handle(events.get_nowait())
                except queue.Empty:
                    break
            view.finish(totals, time.monotonic() - started)


def _to_event(runner: DefaultRunner, raw: RawEvent) -> Event:
    if raw[0] == "trigger":
        _, at, kind, trigger, info = raw
        if kind == "fire":
            return Event(at, "fire", trigger, run_id=info.get("run_id"), context_hash=info.get("context_hash"))
        if kind == "dedup_skip":
            return Event(
                at, "dedup_skip", trigger, context_hash=info.get("context_hash"), message="(a run is still active)"
            )
        if kind == "poll_error":
            return Event(at, "poll_error", trigger, message=str(info.get("reason", "")))
        return Event(at, kind, trigger, message=str(info))
    _, at, run_id, status = raw
    kind = "completed" if status == RunStatus.COMPLETED.value else "failed"
    try:
        record = runner.runs.get_run(run_id)
    except Exception as exc:  # still show the outcome if the database went away during shutdown
        log.debug("could not read run %s: %s", run_id, exc)
        record = None
    if record is None:
        return Event(at, kind, run_id=run_id)
    source = record.trigger_name
    if source is None and {"schedule_id", "scheduled_time"} <= record.input_context.keys():
        source = f"cron#{record.input_context['schedule_id']}"  # the context every cron run starts with
    return Event(
        at,
        kind,
        source,
        run_id=run_id,
        workflow=record.workflow_name,
        took_ms=duration_ms(record.started_at or record.created_at, record.completed_at),
        message=record.error_message if kind == "failed" else None,
    )
