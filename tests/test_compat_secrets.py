"""CLOACA_API §2 secrets: ``Context.secret``/``secret_field`` resolved by the secrets backend of the running task.

No backend (a Context built in user code, or secrets turned off) or a backend failure: ``RuntimeError``; unknown
secret or field: ``KeyError``; not granted: ``PermissionError``. Values never enter context data, the stored run
or logs. The default backend reads ``CLOACINA_SECRET_<name>`` (a JSON object of string fields); grants are the
names a workflow declares with ``@workflow_secrets`` (all, when it declares none).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

import cloacina as cloaca
from cloacina import Context
from tests.conftest import PG_URL, Backend

pytestmark = pytest.mark.timeout(90)

PASSWORD = "pw-7f3c91-never-stored"
TOKEN = "tok-2b8e44-never-stored"
DB_PROD = {"host": "db.internal", "password": PASSWORD}


@pytest.fixture(autouse=True)
def restore_backend() -> Iterator[None]:
    saved = cloaca.get_secrets_backend()
    yield
    cloaca.set_secrets_backend(saved)


@pytest.fixture
def env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOACINA_SECRET_db_prod", json.dumps(DB_PROD))
    monkeypatch.setenv("CLOACINA_SECRET_other", json.dumps({"token": TOKEN}))
    monkeypatch.delenv("CLOACINA_SECRET_missing_one", raising=False)


def _outcome(call: Callable[[], object]) -> str | bool:
    """The call's result if it is a bool, else ``"ok"``; or the exception's type name. Never a secret value:
    outcomes are stored in the run's context."""
    try:
        result = call()
    except Exception as exc:
        return type(exc).__name__
    return result if isinstance(result, bool) else "ok"


def _probe(context: Any) -> Any:
    def copy_is_fresh() -> bool:
        context.secret("db_prod").clear()
        return bool(context.secret("db_prod") == DB_PROD)

    context.set(
        "outcomes",
        {
            "whole": _outcome(lambda: context.secret("db_prod") == DB_PROD),
            "whole_by_keyword": _outcome(lambda: context.secret(name="db_prod")),
            "field": _outcome(lambda: context.secret_field("db_prod", "password") == PASSWORD),
            "field_by_keyword": _outcome(lambda: context.secret_field(name="db_prod", field="host") == "db.internal"),
            "is_str_dict": _outcome(
                lambda: (
                    type(context.secret("db_prod")) is dict
                    and all(isinstance(k, str) and isinstance(v, str) for k, v in context.secret("db_prod").items())
                )
            ),
            "copy": _outcome(copy_is_fresh),
            "other": _outcome(lambda: context.secret("other")),
            "unknown_secret": _outcome(lambda: context.secret("missing_one")),
            "unknown_secret_field": _outcome(lambda: context.secret_field("missing_one", "x")),
            "unknown_field": _outcome(lambda: context.secret_field("db_prod", "nope")),
            "user_built_context": _outcome(lambda: Context({"a": 1}).secret("db_prod")),
        },
    )
    return context


def _probe_workflow(name: str, *declared: str) -> None:
    with cloaca.WorkflowBuilder(name):
        probe = cloaca.task(id="probe")(_probe_copy())
        if declared:
            cloaca.workflow_secrets(*declared)(probe)


def _probe_copy() -> Callable[[Any], Any]:
    def probe(context: Any) -> Any:  # a function of its own per workflow: declarations are per function
        return _probe(context)

    return probe


def _outcomes(runner: Any, workflow: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    result = runner.execute(workflow, Context(dict(context or {})))
    assert result.status == "Completed", result.error_message
    outcomes: dict[str, Any] = result.final_context.get("outcomes")
    return outcomes


# -- user code --------------------------------------------------------------------------------------------------
def test_context_built_in_user_code_has_no_backend(env_secrets: None) -> None:
    ctx = Context({"db_prod": 1})
    with pytest.raises(RuntimeError):
        ctx.secret("db_prod")
    with pytest.raises(RuntimeError):
        ctx.secret_field("db_prod", "password")
    with pytest.raises(RuntimeError):
        Context.from_json("{}").secret("missing_one")


def test_secret_arguments_must_be_str() -> None:
    with pytest.raises(TypeError):
        Context().secret(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Context().secret_field("db_prod", None)  # type: ignore[arg-type]


# -- a real run on DefaultRunner(":memory:") ---------------------------------------------------------------------
def test_running_task_reads_granted_secrets_and_gets_each_documented_error(env_secrets: None) -> None:
    _probe_workflow("declares_db", "db_prod")
    _probe_workflow("declares_nothing")
    with cloaca.DefaultRunner(":memory:") as runner:
        declared = _outcomes(runner, "declares_db")
        undeclared = _outcomes(runner, "declares_nothing")
    assert declared == {
        "whole": True,
        "whole_by_keyword": "ok",
        "field": True,
        "field_by_keyword": True,
        "is_str_dict": True,
        "copy": True,
        "other": "PermissionError",  # the env has it, but the workflow did not declare it
        "unknown_secret": "PermissionError",  # not granted is checked before the lookup
        "unknown_secret_field": "PermissionError",
        "unknown_field": "KeyError",
        "user_built_context": "RuntimeError",
    }
    assert undeclared["other"] == "ok"  # no declaration: every secret of the backend is granted
    assert undeclared["unknown_secret"] == "KeyError"
    assert undeclared["unknown_secret_field"] == "KeyError"
    assert undeclared["unknown_field"] == "KeyError"
    assert undeclared["user_built_context"] == "RuntimeError"


def test_backend_failure_and_no_backend_are_runtime_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOACINA_SECRET_db_prod", "not json " + PASSWORD)
    monkeypatch.setenv("CLOACINA_SECRET_other", json.dumps({"token": 42}))
    _probe_workflow("broken_backend")
    with cloaca.DefaultRunner(":memory:") as runner:
        broken = _outcomes(runner, "broken_backend")
        cloaca.set_secrets_backend(None)
        off = _outcomes(runner, "broken_backend")
    assert broken["whole"] == broken["field"] == broken["other"] == "RuntimeError"
    assert broken["unknown_secret"] == "KeyError"
    assert set(off.values()) == {"RuntimeError"}


def test_uncaught_secret_errors_fail_the_task_without_the_value(env_secrets: None) -> None:
    with cloaca.WorkflowBuilder("uncaught"):

        @cloaca.workflow_secrets("db_prod", "missing_one")
        @cloaca.task(id="missing", retry_attempts=1)
        def missing(context):
            context.secret("missing_one")
            return context

        @cloaca.task(id="denied", retry_attempts=1)
        def denied(context):
            context.secret_field("other", "token")
            return context

    with cloaca.DefaultRunner(":memory:") as runner:
        result = runner.execute("uncaught", Context())
    assert result.status == "Failed"
    message = result.error_message or ""
    assert "KeyError" in message or "PermissionError" in message
    assert PASSWORD not in message and TOKEN not in message


def test_binding_names_resolve_to_the_bound_secret(env_secrets: None) -> None:
    with cloaca.WorkflowBuilder("bindings"):

        @cloaca.workflow_secrets("creds", "alias")
        @cloaca.task(id="read")
        def read(context):
            context.set("creds_ok", context.secret("creds") == DB_PROD)
            context.set("alias_ok", context.secret_field("alias", "host") == "db.internal")
            context.set("concrete", _outcome(lambda: context.secret("db_prod")))
            return context

    bound = {"creds": {"$secret": "db_prod"}, "__cloacina_secret_refs__": {"alias": "db_prod"}}
    with cloaca.DefaultRunner(":memory:") as runner:
        result = runner.execute("bindings", Context(bound))
    assert result.status == "Completed", result.error_message
    final = result.final_context
    assert final.get("creds_ok") is True and final.get("alias_ok") is True
    assert final.get("concrete") == "PermissionError"  # only the binding names were granted
    assert final.get("creds") == {"$secret": "db_prod"}  # a reference (a name), never the value


# -- pluggable backends ----------------------------------------------------------------------------------------
class VaultLike:
    """A backend of the test's own: a dict, a denial and a failure."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_secret(self, name: str) -> Mapping[str, str] | None:
        self.calls.append(name)
        if name == "other":
            raise PermissionError("policy denies other")
        if name == "missing_one":
            return None
        if name == "db_prod":
            return dict(DB_PROD)
        raise ConnectionError("vault unreachable")


class Malformed:
    def get_secret(self, name: str) -> Mapping[str, str] | None:
        return {"port": 5432}  # type: ignore[dict-item]


def test_a_registered_backend_is_used(env_secrets: None) -> None:
    backend = VaultLike()
    assert isinstance(backend, cloaca.SecretsBackend)
    cloaca.set_secrets_backend(backend)
    assert cloaca.get_secrets_backend() is backend
    _probe_workflow("custom_backend")
    with cloaca.DefaultRunner(":memory:") as runner:
        outcomes = _outcomes(runner, "custom_backend")
        cloaca.set_secrets_backend(Malformed())
        malformed = _outcomes(runner, "custom_backend")
    assert outcomes["whole"] is True and outcomes["field"] is True
    assert outcomes["other"] == "PermissionError"  # a backend may deny
    assert outcomes["unknown_secret"] == "KeyError"  # None means unknown
    assert "db_prod" in backend.calls and "missing_one" in backend.calls
    assert malformed["whole"] == "RuntimeError"


def test_backend_exceptions_other_than_permission_are_runtime_errors(env_secrets: None) -> None:
    cloaca.set_secrets_backend(VaultLike())
    with cloaca.WorkflowBuilder("unreachable"):

        @cloaca.task(id="read")
        def read(context):
            context.set("outcome", _outcome(lambda: context.secret("elsewhere")))
            return context

    with cloaca.DefaultRunner(":memory:") as runner:
        result = runner.execute("unreachable", Context())
    assert result.final_context.get("outcome") == "RuntimeError"


def test_set_secrets_backend_rejects_non_backends() -> None:
    with pytest.raises(TypeError):
        cloaca.set_secrets_backend(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cloaca.set_secrets_backend({"db_prod": DB_PROD})  # type: ignore[arg-type]


def test_env_backend_naming_and_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = cloaca.EnvSecretsBackend()
    monkeypatch.setenv("CLOACINA_SECRET_Api_Key", json.dumps({"key": "one"}))
    assert backend.get_secret("Api_Key") == {"key": "one"}
    assert backend.get_secret("API_KEY") is None  # name verbatim
    monkeypatch.setenv("CLOACINA_SECRET_Api_Key", json.dumps({"key": "two"}))
    assert backend.get_secret("Api_Key") == {"key": "two"}  # read on every call
    monkeypatch.setenv("CLOACINA_SECRET_Api_Key", "{broken " + PASSWORD)
    with pytest.raises(ValueError) as info:
        backend.get_secret("Api_Key")
    assert PASSWORD not in str(info.value)
    for bad in ('["a"]', '{"n": 1}', '"s"'):
        monkeypatch.setenv("CLOACINA_SECRET_Api_Key", bad)
        with pytest.raises(ValueError):
            backend.get_secret("Api_Key")
    assert cloaca.EnvSecretsBackend({"X_db": '{"a": "b"}'}, prefix="X_").get_secret("db") == {"a": "b"}


# -- values never enter context data, the stored run or logs -------------------------------------------------------
def _stored_text(backend: Backend) -> str:
    """Every row of every table of the run's database, as text."""
    if backend.schema is not None:
        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    else:
        engine = create_engine(backend.url)
    rows: list[str] = []
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names(schema=backend.schema)
            assert tables, "no tables found: the dump would prove nothing"
            for table in tables:
                qualified = f'"{backend.schema}"."{table}"' if backend.schema else f'"{table}"'
                rows.extend(repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {qualified}")))
    finally:
        engine.dispose()
    return "\n".join(rows)


def test_values_never_reach_stored_context_or_logs(
    env_secrets: None,
    make_runner: Callable[..., Any],
    backend: Backend,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    attempts: list[int] = []

    with cloaca.WorkflowBuilder("leak_check"):

        @cloaca.task(id="use", on_success=lambda task_id, ctx: print("on_success", repr(ctx), ctx.to_dict()))
        def use(context):
            db = context.secret("db_prod")
            context.set("password_length", len(context.secret_field("db_prod", "password")))
            context.set("fields", sorted(db))
            return context

        @cloaca.task(
            id="flaky",
            dependencies=["use"],
            retry_attempts=2,
            retry_delay_ms=1,
            on_failure=lambda task_id, error, ctx: print("on_failure", error, repr(ctx)),
        )
        def flaky(context):
            context.secret("other")
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("first attempt fails after reading a secret")
            return None

    runner = make_runner()
    result = runner.execute("leak_check", Context({"input": "x"}))
    assert result.status == "Completed", result.error_message
    assert result.final_context.get("password_length") == len(PASSWORD)
    assert result.final_context.get("fields") == ["host", "password"]
    assert len(attempts) == 2

    seen = [result.final_context.to_json(), repr(result.final_context)]
    seen += [record.getMessage() for record in caplog.records]
    seen += [repr(vars(record)) for record in caplog.records]
    captured = capsys.readouterr()
    seen += [captured.out, captured.err]
    assert "on_success" in captured.out and "on_failure" in captured.out  # the callbacks did print their contexts
    if backend.name != "sqlite-memory":
        stored = _stored_text(backend)
        assert "password_length" in stored  # the dump does hold the run's contexts
        seen.append(stored)
    for text_seen in seen:
        assert PASSWORD not in text_seen and TOKEN not in text_seen
