"""The console's Jinja2 environment: templates from ``cloacina/web/templates`` (package data, so a wheel serves
them), autoescaping on, and the few filters the pages share.

>>> from datetime import datetime, timezone
>>> duration(1530), duration(None), duration(61_000), duration(3_725_000)
('1.53 s', '—', '1 min 1 s', '1 h 2 min')
>>> ago(datetime(2024, 7, 6, 2, 0, 0, tzinfo=timezone.utc), now=datetime(2024, 7, 6, 2, 3, 5, tzinfo=timezone.utc))
'3 min ago'
>>> str(when(datetime(2024, 7, 6, 2, 0, 0, tzinfo=timezone.utc)))
'<time datetime="2024-07-06T02:00:00Z">2024-07-06 02:00:00</time>'
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

STATIC_VERSION = "1"  # bump to make browsers fetch changed static files at once


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(value: datetime | None) -> Markup:
    """A ``<time>`` element in UTC (machine-readable attribute, readable text), or a dash."""
    if value is None:
        return Markup("—")
    shown = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return Markup('<time datetime="{}">{}</time>').format(rfc3339(value), shown)


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or ``in ...`` for a future time), coarse: seconds, minutes, hours, days."""
    if value is None:
        return "—"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            text = f"{seconds // size} {unit}"
            break
    else:
        text = f"{seconds} s"
    return f"in {text}" if future else f"{text} ago"


def duration(ms: int | float | None) -> str:
    """A duration given in milliseconds, in the two largest units that matter."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def static_url(name: str) -> str:
    return f"/static/{name}?v={STATIC_VERSION}"


def status_badge(status: str | None) -> Markup:
    """A status as a coloured pill; the text itself carries the meaning (colour is only a second cue)."""
    if not status:
        return Markup('<span class="muted">—</span>')
    return Markup('<span class="badge s-{0}">{0}</span>').format(escape(status))


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("cloacina.web", "templates"),
        autoescape=select_autoescape(["html", "svg"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, ago=ago, duration=duration, pretty_json=pretty_json, badge=status_badge)
    env.globals.update(static=static_url)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
