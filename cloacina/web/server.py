"""Serving the web app with uvicorn: the bind rule, the start-up log lines, graceful shutdown.

Without any credential (``CLOACINA_WEB_AUTH``, ``CLOACINA_WEB_TOKEN``, ``CLOACINA_WEB_READONLY_AUTH``) only a
loopback address may be bound (:meth:`WebSettings.check_bind`), and the log says the process serves without
auth. Credentials are never logged; the database URL is logged with its password masked.
"""

from __future__ import annotations

import logging

import uvicorn

from cloacina.deployment.settings import make_url_safe
from cloacina.web.app import create_app
from cloacina.web.settings import WebSettings

log = logging.getLogger("cloacina.web")
GRACEFUL_SHUTDOWN_S = 5  # open event streams of the console would otherwise hold shutdown up


def describe_auth(settings: WebSettings) -> str:
    """Which kinds of credential are configured (never their values).

    >>> describe_auth(WebSettings(auth="a:b", token="t" * 16))
    'basic (read-write), bearer token'
    >>> describe_auth(WebSettings())
    'none'
    """
    kinds = []
    if settings.auth is not None:
        kinds.append("basic (read-write)")
    if settings.readonly_auth is not None:
        kinds.append("basic (read-only)")
    if settings.token is not None:
        kinds.append("bearer token")
    return ", ".join(kinds) or "none"


def build_server(settings: WebSettings) -> uvicorn.Server:
    """A uvicorn server for ``settings`` (``ValueError`` if it would bind a non-loopback address without auth)."""
    settings.check_bind()
    if settings.has_credentials:
        log.info("authentication: %s", describe_auth(settings))
    else:
        log.warning("no credential configured: serving WITHOUT authentication, on loopback %s only", settings.host)
    log.info(
        "database %s; broker %s",
        make_url_safe(settings.database_url),
        make_url_safe(settings.broker_url) if settings.broker_url else "none (starting runs is refused)",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # cloacina's logging (passwords redacted) handles uvicorn's loggers too
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        access_log=log.isEnabledFor(logging.DEBUG),  # the console polls: a line per request only when debugging
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(settings: WebSettings) -> None:
    """Serve until SIGINT/SIGTERM."""
    build_server(settings).run()
