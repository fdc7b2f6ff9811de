"""Turn the database URLs the cloaca API accepts into SQLAlchemy URLs, and check PostgreSQL schema names.

Accepted forms:

- ``postgresql://`` / ``postgres://`` URLs (driven by psycopg 3);
- ``":memory:"``, ``sqlite://`` and ``sqlite://:memory:``: a database private to the one runner;
- ``sqlite://relative.db``, ``sqlite:///abs/path.db`` (three slashes: an absolute path, as in Cloacina),
  ``sqlite:////abs/path.db`` (SQLAlchemy's spelling); ``?mode=rwc|rw|memory`` is honoured, other query options
  are ignored with a warning (as cloaca does);
- bare paths: ``/abs/path``, ``./rel``, ``../rel``, or any name ending in ``.db``, ``.sqlite``, ``.sqlite3``
  (taken byte for byte, no query string);
- SQLite URIs ``file:...`` (e.g. ``file:name?mode=memory&cache=shared``), handed to SQLite as URIs.

>>> parse_database_url(":memory:").sqlalchemy_url
'sqlite://'
>>> parse_database_url("sqlite:///tmp/x.db?mode=rwc").sqlalchemy_url
'sqlite:////tmp/x.db'
>>> parse_database_url("/tmp/app.sqlite3").sqlalchemy_url
'sqlite:////tmp/app.sqlite3'
>>> parse_database_url("postgres://u:secret@h/db").display
'postgresql+psycopg://u:***@h/db'
>>> schema_identifier("Tenant_A")
'tenant_a'
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from sqlalchemy.engine import make_url

from cloacina.errors import StoreError

log = logging.getLogger("cloacina.store")
_SQLITE_MODES = {"rwc", "rw", "ro", "memory"}
_BARE_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class InvalidSchemaError(StoreError, ValueError):
    """A PostgreSQL schema (tenant) was asked for with a URL or a name that cannot have one."""


def schema_identifier(schema: str) -> str:
    """The PostgreSQL schema ``schema`` names: ASCII letters folded to lower case, as PostgreSQL folds unquoted
    names (so ``"Tenant_A"`` and ``"tenant_a"`` are one schema, as in cloaca). ``InvalidSchemaError`` (a
    ``ValueError``) unless it is non-empty Unicode letters, digits and ``_``."""
    if not isinstance(schema, str):
        raise TypeError(f"schema name must be a str, got {type(schema).__name__}")
    if not schema:
        raise InvalidSchemaError("Schema name cannot be empty")
    if not all(c.isalnum() or c == "_" for c in schema):
        raise InvalidSchemaError(
            f"invalid schema name {schema!r}: Schema name must contain only alphanumeric characters and underscores"
        )
    return schema.translate(_ASCII_LOWER)


def check_schema_args(database_url: str, schema: str) -> None:
    """What ``DefaultRunner.with_schema`` checks before connecting: a PostgreSQL URL and a valid name."""
    if not isinstance(database_url, str):
        raise TypeError(f"database_url must be a str, got {type(database_url).__name__}")
    if not database_url.strip().startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        raise InvalidSchemaError(
            "Schema-based multi-tenancy requires PostgreSQL (a postgres:// or postgresql:// URL); "
            "SQLite has no schemas: use one database file per tenant"
        )
    schema_identifier(schema)


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

    @property
    def secrets(self) -> tuple[str, ...]:
        """The URL's password as given and decoded (none for SQLite), for masking it in error messages."""
        password = make_url(self.sqlalchemy_url).password
        if not password:
            return ()
        return tuple(sorted({str(password), quote(str(password), safe="")}, key=len, reverse=True))


def parse_database_url(url: str) -> DatabaseURL:
    """Parse ``url``; ``StoreError`` (with the password masked) if it is not a supported form."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"database URL must be a non-empty string, got {url!r}")
    url = url.strip()
    if url == ":memory:" or url in ("sqlite://", "sqlite::memory:", "sqlite://:memory:"):
        return DatabaseURL("sqlite", "sqlite://", is_memory=True)
    if url.startswith("sqlite:"):
        return _parse_sqlite(url)
    if url.startswith("file:"):
        return _parse_sqlite_uri(url)
    if url.startswith(("/", "./", "../")) or url.endswith(_BARE_SQLITE_SUFFIXES):
        return DatabaseURL("sqlite", f"sqlite:///{os.path.abspath(url)}")
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
        log.warning("ignoring sqlite URL option(s) %s (WAL and the busy timeout are set already)", sorted(params))
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


def _parse_sqlite_uri(url: str) -> DatabaseURL:
    """``file:`` URIs go to SQLite as URIs (``uri=true``); ``mode=memory`` is an in-memory database."""
    _, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    is_memory = params.get("mode") == "memory" or url.startswith("file::memory:")
    joiner = "&" if query else "?"
    return DatabaseURL("sqlite", f"sqlite:///{quote(url, safe=':/?&=._-~')}{joiner}uri=true", is_memory=is_memory)
