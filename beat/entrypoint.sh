#!/bin/sh
# Entry point of the `poller` image target (see ../Dockerfile): the trigger + cron poller for the app in
# $CLOACINA_APP (a module name or a path to a .py file, resolved from the working directory /app).
# Run two or more replicas; they share the work through leases. /healthz and /metrics are served on
# $CLOACINA_METRICS_PORT. Arguments are passed on to `cloacina poller`.
set -eu
exec cloacina poller --app "${CLOACINA_APP:-/app/workflows/example_app.py}" "$@"
