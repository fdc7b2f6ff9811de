"""The web console: server-rendered pages at ``/`` (runs, a run's DAG and attempts, triggers, cron, packages,
workers) with a little hand-written JavaScript for live updates and actions.

:func:`cloacina.web.app.create_app` includes :data:`router`. The pages are in :mod:`.pages`, the DAG layout in
:mod:`.dag`, the templates in ``cloacina/web/templates`` and the stylesheet and script in ``cloacina/web/static``.
"""

from __future__ import annotations

from fastapi import APIRouter

from cloacina.web.console import pages, static

router = APIRouter(include_in_schema=False)
router.include_router(static.router)
router.include_router(pages.router)

__all__ = ["router"]
