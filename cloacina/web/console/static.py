"""The console's stylesheet and script, served from the package (``cloacina/web/static``) at ``/static/``.

Only the files in :data:`FILES` are served, without authentication (they hold no data): the browser may load
them for the error pages too. ``?v=`` in their URLs changes with each release, so they can be cached for a day.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from cloacina.web.errors import ApiError

router = APIRouter(include_in_schema=False)
FILES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}


def read_static(name: str) -> bytes:
    return resources.files("cloacina.web").joinpath("static", name).read_bytes()


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no static file {name[:80]!r}")
    return Response(
        read_static(name),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
