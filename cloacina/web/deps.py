"""FastAPI dependencies shared by the API modules: the process's runner and settings, and checks of path and
query values that cannot name anything stored (so they are answered 404/422 before reaching the database)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import Depends, Query, Request

from cloacina.runner.default_runner import DefaultRunner
from cloacina.web.errors import ApiError
from cloacina.web.settings import WebSettings

MAX_NAME = 200  # names are String(200) columns
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
NAME_PATTERN = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
_NUL = re.compile("\x00")


def get_runner(request: Request) -> DefaultRunner:
    runner: DefaultRunner | None = getattr(request.app.state, "runner", None)
    if runner is None:
        raise ApiError(503, "unavailable", "the web process is starting or stopping")
    return runner


def get_settings(request: Request) -> WebSettings:
    settings: WebSettings = request.app.state.settings
    return settings


Runner = Annotated[DefaultRunner, Depends(get_runner)]
Settings = Annotated[WebSettings, Depends(get_settings)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]
NameFilter = Annotated[str | None, Query(max_length=MAX_NAME, pattern=NAME_PATTERN)]


def storable_name(name: str) -> bool:
    """Could ``name`` be a stored workflow or trigger name? (No NUL, at most 200 characters.)

    >>> storable_name("etl"), storable_name("a\\x00b"), storable_name("x" * 201)
    (True, False, False)
    """
    return len(name) <= MAX_NAME and _NUL.search(name) is None


def require_name(kind: str, name: str) -> str:
    """``name``, or a 404 for ``kind`` when no such name can be stored."""
    if not storable_name(name):
        raise not_found(kind, name)
    return name


def canonical_id(kind: str, value: str) -> str:
    """The stored (lower-case, hyphenated) form of a UUID id, or a 404 for ``kind``: nothing else is stored.

    >>> canonical_id("run", "6F1C0C7E-0B1A-4C55-9D4E-2F0E8C1A2B3C")
    '6f1c0c7e-0b1a-4c55-9d4e-2f0e8c1a2b3c'
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found(kind, value) from None


def not_found(kind: str, name: str) -> ApiError:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return ApiError(404, "not_found", f"unknown {kind} {shown!r}")
