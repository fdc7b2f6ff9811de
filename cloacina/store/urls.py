"""Turn the database URLs the cloaca API accepts into SQLAlchemy URLs.

Accepted forms: ``":memory:"``, ``sqlite://relative.db``, ``sqlite:///abs/path.db`` (three slashes: an
absolute path, as in Cloacina), ``sqlite:////abs/path.db`` (SQLAlchemy's spelling), optional query strings such
as ``?mode=rwc``, and ``postgresql://`` / ``postgres://`` URLs (driven by psycopg 3).

>>> parse_database_url(":memory:").sqlalchemy_url
'sqlite://'
>>> parse_database_url("sqlite:///tmp/x.db?mode=rwc").sqlalchemy_url
'sqlite:////tmp/x.db'
>>> parse_database_url("postgres://u:secret@h/db").display
'postgresql+psycopg://u:***@h/db'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sqlalchemy.engine import make_url

from cloacina.errors import StoreError

_SQLITE_MODES = {"rwc", "rw", "ro", "memory"}


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL."""

    dialect: str  # "sqlite" | "postgresql"
    sqlalchemy_url: str
    is_memory: bool = False
    read_only: bool = False

    @property
    def display(self) -> str:
        """The URL with any password masked, safe for logs."""
        return make_url(self.sqlalchemy_url).render_as_string(hide_password=True)


def parse_database_url(url: str) -> DatabaseURL:
    """Parse ``url``; ``StoreError`` (with the password masked) if it is not a supported form."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"database URL must be a non-empty string, got {url!r}")
    url = url.strip()
    if url == ":memory:" or url in ("sqlite://", "sqlite::memory:", "sqlite://:memory:"):
        return DatabaseURL("sqlite", "sqlite://", is_memory=True)
    if url.startswith("sqlite:"):
        return _parse_sqlite(url)
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            return DatabaseURL("postgresql", "postgresql+psycopg://" + rest)
    scheme = url.split(":", 1)[0]
    raise StoreError(
        f"unsupported database URL scheme {scheme!r}: use ':memory:', 'sqlite://...' or 'postgresql://...'"
    )


def _parse_sqlite(url: str) -> DatabaseURL:
    body = url[len("sqlite:") :]
    path, _, query = body.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    mode = params.pop("mode", "rwc")
    if mode not in _SQLITE_MODES:
        raise StoreError(f"unsupported sqlite mode {mode!r} in {url!r}; use one of {sorted(_SQLITE_MODES)}")
    if params:
        raise StoreError(f"unsupported sqlite URL option(s) {sorted(params)} in {url!r}")
    if not path.startswith("//"):
        raise StoreError(f"sqlite URL must start with 'sqlite://', got {url!r}")
    path = path[2:]
    if mode == "memory" or path in ("", ":memory:"):
        return DatabaseURL("sqlite", "sqlite://", is_memory=True)
    # "sqlite://rel.db" -> relative; "sqlite:///abs.db" and "sqlite:////abs.db" -> absolute.
    path = "/" + path.lstrip("/") if path.startswith("/") else os.path.abspath(path)
    if mode == "ro":
        raise StoreError(f"sqlite mode=ro is not supported in {url!r}: a runner writes its run history")
    if mode == "rw" and not os.path.exists(path):
        raise StoreError(f"sqlite database {path!r} does not exist and mode={mode} does not create it")
    return DatabaseURL("sqlite", f"sqlite:///{path}", read_only=(mode == "ro"))
