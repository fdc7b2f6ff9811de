"""Starting Celery's own programs for a deployment: a prefork worker and Flower.

These are the only places a cloacina process hands control to Celery's command line; the CLI calls them with
options the wiring built, so no module outside :mod:`cloacina.dispatch` imports Celery.

Flower parses its options with Tornado, which knows only ``--name=value``: :func:`flower_argv` joins the
``--port 5566`` form users type. Flower also reads ``FLOWER_<OPTION>`` variables; Kubernetes injects
``FLOWER_PORT=tcp://10.0.0.7:5555`` into every pod of a namespace with a Service named ``flower``, which Flower
would take for its port: :func:`flower_environment` drops such values (and says so).

>>> flower_argv(["--port", "5566", "--address=127.0.0.1", "--debug"])
['--port=5566', '--address=127.0.0.1', '--debug']
>>> sorted(flower_environment({"FLOWER_PORT": "tcp://10.0.0.7:5555", "FLOWER_BASIC_AUTH": "a:b"})[0])
['FLOWER_BASIC_AUTH']
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence

from celery.signals import worker_process_shutdown

from cloacina.dispatch.celery_app import CeleryOptions, NodeRunner, create_app
from cloacina.dispatch.worker_probe import install_probe

log = logging.getLogger("cloacina.flower")
SERVICE_LINK = re.compile(r"^(tcp|udp|sctp)://")


def run_worker(
    options: CeleryOptions,
    node_runner: Callable[[], NodeRunner],
    argv: Sequence[str],
    *,
    on_child_exit: Callable[[int], None] | None = None,
) -> None:
    """Run ``celery worker`` with ``argv`` until it stops; ``node_runner`` builds each child's runner.

    ``on_child_exit(pid)`` is called as each prefork child exits (e.g. to retire its metrics files). The worker's
    probe state (:mod:`cloacina.dispatch.worker_probe`) follows its consumer.
    """
    app = create_app(options, node_runner)
    install_probe(app)
    if on_child_exit is not None:
        worker_process_shutdown.connect(lambda **_: on_child_exit(os.getpid()), weak=False)
    app.worker_main(["worker", *argv])


def _flower_options() -> dict[str, type]:
    """Flower's option names and their types (``--name`` and ``--name-with-dashes`` both work)."""
    import flower.options  # noqa: F401  (defines Flower's options on Tornado's global parser)
    from tornado.options import options

    return {name: option.type for name, option in options._options.items()}


def flower_argv(argv: Sequence[str]) -> list[str]:
    """Flower's arguments with ``--name value`` joined into ``--name=value`` (flags stay as they are)."""
    known = _flower_options()
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        name = arg[2:].replace("_", "-") if arg.startswith("--") and "=" not in arg else None
        kind = known.get(name) if name else None
        if kind is not None and kind is not bool and i + 1 < len(items) and not items[i + 1].startswith("--"):
            out.append(f"{arg}={items[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def flower_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``environ`` without Kubernetes service links posing as Flower options; and the names dropped."""
    dropped = sorted(k for k, v in environ.items() if k.startswith("FLOWER_") and SERVICE_LINK.match(v))
    return {k: v for k, v in environ.items() if k not in dropped}, dropped


def run_flower(options: CeleryOptions, argv: Sequence[str]) -> None:
    """Run Flower against the deployment's broker with Flower's own arguments (and ``FLOWER_*`` variables, e.g.
    ``FLOWER_BASIC_AUTH``: a password there stays out of the process's arguments)."""
    _, dropped = flower_environment(os.environ)
    for name in dropped:
        log.warning("ignoring %s: a Kubernetes service link (%s), not a Flower option", name, os.environ[name])
        del os.environ[name]
    create_app(options).start(argv=["flower", *flower_argv(argv)])
