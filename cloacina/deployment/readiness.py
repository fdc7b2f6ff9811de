"""Waiting for a dependency (the database, Redis) to answer before a service starts its loops."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cloacina.backoff import Backoff
from cloacina.errors import SchemaNotMigratedError

log = logging.getLogger("cloacina.readiness")
READY_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)


def wait_until_ready(
    name: str, check: Callable[[], object], stop: threading.Event, max_wait_s: float | None = None
) -> None:
    """Call ``check`` until it stops raising, backing off up to 10 s between tries; give up (re-raise) once
    ``stop`` is set or ``max_wait_s`` has been waited.

    ``SchemaNotMigratedError`` is not retried: an unmigrated database needs an operator, not patience.
    """
    waited = 0.0
    for delay in READY_BACKOFF.delays():
        try:
            check()
            return
        except SchemaNotMigratedError:
            raise
        except Exception as exc:
            if stop.is_set() or (max_wait_s is not None and waited >= max_wait_s):
                raise
            log.warning("%s not reachable (%s); retrying in %.1fs", name, str(exc).splitlines()[0], delay)
            stop.wait(delay)
            waited += delay
