#!/bin/sh
# Entry point of the `worker` image target (see ../Dockerfile): a Celery prefork worker for the app in
# $CLOACINA_APP (a module name or a path to a .py file, resolved from the working directory /app).
# Arguments are passed on, e.g. `docker run cloacina-worker --concurrency 8 --queues cloacina`.
# Database, broker and the other settings come from the CLOACINA_* environment (cloacina/deployment/settings.py).
set -eu
exec cloacina worker --app "${CLOACINA_APP:-/app/workflows/example_app.py}" "$@"
