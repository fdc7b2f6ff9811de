"""What ``cloacina run`` shows while it runs: events, their running totals, and two ways to print them.

- :class:`LogView`: one line per event (when stdout is not a terminal: pipes, files, tests)::

      2024-05-01T14:03:07.120+02:00 fire        ticker      run=6f1c... hash=4f53cda18c2b
      2024-05-01T14:03:07.180+02:00 poll_error  sensor      poll raised RuntimeError: offline
      2024-05-01T14:03:07.470+02:00 completed   ticker      run=6f1c... workflow=tick_flow took=350ms
      summary fires=12 dedup_skips=3 poll_errors=6 runs_completed=12 runs_failed=0 runs_unfinished=0

- :class:`LiveView`: a rich ``Live`` table of the latest events under a line of totals (on a terminal).

Both get events only on the main thread; scheduler threads merely enqueue them (see :mod:`cloacina.cli.run`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cloacina.cli.common import fmt_duration_ms

KINDS = ("fire", "dedup_skip", "poll_error", "completed", "failed")
_STYLES = {"fire": "cyan", "dedup_skip": "yellow", "poll_error": "red", "completed": "green", "failed": "bold red"}


@dataclass(frozen=True)
class Event:
    """One thing that happened: a trigger fired, was deduplicated or failed to poll, or a run ended."""

    at: datetime
    kind: str  # one of KINDS
    trigger: str | None = None
    run_id: str | None = None
    workflow: str | None = None
    context_hash: str | None = None
    took_ms: int | None = None
    message: str | None = None

    def detail(self) -> str:
        """Everything but time, kind and trigger, as ``key=value`` words (a free-text reason last)."""
        parts: list[str] = []
        if self.run_id:
            parts.append(f"run={self.run_id}")
        if self.workflow:
            parts.append(f"workflow={self.workflow}")
        if self.context_hash:
            parts.append(f"hash={self.context_hash[:12]}")
        if self.took_ms is not None:
            parts.append(f"took={fmt_duration_ms(self.took_ms)}")
        if self.message:
            parts.append(" ".join(self.message.split()))
        return " ".join(parts)


@dataclass
class TriggerTotals:
    fires: int = 0
    dedup_skips: int = 0
    poll_errors: int = 0


@dataclass
class Totals:
    """Running counts for the live header and the final summary."""

    fires: int = 0
    dedup_skips: int = 0
    poll_errors: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    per_trigger: dict[str, TriggerTotals] = field(default_factory=dict)
    unfinished: set[str] = field(default_factory=set)

    def add(self, event: Event) -> None:
        polled = event.trigger if event.kind in ("fire", "dedup_skip", "poll_error") else None
        per = self.per_trigger.setdefault(polled, TriggerTotals()) if polled is not None else TriggerTotals()
        if event.kind == "fire":
            self.fires += 1
            per.fires += 1
            if event.run_id:
                self.unfinished.add(event.run_id)
        elif event.kind == "dedup_skip":
            self.dedup_skips += 1
            per.dedup_skips += 1
        elif event.kind == "poll_error":
            self.poll_errors += 1
            per.poll_errors += 1
        elif event.kind in ("completed", "failed"):
            if event.kind == "completed":
                self.runs_completed += 1
            else:
                self.runs_failed += 1
            self.unfinished.discard(event.run_id or "")

    def summary_fields(self) -> list[tuple[str, int]]:
        return [
            ("fires", self.fires),
            ("dedup_skips", self.dedup_skips),
            ("poll_errors", self.poll_errors),
            ("runs_completed", self.runs_completed),
            ("runs_failed", self.runs_failed),
            ("runs_unfinished", len(self.unfinished)),
        ]


class View(Protocol):
    def start(self, banner: str) -> None: ...
    def show(self, event: Event, totals: Totals) -> None: ...
    def status(self, text: str) -> None: ...
    def finish(self, totals: Totals, elapsed_s: float) -> None: ...


class LogView:
    """Plain lines on stdout, flushed one by one (``click.echo`` flushes)."""

    def start(self, banner: str) -> None:
        click.echo(banner)

    def show(self, event: Event, totals: Totals) -> None:
        stamp = event.at.astimezone().isoformat(timespec="milliseconds")
        click.echo(f"{stamp} {event.kind:<11} {event.trigger or '-':<16} {event.detail()}".rstrip())

    def status(self, text: str) -> None:
        click.echo(text)

    def finish(self, totals: Totals, elapsed_s: float) -> None:
        fields = " ".join(f"{k}={v}" for k, v in totals.summary_fields())
        click.echo(f"summary {fields} elapsed_s={elapsed_s:.1f}")
        for name, t in sorted(totals.per_trigger.items()):
            click.echo(
                f"summary trigger={name} fires={t.fires} dedup_skips={t.dedup_skips} poll_errors={t.poll_errors}"
            )


class LiveView:
    """A table of the latest events that redraws in place, with the totals above it."""

    def __init__(self, console: Console, rows: int = 20) -> None:
        self.console = console
        self.events: collections.deque[Event] = collections.deque(maxlen=rows)
        self.banner = ""
        self.note = "Ctrl-C to stop"
        self.totals = Totals()
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def start(self, banner: str) -> None:
        self.banner = banner
        self.live.start()
        self.live.update(self._render())

    def show(self, event: Event, totals: Totals) -> None:
        self.events.append(event)
        self.totals = totals
        self.live.update(self._render())

    def status(self, text: str) -> None:
        self.note = text
        self.live.update(self._render())

    def finish(self, totals: Totals, elapsed_s: float) -> None:
        self.totals = totals
        self.live.update(self._render())
        self.live.stop()
        self.console.print(summary_table(totals, elapsed_s))

    def _render(self) -> RenderableType:
        header = Text.assemble(
            (self.banner, "bold"),
            "\n",
            _totals_text(self.totals),
            ("  " + self.note, "dim"),
        )
        table = Table(expand=True)
        table.add_column("time", no_wrap=True, width=12)
        table.add_column("event", no_wrap=True, width=11)
        table.add_column("trigger", no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=3)
        for event in self.events:
            table.add_row(
                event.at.astimezone().strftime("%H:%M:%S.%f")[:-3],
                Text(event.kind, style=_STYLES.get(event.kind, "")),
                event.trigger or "-",
                Text(event.detail()),
            )
        return Group(header, table)


def _totals_text(totals: Totals) -> Text:
    text = Text()
    styles = ("cyan", "yellow", "red", "green", "red", "")
    for (label, value), style in zip(totals.summary_fields(), styles, strict=True):
        text.append(f"{label.replace('_', ' ')} ")
        text.append(str(value), style=f"bold {style}".strip())
        text.append("   ")
    return text


def summary_table(totals: Totals, elapsed_s: float) -> Table:
    table = Table(title=f"Summary ({elapsed_s:.1f}s)", title_justify="left")
    table.add_column("trigger")
    for column in ("fires", "dedup skips", "poll errors"):
        table.add_column(column, justify="right")
    for name, t in sorted(totals.per_trigger.items()):
        table.add_row(name, str(t.fires), str(t.dedup_skips), str(t.poll_errors))
    table.add_row("[bold]all[/bold]", str(totals.fires), str(totals.dedup_skips), str(totals.poll_errors))
    table.caption = (
        f"runs completed {totals.runs_completed}, failed {totals.runs_failed}, still running {len(totals.unfinished)}"
    )
    return table
