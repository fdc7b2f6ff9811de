"""``WebSettings``: the web process's configuration, read from ``CLOACINA_WEB_*`` (and the deployment's
``CLOACINA_DATABASE_URL`` / ``CLOACINA_BROKER_URL``) or passed by ``cloacina web``.

Credentials are :class:`~pydantic.SecretStr`: their ``repr`` and ``str`` are masked, so a settings object can be
logged without leaking them.

>>> s = WebSettings(auth="admin:s3cret", database_url="sqlite://x.db")
>>> s.auth
SecretStr('**********')
>>> s.basic_credentials()
('admin', 's3cret')
>>> s.has_credentials
True
>>> try:
...     WebSettings(auth="no-colon-secret")
... except ValueError as exc:
...     print(exc.errors()[0]["msg"], "| input shown:", "no-colon-secret" in str(exc))
Value error, must be USER:PASSWORD with a non-empty user and password | input shown: False
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloacina.deployment.settings import make_url_safe
from cloacina.errors import StoreError
from cloacina.store.urls import parse_database_url

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # a run's context arrives in the body; 1 MiB is far above any sane one


def _user_password(value: SecretStr | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, _, password = value.get_secret_value().partition(":")
    return user, password


def is_loopback(host: str) -> bool:
    """``True`` for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``).

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "0.0.0.0", "::", "10.0.0.1")]
    [True, True, True, True, False, False, False]
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class WebSettings(BaseSettings):
    """Configuration of ``cloacina web``; each field reads ``CLOACINA_WEB_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="CLOACINA_WEB_",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # the input may be a credential
    )

    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs a credential.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind (0: any free port).")
    auth: SecretStr | None = Field(None, description="USER:PASSWORD for HTTP basic auth (read and write).")
    token: SecretStr | None = Field(None, description="Bearer token (read and write).")
    readonly_auth: SecretStr | None = Field(None, description="USER:PASSWORD of a read-only user (GET only).")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, le=64 * 1024 * 1024, description="Larger request bodies get 413."
    )
    docs: bool = Field(False, description="Serve the interactive API docs at /api/v1/docs (behind auth).")
    flower_url: str | None = Field(None, description="Flower's address, linked from the console's workers page.")
    database_url: str = Field(
        "sqlite://cloacina.db",
        validation_alias="CLOACINA_DATABASE_URL",
        description="The deployment's database (CLOACINA_DATABASE_URL).",
    )
    broker_url: str | None = Field(
        None,
        validation_alias="CLOACINA_BROKER_URL",
        description="Celery broker (CLOACINA_BROKER_URL); starting runs needs it.",
    )

    log_format: Literal["text", "json"] = Field(
        "text", validation_alias="CLOACINA_LOG_FORMAT", description="Log line format (CLOACINA_LOG_FORMAT)."
    )
    log_level: str = Field(
        "INFO",
        validation_alias="CLOACINA_LOG_LEVEL",
        description="Root log level (CLOACINA_LOG_LEVEL); DEBUG adds a line per request.",
    )

    @field_validator("auth", "readonly_auth")
    @classmethod
    def _check_user_password(cls, value: SecretStr | None) -> SecretStr | None:
        pair = _user_password(value)
        if pair is not None and not (pair[0] and pair[1]):
            raise ValueError("must be USER:PASSWORD with a non-empty user and password")
        return value

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        try:
            parse_database_url(value)  # the deployment's own check: a clear message (password masked)
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis:// URL, got {make_url_safe(value)}")
        return value or None

    @property
    def has_credentials(self) -> bool:
        return any(v is not None for v in (self.auth, self.token, self.readonly_auth))

    def basic_credentials(self) -> tuple[str, str] | None:
        return _user_password(self.auth)

    def readonly_credentials(self) -> tuple[str, str] | None:
        return _user_password(self.readonly_auth)

    def check_bind(self) -> None:
        """``ValueError`` when the host is not loopback and no credential is configured."""
        if not self.has_credentials and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without authentication: set CLOACINA_WEB_AUTH=user:password, "
                "CLOACINA_WEB_TOKEN or CLOACINA_WEB_READONLY_AUTH, or bind a loopback address (--host 127.0.0.1)"
            )
