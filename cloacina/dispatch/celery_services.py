"""Starting Celery's own programs for a deployment: a prefork worker and Flower.

These are the only places a cloacina process hands control to Celery's command line; the CLI calls them with
options the wiring built, so no module outside :mod:`cloacina.dispatch` imports Celery.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from celery.signals import worker_process_shutdown

from cloacina.dispatch.celery_app import CeleryOptions, NodeRunner, create_app


def run_worker(
    options: CeleryOptions,
    node_runner: Callable[[], NodeRunner],
    argv: Sequence[str],
    *,
    on_child_exit: Callable[[int], None] | None = None,
) -> None:
    """Run ``celery worker`` with ``argv`` until it stops; ``node_runner`` builds each child's runner.

    ``on_child_exit(pid)`` is called as each prefork child exits (e.g. to retire its metrics files).
    """
    app = create_app(options, node_runner)
    if on_child_exit is not None:
        worker_process_shutdown.connect(lambda **_: on_child_exit(os.getpid()), weak=False)
    app.worker_main(["worker", *argv])


def run_flower(options: CeleryOptions, argv: Sequence[str]) -> None:
    """Run Flower against the deployment's broker with Flower's own arguments."""
    create_app(options).start(argv=["flower", *argv])
