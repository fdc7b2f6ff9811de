"""PostgreSQL multi-tenancy, the SQL side: one schema and one login role per tenant.

``create_tenant`` runs in ONE transaction (rolled back on any error): create the schema if missing, create the
role, grant it the schema, then run cloacina's migrations inside the schema, so the tenant's tables exist before
its first runner connects. ``remove_tenant`` drops both again.

Names are validated before they reach SQL (1-63 ASCII letters, digits and ``_``, not starting with a digit) and
are written as quoted lower-case identifiers. That is exactly what PostgreSQL does with the unquoted names
cloaca uses: ``Acme`` and ``acme`` are the same schema. Passwords are written as escaped string literals (role
DDL takes no bind parameters) and never appear in a log line or an error message.

>>> validate_schema_name("tenant_acme")
>>> validate_username("pg_monitor")
Traceback (most recent call last):
...
cloacina.errors.TenantError: username 'pg_monitor' is reserved (postgres and pg_* are PostgreSQL's own roles)
>>> len(generate_password()), generate_password().isalnum()
(32, True)
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from cloacina.errors import TenantError
from cloacina.store.database import MIGRATIONS_DIR

log = logging.getLogger("cloacina.store.tenancy")

MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1
PASSWORD_LENGTH = 32
PASSWORD_ALPHABET = string.ascii_letters + string.digits
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 5432
RESERVED_SCHEMAS = frozenset({"public", "pg_catalog", "information_schema", "pg_temp"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _validate_identifier(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise TenantError(f"{kind} must be a string, got {type(name).__name__}")
    if not 1 <= len(name) <= MAX_IDENTIFIER_LENGTH:
        raise TenantError(f"{kind} {name!r} must be 1-{MAX_IDENTIFIER_LENGTH} characters long")
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        raise TenantError(f"{kind} {name!r} must start with an ASCII letter or '_'")
    if not _IDENTIFIER.fullmatch(name):
        raise TenantError(f"{kind} {name!r} may contain only ASCII letters, digits and '_'")
    return name.lower()


def validate_schema_name(name: object) -> None:
    """``TenantError`` unless ``name`` is a schema name a tenant may have."""
    folded = _validate_identifier("schema name", name)
    if folded in RESERVED_SCHEMAS or folded.startswith("pg_"):
        raise TenantError(f"schema name {name!r} is reserved by PostgreSQL")


def validate_username(name: object) -> None:
    """``TenantError`` unless ``name`` is a role name a tenant may have."""
    folded = _validate_identifier("username", name)
    if folded == "postgres" or folded.startswith("pg_"):
        raise TenantError(f"username {name!r} is reserved (postgres and pg_* are PostgreSQL's own roles)")


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password of ASCII letters and digits, from the ``secrets`` generator."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def identifier(name: str) -> str:
    """``name`` (already validated) as the quoted identifier PostgreSQL would fold it to.

    >>> identifier("Tenant_A")
    '"tenant_a"'
    """
    return '"' + name.lower() + '"'


def password_literal(password: str) -> str:
    """An escape-string literal for ``password``, right whatever ``standard_conforming_strings`` says.

    >>> password_literal("it's a \\\\ secret")
    "E'it''s a \\\\\\\\ secret'"
    """
    if "\x00" in password:
        raise TenantError("a password cannot contain NUL characters")
    return "E'" + password.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class AdminEndpoint:
    """The parts of an administrator's ``postgres://``/``postgresql://`` URL that a tenant's URL keeps.

    >>> e = AdminEndpoint.parse("postgres://admin:pw@db.internal/app?sslmode=require")
    >>> e.for_user("acme", "p@ss")
    'postgres://acme:p%40ss@db.internal:5432/app?sslmode=require'
    """

    scheme: str
    host: str
    port: int
    database: str
    query: str

    @classmethod
    def parse(cls, url: object) -> AdminEndpoint:
        """``TenantError`` unless ``url`` is a PostgreSQL URL naming a database."""
        if not isinstance(url, str) or not url.startswith(("postgres://", "postgresql://")):
            raise TenantError(
                "DatabaseAdmin needs a PostgreSQL URL such as 'postgres://user:pass@host/db' "
                "(SQLite has no schemas or roles)"
            )
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise TenantError(f"invalid database URL: {exc}") from None
        database = unquote(parts.path.lstrip("/"))
        if not database:
            raise TenantError("the database URL must name a database (postgres://host/<database>)")
        return cls(parts.scheme, parts.hostname or DEFAULT_HOST, port, database, parts.query)

    def for_user(self, username: str, password: str) -> str:
        """This endpoint's URL with the given credentials (percent-encoded)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = quote(username, safe="") + (":" + quote(password, safe="") if password else "")
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{userinfo}@{host}:{self.port}/{quote(self.database, safe='')}{query}"


def _cause(exc: BaseException) -> str:
    """The server's own message for a failed statement: never the statement text (it may hold a password)."""
    orig = getattr(exc, "orig", exc)  # the driver's exception; SQLAlchemy's own text would quote the statement
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    if primary:
        return str(primary)
    return str(orig)  # a client-side failure (connecting, a dropped connection): no statement in it


def _run(conn: Connection, statement: str) -> None:
    """Send ``statement`` as it is, inside ``conn``'s transaction. Through the driver's cursor without parameters,
    so nothing in it (a ``%`` or ``:x`` in a password) is taken for a placeholder."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _execute(conn: Connection, statement: str, what: str, *, secret: bool = False) -> None:
    try:
        _run(conn, statement)
    except psycopg.Error as exc:
        if secret:  # the statement holds a password: the error must not chain it into a traceback
            raise TenantError(f"cannot {what}: {_cause(exc)}") from None
        raise TenantError(f"cannot {what}: {_cause(exc)}") from exc


@contextmanager
def _transaction(engine: Engine, what: str) -> Iterator[Connection]:
    """One transaction on ``engine``: committed at the end, rolled back if the block raises."""
    try:
        with engine.begin() as conn:
            yield conn
    except TenantError:
        raise
    except SQLAlchemyError as exc:
        raise TenantError(f"cannot {what}: {_cause(exc)}") from exc


def _migrate(conn: Connection, schema: str) -> None:
    """Run cloacina's migrations on ``conn``, inside the transaction it is in (search_path already set)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    cfg.attributes["schema"] = schema  # the alembic_version table lives in the tenant's schema too
    try:
        command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise TenantError(f"cannot run the migrations in schema {schema!r}: {_cause(exc)}") from exc


def create_tenant(engine: Engine, schema_name: str, username: str, password: str) -> None:
    """Create schema ``schema_name`` and login role ``username`` with ``password``, grant the role the schema
    and migrate it, all in one transaction. The names must have been validated."""
    schema, role = identifier(schema_name), identifier(username)
    grants = [
        f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
        f"GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        # Tables the migrations (run below by this same administrator) create are granted through these.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT ALL ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT ALL ON SEQUENCES TO {role}",
    ]
    with _transaction(engine, f"create tenant {username!r}") as conn:
        _execute(conn, f"CREATE SCHEMA IF NOT EXISTS {schema}", f"create schema {schema_name!r}")
        _execute(
            conn,
            f"CREATE USER {role} WITH PASSWORD {password_literal(password)}",
            f"create user {username!r}",
            secret=True,
        )
        for grant in grants:
            _execute(conn, grant, f"grant schema {schema_name!r} to {username!r}")
        # SET LOCAL: the search path dies with this transaction.
        _execute(conn, f"SET LOCAL search_path TO {schema}, public", "set the search path")
        _migrate(conn, schema_name.lower())
    log.info("tenant %s created in schema %s", username.lower(), schema_name.lower())


def remove_tenant(engine: Engine, schema_name: str, username: str) -> None:
    """Revoke ``username``'s rights on ``schema_name`` (failures ignored), then drop the schema with everything in
    it and the role, in one transaction. The names must have been validated."""
    schema, role = identifier(schema_name), identifier(username)
    revokes = [
        f"REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON SCHEMA {schema} FROM {role}",
        # Default privileges name the role too: left behind, they would keep DROP USER from succeeding.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON SEQUENCES FROM {role}",
    ]
    with _transaction(engine, f"remove tenant {username!r}") as conn:
        for revoke in revokes:
            try:
                with conn.begin_nested():  # a savepoint: a failed REVOKE must not abort the transaction
                    _run(conn, revoke)
            except psycopg.Error as exc:  # the schema or the role is already gone
                log.debug("ignored while removing tenant %s: %s", username.lower(), _cause(exc))
        # The schema first: objects the role created in it would otherwise keep the role from being dropped.
        _execute(conn, f"DROP SCHEMA IF EXISTS {schema} CASCADE", f"drop schema {schema_name!r}")
        _execute(conn, f"DROP USER IF EXISTS {role}", f"drop user {username!r}")
    log.info("tenant %s removed with schema %s", username.lower(), schema_name.lower())
