# syntax=docker/dockerfile:1
#
# One Dockerfile, one set of layers, three targets. The worker and the poller run the same Python package with
# the same dependencies; two Dockerfiles would have to be kept identical by hand, so they are stages here and only
# their entry point (workers/entrypoint.sh, beat/entrypoint.sh) and health check differ:
#
#   docker build --target worker  -t cloacina-worker .   # ENTRYPOINT: cloacina worker --app "$CLOACINA_APP"
#   docker build --target poller  -t cloacina-poller .   # ENTRYPOINT: cloacina poller --app "$CLOACINA_APP"
#   docker build --target runtime -t cloacina .          # no entry point: cloacina db upgrade, cloacina flower, ...
#
# The Helm chart uses the `runtime` image and sets every container's command itself.
# Build from the repository root (the context must hold pyproject.toml, README.md, cloacina/, examples/deploy/).

# ---- builder: wheels for cloacina and every dependency (compilers live only in this stage) ------------------
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only needed when a dependency has no binary wheel for the target platform; never reaches the final stages.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cloacina ./cloacina
RUN pip wheel --wheel-dir /wheels ".[distributed]"

# ---- runtime: the installed package, a non-root user, no build tools ----------------------------------------
FROM python:3.11.13-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLOACINA_APP=/app/workflows/example_app.py \
    CLOACINA_METRICS_PORT=9100

# Install from the wheels only (--no-index): what runs is exactly what the builder built. The wheels are bind
# mounted, so they add no layer to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "cloacina[distributed]" \
    && cloacina --version

RUN groupadd --system --gid 10001 cloacina \
    && useradd --system --uid 10001 --gid cloacina --home-dir /home/cloacina --create-home \
       --shell /usr/sbin/nologin cloacina \
    && mkdir -p /app/workflows /data/inbox \
    && chown cloacina:cloacina /data/inbox
# /data/inbox is owned by the user so that a fresh named volume mounted there (docker-compose's `inbox`, shared by
# the example app's pollers and workers) starts out writable by uid 10001.

COPY --chmod=0755 workers/entrypoint.sh /usr/local/bin/cloacina-worker-entrypoint
COPY --chmod=0755 beat/entrypoint.sh /usr/local/bin/cloacina-poller-entrypoint
# The example app, so the image works on its own; mount your workflows over /app/workflows (read-only is fine)
# and point CLOACINA_APP at them, or build FROM this image and COPY them in.
COPY --chmod=0644 examples/deploy/example_app.py /app/workflows/example_app.py

WORKDIR /app
USER 10001:10001
EXPOSE 9100
# migrate is one-shot and flower is checked over HTTP (docker-compose.yml, the chart): no generic check here.
HEALTHCHECK NONE
CMD ["cloacina", "--help"]

# ---- poller: trigger + cron polling; serves /healthz and /metrics on $CLOACINA_METRICS_PORT -----------------
FROM runtime AS poller
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD cloacina health --component poller --poller-url "http://127.0.0.1:${CLOACINA_METRICS_PORT}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/cloacina-poller-entrypoint"]
CMD []

# ---- worker: a Celery prefork worker (the default target) ---------------------------------------------------
FROM runtime AS worker
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD cloacina health --component worker || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cloacina-worker-entrypoint"]
CMD []
