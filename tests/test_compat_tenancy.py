"""Contract §12: multi-tenancy on PostgreSQL (``DatabaseAdmin``, ``TenantConfig``, ``TenantCredentials``).

The local server trusts every local connection, so passwords are not checked at login: isolation is shown with
privileges (a tenant's role is refused another tenant's tables), and a role's password is checked against the
SCRAM verifier the server stored for it. Roles are cluster-wide: every test uses fresh names and drops what it
made, even when it fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import traceback
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

import cloacina as cloaca
from tests.conftest import PG_URL, require_postgres

pytestmark = pytest.mark.postgres

Names = Callable[[str], str]


@pytest.fixture
def names() -> Iterator[Names]:
    """Fresh lower-case names; schemas and roles of those names are dropped after the test."""
    require_postgres()
    made: list[str] = []

    def fresh(prefix: str) -> str:
        made.append(f"{prefix}_{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield fresh
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in made:  # schemas first: their default privileges name the roles
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        for name in made:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def admin() -> cloaca.DatabaseAdmin:
    require_postgres()
    return cloaca.DatabaseAdmin(PG_URL)


def schema_exists(name: str) -> bool:
    with psycopg.connect(PG_URL) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone() is not None


def role_exists(name: str) -> bool:
    with psycopg.connect(PG_URL) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def password_matches(role: str, password: str) -> bool:
    """Whether the server's stored SCRAM-SHA-256 verifier for ``role`` was made from ``password`` (ASCII)."""
    with psycopg.connect(PG_URL) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
    assert row is not None and row[0] is not None, f"role {role!r} has no password"
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", row[0])
    assert match, "the server stores SCRAM-SHA-256 verifiers (password_encryption)"
    iterations, salt, stored_key, server_key = match.groups()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key and (
        base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode() == server_key
    )


# -- TenantConfig, TenantCredentials, DatabaseAdmin: no server needed ---------------------------------------------
def test_tenant_config_properties_and_masked_repr() -> None:
    config = cloaca.TenantConfig(schema_name="acme", username="acme_user", password="s3cret")
    assert (config.schema_name, config.username, config.password) == ("acme", "acme_user", "s3cret")
    assert repr(config) == "TenantConfig(schema_name='acme', username='acme_user', password='***')"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)


@pytest.mark.parametrize("password", [None, ""])
def test_tenant_config_without_password_reads_as_empty_string(password: str | None) -> None:
    assert cloaca.TenantConfig("acme", "acme_user", password).password == ""
    assert cloaca.TenantConfig("acme", "acme_user").password == ""  # our default for cloaca's req-None password


def test_tenant_config_is_read_only() -> None:
    config = cloaca.TenantConfig("acme", "acme_user", None)
    with pytest.raises(AttributeError):
        config.password = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "args",
    [(None, "u", None), ("s", 7, None), ("s", "u", b"pw"), (["s"], "u", "pw")],
    ids=["schema", "user", "pw", "list"],
)
def test_tenant_config_wrong_types_are_type_errors(args: tuple[object, object, object]) -> None:
    with pytest.raises(TypeError):
        cloaca.TenantConfig(*args)  # type: ignore[arg-type]


def test_database_admin_repr() -> None:
    assert repr(cloaca.DatabaseAdmin("postgres://postgres:secret@localhost:5432/test")) == "DatabaseAdmin()"


@pytest.mark.parametrize(
    "url",
    [
        ":memory:",
        "sqlite:///tmp/tenants.db",
        "tenants.db",
        "mysql://root@localhost/test",
        "postgresql+psycopg://postgres@localhost/test",
        "postgres://postgres@localhost",
        "postgresql://postgres@localhost:5432/",
        "postgres://postgres@localhost:notaport/test",
        "",
    ],
)
def test_database_admin_needs_a_postgres_url_naming_a_database(url: str) -> None:
    with pytest.raises(RuntimeError):
        cloaca.DatabaseAdmin(url)


def test_database_admin_url_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        cloaca.DatabaseAdmin(None)  # type: ignore[arg-type]


def test_failures_are_tenant_errors_and_runtime_errors() -> None:
    with pytest.raises(cloaca.TenantError) as info:
        cloaca.DatabaseAdmin("sqlite:///tmp/tenants.db")
    assert isinstance(info.value, RuntimeError)


def test_create_tenant_takes_a_tenant_config() -> None:
    with pytest.raises(TypeError):
        cloaca.DatabaseAdmin(PG_URL).create_tenant({"schema_name": "acme", "username": "acme_user"})  # type: ignore[arg-type]


def test_unreachable_server_is_a_runtime_error() -> None:
    admin = cloaca.DatabaseAdmin("postgresql://postgres@127.0.0.1:1/test")  # nothing listens on port 1
    with pytest.raises(RuntimeError):
        admin.create_tenant(cloaca.TenantConfig("acme", "acme_user", None))
    with pytest.raises(RuntimeError):
        admin.remove_tenant("acme", "acme_user")


# -- validation --------------------------------------------------------------------------------------------------
BAD_SCHEMAS = [
    "",
    "s" * 64,
    "1tenant",
    "my-schema",
    "my schema",
    "tenant;drop",
    'quo"te',
    "ténant",
    "public",
    "PUBLIC",
    "pg_catalog",
    "information_schema",
    "Information_Schema",
    "pg_temp",
]
BAD_USERNAMES = [
    "",
    "u" * 64,
    "9user",
    "user-x",
    "user x",
    "x'; DROP ROLE postgres; --",
    "üser",
    "postgres",
    "Postgres",
]
BAD_USERNAMES += ["pg_monitor", "PG_READ_ALL_DATA", "pg_signal_backend", "pg_database_owner"]


@pytest.mark.parametrize("schema_name", BAD_SCHEMAS)
def test_create_refuses_bad_schema_names(admin: cloaca.DatabaseAdmin, names: Names, schema_name: str) -> None:
    username = names("h5u")
    with pytest.raises(RuntimeError):
        admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    assert not role_exists(username)


@pytest.mark.parametrize("username", BAD_USERNAMES)
def test_create_refuses_bad_usernames(admin: cloaca.DatabaseAdmin, names: Names, username: str) -> None:
    schema_name = names("h5s")
    with pytest.raises(RuntimeError):
        admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    assert not schema_exists(schema_name)


@pytest.mark.parametrize("schema_name", BAD_SCHEMAS)
def test_remove_refuses_bad_schema_names(admin: cloaca.DatabaseAdmin, schema_name: str) -> None:
    with pytest.raises(RuntimeError):
        admin.remove_tenant(schema_name, "some_user")
    assert schema_exists("public") and schema_exists("information_schema")


@pytest.mark.parametrize("username", BAD_USERNAMES)
def test_remove_refuses_bad_usernames(admin: cloaca.DatabaseAdmin, username: str) -> None:
    with pytest.raises(RuntimeError):
        admin.remove_tenant("some_schema", username)
    assert role_exists("postgres")


def test_remove_tenant_names_must_be_strings(admin: cloaca.DatabaseAdmin) -> None:
    with pytest.raises(TypeError):
        admin.remove_tenant(None, "some_user")  # type: ignore[arg-type]


def test_longest_names_leading_underscores_and_upper_case_are_valid(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    schema_name = names("_" + "s" * 49)  # 63 characters with the suffix
    username = names("_" + "u" * 49)
    assert len(schema_name) == len(username) == 63
    creds = admin.create_tenant(cloaca.TenantConfig(schema_name.upper(), username.upper(), None))
    assert (creds.schema_name, creds.username) == (schema_name.upper(), username.upper())  # as given
    assert schema_exists(schema_name) and role_exists(username)  # folded as PostgreSQL folds unquoted names
    admin.remove_tenant(schema_name.upper(), username)
    assert not schema_exists(schema_name) and not role_exists(username)


# -- create_tenant -------------------------------------------------------------------------------------------------
def test_generated_password_is_32_letters_and_digits_and_is_the_roles_password(
    admin: cloaca.DatabaseAdmin, names: Names
) -> None:
    first = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), None))
    second = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), ""))
    for creds in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9]{32}", creds.password)
        assert password_matches(creds.username, creds.password)
    assert first.password != second.password


def test_given_password_is_kept_and_quoted_safely(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    password = "it's a \\ \"p@ss:w/rd\"?%#'';--"
    creds = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), password))
    assert creds.password == password
    assert password_matches(creds.username, password)
    assert not password_matches(creds.username, password + "x")
    url = urlsplit(creds.connection_string)
    assert unquote(url.password or "") == password and unquote(url.username or "") == creds.username


def test_credentials_carry_the_admin_endpoint_with_the_tenants_login(names: Names) -> None:
    require_postgres()
    admin = cloaca.DatabaseAdmin("postgres://postgres@localhost/test")  # no port: 5432, as cloaca writes it
    schema_name, username = names("h5s"), names("h5u")
    creds = admin.create_tenant(cloaca.TenantConfig(schema_name, username, "pw1"))
    assert (creds.username, creds.password, creds.schema_name) == (username, "pw1", schema_name)
    assert creds.connection_string == f"postgres://{username}:pw1@localhost:5432/test"
    assert repr(creds) == (
        f"TenantCredentials(username='{username}', schema_name='{schema_name}', password='***', "
        "connection_string='***')"
    )
    with psycopg.connect(creds.connection_string) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (username, "test")


def test_tenant_runs_a_workflow_with_its_own_credentials(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    creds = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), None))

    with cloaca.WorkflowBuilder("tenant_wf"):

        @cloaca.task(id="stamp")
        def stamp(context: cloaca.Context) -> cloaca.Context:
            context.set("stamped", True)
            return context

    with cloaca.DefaultRunner.with_schema(creds.connection_string, creds.schema_name) as runner:
        with runner.db.engine.connect() as conn:  # the runner really is the tenant, not a superuser
            assert conn.exec_driver_sql("SELECT current_user").scalar() == creds.username
        result = runner.execute("tenant_wf", cloaca.Context({"n": 1}))
    assert result.status == "Completed", result.error_message
    assert result.final_context.get("stamped") is True
    with psycopg.connect(PG_URL) as admin_conn:
        rows = admin_conn.execute(f'SELECT workflow_name FROM "{creds.schema_name}".workflow_runs').fetchall()
        is_super = admin_conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (creds.username,)).fetchone()
    assert rows == [("tenant_wf",)]
    assert is_super == (False,)


def test_tenants_cannot_read_each_others_tables(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    a = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), None))
    b = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), None))
    with psycopg.connect(a.connection_string, autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{a.schema_name}".workflow_runs').fetchone() == (0,)
        for statement in (
            f'SELECT * FROM "{b.schema_name}".workflow_runs',
            f'SELECT * FROM "{b.schema_name}".task_runs',
            f'DELETE FROM "{b.schema_name}".cron_schedules',
            f'CREATE TABLE "{b.schema_name}".intruder (x int)',
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_existing_role_fails_and_leaves_nothing_behind(
    admin: cloaca.DatabaseAdmin, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    schema_name, username = names("h5s"), names("h5u")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{username}"')
    secret = "never-log-me-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError) as info:
        admin.create_tenant(cloaca.TenantConfig(schema_name, username, secret))
    assert not schema_exists(schema_name)  # the CREATE SCHEMA before it was rolled back
    assert secret not in "".join(traceback.format_exception(info.value))
    assert secret not in caplog.text


def test_a_failing_migration_rolls_back_the_role(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    schema_name, username = names("h5s"), names("h5u")
    with psycopg.connect(PG_URL, autocommit=True) as conn:  # a table in the way of the first migration
        conn.execute(f'CREATE SCHEMA "{schema_name}"')
        conn.execute(f'CREATE TABLE "{schema_name}".cron_schedules (x int)')
    with pytest.raises(RuntimeError):
        admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    assert not role_exists(username)


def test_same_username_twice_fails(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    username = names("h5u")
    admin.create_tenant(cloaca.TenantConfig(names("h5s"), username, None))
    second_schema = names("h5s")
    with pytest.raises(RuntimeError):
        admin.create_tenant(cloaca.TenantConfig(second_schema, username, None))
    assert not schema_exists(second_schema)


# -- remove_tenant -------------------------------------------------------------------------------------------------
def test_remove_tenant_drops_role_and_schema_with_its_data(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    creds = admin.create_tenant(cloaca.TenantConfig(names("h5s"), names("h5u"), None))
    with psycopg.connect(creds.connection_string, autocommit=True) as conn:  # something the tenant owns
        conn.execute(f'CREATE TABLE "{creds.schema_name}".own_table (x int)')
    assert schema_exists(creds.schema_name) and role_exists(creds.username)
    admin.remove_tenant(creds.schema_name, creds.username)
    assert not schema_exists(creds.schema_name)
    assert not role_exists(creds.username)


def test_remove_tenant_of_a_missing_tenant_succeeds(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    schema_name, username = names("h5s"), names("h5u")
    admin.remove_tenant(schema_name, username)  # revokes fail (nothing there) and are ignored
    creds = admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    admin.remove_tenant(creds.schema_name, creds.username)
    admin.remove_tenant(creds.schema_name, creds.username)
    assert not schema_exists(schema_name) and not role_exists(username)


def test_a_removed_tenant_can_be_created_again(admin: cloaca.DatabaseAdmin, names: Names) -> None:
    schema_name, username = names("h5s"), names("h5u")
    admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    admin.remove_tenant(schema_name, username)
    creds = admin.create_tenant(cloaca.TenantConfig(schema_name, username, None))
    with psycopg.connect(creds.connection_string) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema_name}".workflow_runs').fetchone() == (0,)
