"""Who may call the web process, and the CSRF rule for browsers. The console (``cloacina.web.console``) and the
API use the same two FastAPI dependencies: :func:`require_user` (any authenticated user, for reads) and
:func:`require_writer` (a user who may change things, for every state-changing request).

Credentials (:class:`~cloacina.web.settings.WebSettings`):

- ``CLOACINA_WEB_AUTH=user:password``: HTTP basic, may read and write.
- ``CLOACINA_WEB_TOKEN=<secret>``: ``Authorization: Bearer <secret>``, may read and write.
- ``CLOACINA_WEB_READONLY_AUTH=user:password``: HTTP basic, may read only: ``403`` on anything but GET/HEAD.
- None of them: the process only binds a loopback address (``cloacina web`` exits 2 otherwise) and everyone who
  can reach it is a writer (the log says so at start).

Missing or wrong credentials get ``401`` with a ``WWW-Authenticate`` challenge; every comparison is constant-time
(:func:`hmac.compare_digest` on both user and password, always both). Credentials are never logged.

CSRF rule (what the console must follow). A browser attaches basic-auth credentials (and cookies) to any request
it makes to this origin, also when another site's page triggers it. So a request whose method is not GET, HEAD
or OPTIONS is refused with ``403 {"error": "csrf_rejected"}`` unless one of these holds, checked in order:

1. it authenticated with a bearer token (a browser never adds one by itself), or
2. it carries the header ``X-Cloacina-CSRF`` (any non-empty value). Browsers cannot send a custom header to
   another origin without a CORS preflight, which this process never approves; or
3. the browser's ``Sec-Fetch-Site`` header is ``same-origin`` or ``none`` (a present header with any other
   value is refused, whatever follows), or
4. without ``Sec-Fetch-Site``: the ``Origin`` header names this very origin (scheme, host and port of the
   request's ``Host``, or of ``X-Forwarded-Host``/``X-Forwarded-Proto`` set by a proxy), or
5. neither ``Sec-Fetch-Site`` nor ``Origin`` is present: not a browser (curl, scripts), nothing rides on ambient
   credentials.

The console's JavaScript therefore sends ``X-Cloacina-CSRF: 1`` on every ``fetch`` that is not a GET, and its
plain HTML forms rely on rule 3 (every current browser sends ``Sec-Fetch-Site``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from cloacina.web.errors import ApiError
from cloacina.web.schemas import ErrorBody
from cloacina.web.settings import WebSettings

log = logging.getLogger("cloacina.web")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-Cloacina-CSRF"
REALM = "cloacina"


@dataclass(frozen=True)
class Principal:
    """The caller: ``name`` (``"anonymous"`` without auth, ``"token"`` for the bearer) and what it may do."""

    name: str
    can_write: bool
    via_bearer: bool = False


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _basic(header: str) -> tuple[str, str] | None:
    """``(user, password)`` of a ``Basic`` credential, ``None`` if malformed (UTF-8, as browsers send today)."""
    try:
        decoded = base64.b64decode(header.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Checks a request's ``Authorization`` header against the configured credentials."""

    def __init__(self, settings: WebSettings) -> None:
        self.enabled = settings.has_credentials
        self._basic = settings.basic_credentials()
        self._readonly = settings.readonly_credentials()
        self._token = settings.token.get_secret_value() if settings.token is not None else None

    def challenge(self) -> str:
        return f'Basic realm="{REALM}", charset="UTF-8"' if self._basic or self._readonly else "Bearer"

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal, or ``None`` when the credential is missing or wrong."""
        if not self.enabled:
            return Principal("anonymous", can_write=True)
        scheme, _, value = (authorization or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self._token is not None:
            return Principal("token", can_write=True, via_bearer=True) if _equal(value.strip(), self._token) else None
        if scheme != "basic":
            return None
        pair = _basic(value)
        if pair is None:
            return None
        user, password = pair
        for expected, can_write in ((self._basic, True), (self._readonly, False)):
            # Both parts are always compared, so timing says nothing about which one was wrong.
            if expected is not None and _equal(user, expected[0]) & _equal(password, expected[1]):
                return Principal(user, can_write=can_write)
        return None


def _origin_of(request: Request) -> tuple[str, str]:
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    return scheme.split(",")[0].strip().lower(), host.split(",")[0].strip().lower()


def _default_port(scheme: str) -> str:
    return "443" if scheme == "https" else "80"


def _same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or not parts.hostname:
        return False  # "null" (sandboxed frames, file:) and garbage
    scheme, host = _origin_of(request)
    own = urlsplit(f"{scheme}://{host}")
    try:
        theirs_port, own_port = parts.port, own.port
    except ValueError:
        return False
    return (
        parts.scheme == scheme
        and parts.hostname == own.hostname
        and str(theirs_port or _default_port(parts.scheme)) == str(own_port or _default_port(scheme))
    )


def csrf_allows(request: Request, principal: Principal) -> bool:
    """The CSRF rule of this module's docstring."""
    if request.method.upper() in SAFE_METHODS or principal.via_bearer:
        return True
    if request.headers.get(CSRF_HEADER, "").strip():
        return True
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is not None:
        return _same_origin(origin, request)
    return True


class _DocumentedBasic(HTTPBasic):
    """HTTP basic in the OpenAPI document only: the header is parsed by :class:`Authenticator` (``HTTPBasic``
    itself would refuse non-ASCII passwords)."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _DocumentedBearer(HTTPBearer):
    async def __call__(self, request: HTTPConnection) -> None:
        return None


_basic_doc = _DocumentedBasic(auto_error=False, realm=REALM, description="CLOACINA_WEB_AUTH or _READONLY_AUTH")
_bearer_doc = _DocumentedBearer(auto_error=False, description="CLOACINA_WEB_TOKEN")


def _authenticator(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


def require_user(
    request: Request,
    _basic: Annotated[None, Security(_basic_doc)] = None,
    _bearer: Annotated[None, Security(_bearer_doc)] = None,
) -> Principal:
    """Any authenticated user (or anyone, when no credential is configured); ``401`` otherwise."""
    authenticator = _authenticator(request)
    principal = authenticator.authenticate(request.headers.get("authorization"))
    if principal is None:
        client = request.client.host if request.client else "?"
        log.info("401 for %s %s from %s", request.method, request.url.path, client)  # never the credential
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong credentials",
            headers={"WWW-Authenticate": authenticator.challenge()},
        )
    request.state.principal = principal
    return principal


def require_writer(principal: Annotated[Principal, Depends(require_user)], request: Request) -> Principal:
    """A user who may change things (not the read-only one), whose request passes the CSRF rule; ``403``
    otherwise."""
    if not principal.can_write:
        raise ApiError(403, "forbidden", f"user {principal.name!r} is read-only")
    if not csrf_allows(request, principal):
        raise ApiError(
            403,
            "csrf_rejected",
            f"cross-site request refused: send the {CSRF_HEADER} header (see cloacina.web.auth)",
        )
    return principal


WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Read-only user, or a cross-site browser request (CSRF rule)."}
}

User = Annotated[Principal, Depends(require_user)]
Writer = Annotated[Principal, Depends(require_writer)]
