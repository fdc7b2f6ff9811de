"""Rules for the names of workflows, tasks, triggers and queues (they appear in keys, URLs and log lines)."""

from __future__ import annotations

import re

from cloacina.errors import DefinitionError

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$"  # also the pattern of a pool name in the HTTP API
_NAME = re.compile(NAME_PATTERN)


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it is a valid identifier for ``what``; raise ``DefinitionError`` otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"invalid {what} {name!r}: use 1-200 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            subject=name if isinstance(name, str) else None,
        )
    return name


_QUEUE = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def check_queue(queue: object, what: str) -> str:
    """Return ``queue`` if it names a Celery queue (1-200 letters, digits, ``_ . : -``); ``DefinitionError`` (a
    ``ValueError``) otherwise.

    >>> check_queue("gpu.large", "queue")
    'gpu.large'
    """
    if not isinstance(queue, str):
        raise DefinitionError(f"{what} must be a str naming a queue, got {type(queue).__name__}")
    if not _QUEUE.fullmatch(queue):
        raise DefinitionError(
            f"invalid {what} {queue!r}: a queue name is 1-200 letters, digits, '_', '.', ':' or '-'",
            subject=queue,
        )
    return queue
