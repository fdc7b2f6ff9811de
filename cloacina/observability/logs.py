"""Service logging: one line per record, as text or JSON, naming the trigger, run and task it concerns.

Our code passes structured fields with ``extra=``::

    log.info("task completed", extra={"run_id": run_id, "workflow": "etl", "task": "load", "attempt": 1})

``configure_logging("text")`` prints them after the message as ``key=value``::

    2024-05-01 12:00:00,123 INFO cloacina.execution task completed run_id=0f3c... workflow=etl task=load attempt=1

``configure_logging("json")`` prints one JSON object per line (``ts`` in ISO-8601 UTC, ``level``, ``logger``,
``message``, the fields, and ``exc_info`` when an exception is attached), ready for Loki, ELK or CloudWatch.

Every message and traceback goes through :func:`redact`, so a database or broker URL logged by mistake never
shows its password.

>>> redact("cannot reach redis://:hunter2@cache:6379/0 (timeout)")
'cannot reach redis://:***@cache:6379/0 (timeout)'
>>> redact("postgresql+psycopg://app:p%40ss@db:5432/prod and amqp://guest:guest@mq//")
'postgresql+psycopg://app:***@db:5432/prod and amqp://guest:***@mq//'
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

#: The structured fields a record may carry (``extra=``), in the order they are printed.
STRUCTURED_FIELDS: tuple[str, ...] = (
    "trigger",
    "run_id",
    "workflow",
    "task",
    "attempt",
    "status",
    "context_hash",
    "schedule_id",
    "hash",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# scheme://user:password@  ->  scheme://user:***@   (user may be empty: redis://:password@host). The password
# runs to the last "@" before a "/", "?", "#", space or quote, so an unescaped "@" in it is masked too.
_URL_PASSWORD = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/?#@\s'\"]*):[^/?#\s'\"<>]*@")

# libpq keyword form: "host=db user=app password=secret"
_KEYWORD_PASSWORD = re.compile(r"\b(?P<key>password|passwd)=(?!\*\*\*)[^\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL (and of a libpq
    ``password=...`` keyword) replaced by ``***``.

    >>> redact("redis://localhost:6379/0")
    'redis://localhost:6379/0'
    >>> redact("host=db user=app password=secret")
    'host=db user=app password=***'
    """
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('prefix')}:***@", text)
    if "=" in text:
        text = _KEYWORD_PASSWORD.sub(lambda m: f"{m.group('key')}=***", text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields present (and not ``None``) on ``record``."""
    out: dict[str, Any] = {}
    for key in STRUCTURED_FIELDS:
        value = record.__dict__.get(key)
        if value is not None:
            out[key] = value
    return out


def _text_value(value: Any) -> str:
    text = redact(str(value))
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``asctime level logger message key=value ...``, then the traceback if any; passwords redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the fields, ``exc_info``.

    >>> record = logging.makeLogRecord({"name": "cloacina.doc", "levelname": "INFO", "msg": "hi", "run_id": "r1"})
    >>> doc = json.loads(JsonFormatter().format(record))
    >>> doc["logger"], doc["message"], doc["run_id"]
    ('cloacina.doc', 'hi', 'r1')
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            doc[key] = value if isinstance(value, int | float | bool) else redact(str(value))
        if record.exc_info:
            doc["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            doc["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


class ServiceLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler :func:`configure_logging` installs (recognised, and replaced, on a second call).

    Without an explicit stream it writes to whatever ``sys.stderr`` is when each record arrives.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(fmt: str = "text", level: str | int = "INFO", *, stream: IO[str] | None = None) -> None:
    """Install one root handler printing ``fmt`` ("text" or "json") at ``level``; safe to call again.

    This is the one place that installs cloacina's log handler: services call it with their settings, and the
    command line (``cloacina -v``) through :func:`cloacina.cli.common.configure_logging`. A second call replaces
    the handler of the first, so records are never printed twice; other handlers (pytest's capture, a user's) are
    left alone.

    Typical service start-up::

        settings = CloacinaSettings()
        configure_logging(settings.log_format, settings.service_log_level("poller"))
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.strip().upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        level = resolved
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ServiceLogHandler):
            root.removeHandler(handler)
            if not handler._follow_stderr:
                handler.flush()
    handler = ServiceLogHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
