"""The workers summary: who answers a Celery ping now, and who ran task attempts lately (from the database).

The ping goes through the deployment's Celery options and ``cloacina.dispatch`` (the only package that imports
Celery); it runs on a thread with a deadline, so a broker that swallows packets cannot hold the page.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from cloacina.deployment.wiring import Deployment
from cloacina.dispatch.celery_app import ping_workers
from cloacina.observability.logs import redact
from cloacina.store.database import Database
from cloacina.store.models import TaskAttempt
from cloacina.timestamps import as_utc, utcnow

ACTIVITY_WINDOW = timedelta(hours=1)
PING_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class WorkerActivity:
    """Attempts one process (``host:pid``) started within the window."""

    worker: str
    attempts: int
    failed: int
    running: int
    last_started_at: datetime


@dataclass(frozen=True)
class PingResult:
    answering: list[str]
    error: str | None = None


def ping(deployment: Deployment, timeout_s: float = PING_TIMEOUT_S) -> PingResult:
    """Names of the Celery workers that answer within ``timeout_s``, or the reason nobody could be asked."""
    outcome: dict[str, Any] = {}

    def broadcast() -> None:
        try:
            outcome["names"] = ping_workers(deployment.celery_options, timeout_s)
        except Exception as exc:  # any broker failure is shown on the page, never raised
            outcome["error"] = exc

    thread = threading.Thread(target=broadcast, name="cloacina-console-ping", daemon=True)
    thread.start()
    thread.join(timeout_s + 2.0)
    if "error" in outcome:
        exc = outcome["error"]
        return PingResult([], redact(f"{type(exc).__name__}: {exc}")[:300])
    if "names" not in outcome:
        return PingResult([], f"the broker did not answer within {timeout_s + 2.0:g} s")
    return PingResult(list(outcome["names"]))


def recent_activity(
    db: Database, window: timedelta = ACTIVITY_WINDOW, now: datetime | None = None
) -> list[WorkerActivity]:
    """Per worker, the attempts it started since ``now - window`` (most recent worker first)."""
    since = (now or utcnow()) - window
    last = func.max(TaskAttempt.started_at)
    query = (
        select(
            TaskAttempt.worker,
            func.count(),
            func.sum(case((TaskAttempt.status == "Failed", 1), else_=0)),
            func.sum(case((TaskAttempt.status == "Running", 1), else_=0)),
            last,
        )
        .where(TaskAttempt.started_at >= since, TaskAttempt.worker.is_not(None))
        .group_by(TaskAttempt.worker)
        .order_by(last.desc())
        .limit(200)
    )
    with db.session() as s:
        rows = s.execute(query).all()
    return [
        WorkerActivity(str(worker), int(count), int(failed or 0), int(running or 0), as_utc(latest))
        for worker, count, failed, running, latest in rows
    ]
