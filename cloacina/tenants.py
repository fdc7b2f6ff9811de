"""Multi-tenancy on PostgreSQL (cloaca's ``DatabaseAdmin``, ``TenantConfig``, ``TenantCredentials``).

Each tenant gets its own schema and its own login role, which may use that schema and nothing else; a tenant
then runs its workflows with ``DefaultRunner.with_schema(credentials.connection_string, credentials.schema_name)``::

    admin = cloaca.DatabaseAdmin("postgresql://postgres:secret@db:5432/cloacina")
    credentials = admin.create_tenant(cloaca.TenantConfig("acme", "acme_user", None))   # password generated
    runner = cloaca.DefaultRunner.with_schema(credentials.connection_string, credentials.schema_name)
    ...
    admin.remove_tenant("acme", "acme_user")                                            # drops all its data

Every failure is a ``TenantError``, which is a ``RuntimeError`` as in cloaca. Passwords never appear in a repr,
a log line or an error message.

>>> TenantConfig("acme", "acme_user", "s3cret")
TenantConfig(schema_name='acme', username='acme_user', password='***')
>>> TenantConfig("acme", "acme_user", None).password
''
"""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from cloacina.errors import TenantError
from cloacina.store import tenancy
from cloacina.store.database import CONNECT_TIMEOUT_S
from cloacina.store.urls import parse_database_url

__all__ = ["DatabaseAdmin", "TenantConfig", "TenantCredentials"]


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


class TenantConfig:
    """What to create: a schema, a username and a password (``None`` or ``""``: generate one).

    ``password`` may be left out (cloaca requires it but accepts ``None``).
    """

    __slots__ = ("_password", "_schema_name", "_username")

    def __init__(self, schema_name: str, username: str, password: str | None = None) -> None:
        self._schema_name = _require_str("schema_name", schema_name)
        self._username = _require_str("username", username)
        self._password = "" if password is None else _require_str("password", password)

    @property
    def schema_name(self) -> str:
        return self._schema_name

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        """The password given, or ``""`` (one will be generated)."""
        return self._password

    def __repr__(self) -> str:
        return f"TenantConfig(schema_name='{self._schema_name}', username='{self._username}', password='***')"


class TenantCredentials:
    """What a tenant needs to connect: returned by ``DatabaseAdmin.create_tenant`` (cloaca has no constructor)."""

    __slots__ = ("_connection_string", "_password", "_schema_name", "_username")

    def __init__(self, *, username: str, password: str, schema_name: str, connection_string: str) -> None:
        self._username = username
        self._password = password
        self._schema_name = schema_name
        self._connection_string = connection_string

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        """The effective password: the one configured, or the generated one."""
        return self._password

    @property
    def schema_name(self) -> str:
        return self._schema_name

    @property
    def connection_string(self) -> str:
        """The administrator's URL (scheme, host, port, database) with the tenant's username and password."""
        return self._connection_string

    def __repr__(self) -> str:
        return (
            f"TenantCredentials(username='{self._username}', schema_name='{self._schema_name}', "
            "password='***', connection_string='***')"
        )


class DatabaseAdmin:
    """Creates and removes tenants, connecting with an administrator's PostgreSQL URL.

    The URL must be ``postgres://`` or ``postgresql://`` and name a database (else ``TenantError``, a
    ``RuntimeError``). Nothing connects until a tenant is created or removed; no connection is kept between calls.
    """

    def __init__(self, database_url: str) -> None:
        _require_str("database_url", database_url)
        self._endpoint = tenancy.AdminEndpoint.parse(database_url)
        self._engine = create_engine(
            parse_database_url(database_url).sqlalchemy_url,
            poolclass=NullPool,  # administration is rare: hold no connection (and no search path) between calls
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )

    def create_tenant(self, config: TenantConfig) -> TenantCredentials:
        """Create the tenant's schema and role, grant the role the schema and migrate it, in one transaction
        (nothing is left behind if any step fails). ``TenantError`` (a ``RuntimeError``) on failure."""
        if not isinstance(config, TenantConfig):
            raise TypeError(f"config must be a TenantConfig, got {type(config).__name__}")
        try:
            tenancy.validate_schema_name(config.schema_name)
            tenancy.validate_username(config.username)
            password = config.password or tenancy.generate_password()
            tenancy.create_tenant(self._engine, config.schema_name, config.username, password)
        except TenantError as exc:
            raise TenantError(f"Failed to create tenant: {exc}") from exc.__cause__
        return TenantCredentials(
            username=config.username,
            password=password,
            schema_name=config.schema_name,
            connection_string=self._endpoint.for_user(config.username, password),
        )

    def remove_tenant(self, schema_name: str, username: str) -> None:
        """Drop the tenant's role and its schema with everything in it. ``TenantError`` (a ``RuntimeError``) if
        a name is invalid or the drop fails; revoking rights that are already gone is not a failure."""
        _require_str("schema_name", schema_name)
        _require_str("username", username)
        try:
            tenancy.validate_schema_name(schema_name)
            tenancy.validate_username(username)
            tenancy.remove_tenant(self._engine, schema_name, username)
        except TenantError as exc:
            raise TenantError(f"Failed to remove tenant: {exc}") from exc.__cause__

    def __repr__(self) -> str:
        return "DatabaseAdmin()"
