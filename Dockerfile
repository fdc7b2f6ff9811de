# syntax=docker/dockerfile:1
#
# One image for every cloacina process: poller, worker, web, Flower and the migrate job. docker-compose.yml and
# the Helm chart set each container's command (`cloacina poller`, `cloacina worker ...`, `cloacina web ...`).
#
#   docker build -t registry.example.com/cloacina:0.1.0 .     # from the repository root
#
# Layers, so that a source change rebuilds only the last one:
#   deps     the locked dependencies (requirements.lock: pip-compile --generate-hashes from pyproject.toml's
#            "distributed" extra), downloaded as binary wheels and checked against their hashes; it sees no source.
#   app      the cloacina wheel, built from the sources.
#   runtime  tini, a non-root user, the dependencies (one layer), then cloacina itself (one small layer).
# No compiler anywhere: --only-binary=:all: refuses anything that would need one.
# Regenerate the lock after changing dependencies (and commit it):
#   pip-compile --extra=distributed --generate-hashes --no-emit-find-links --no-emit-index-url \
#     --output-file=requirements.lock --strip-extras pyproject.toml

# python:3.11.13-slim-bookworm, pinned by the digest of its multi-platform index.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- deps: the locked dependencies as hash-checked wheels -----------------------------------------------------
FROM base AS deps
WORKDIR /build
COPY requirements.lock ./
RUN pip download --no-cache-dir --require-hashes --only-binary=:all: --no-deps --dest /wheels -r requirements.lock

# ---- app: the cloacina wheel --------------------------------------------------------------------------------
FROM base AS app
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cloacina ./cloacina
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- runtime ------------------------------------------------------------------------------------------------
FROM base AS runtime

# tini is PID 1: it forwards SIGTERM to the cloacina process (Celery's warm shutdown lets running tasks finish)
# and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 cloacina \
    && useradd --system --uid 10001 --gid cloacina --home-dir /home/cloacina --create-home \
       --shell /usr/sbin/nologin cloacina \
    && mkdir -p /app/workflows /data/inbox \
    && chown cloacina:cloacina /data/inbox
# /data/inbox is owned by the user so that a fresh named volume mounted there (docker-compose's `inbox`, shared by
# the example app's pollers and workers) starts out writable by uid 10001.

# The wheels are bind mounted: they add no layer of their own.
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl
RUN --mount=type=bind,from=app,source=/dist,target=/dist \
    pip install --no-cache-dir --no-index --no-deps /dist/*.whl \
    && pip check \
    && cloacina --version

# The example app, so the image works on its own; mount your workflows over /app/workflows (read-only is fine)
# and point CLOACINA_APP at them, or build FROM this image and COPY them in.
COPY --chmod=0644 examples/deploy/example_app.py /app/workflows/example_app.py

ENV CLOACINA_APP=/app/workflows/example_app.py \
    CLOACINA_METRICS_PORT=9100
WORKDIR /app
USER 10001:10001
# 9100: /metrics, /livez, /readyz of poller and worker; 8080: cloacina web; 5555: Flower.
EXPOSE 9100 8080 5555
# Each process is probed on its own endpoint (docker-compose.yml, the chart): no one check fits them all.
HEALTHCHECK NONE
ENTRYPOINT ["tini", "--"]
CMD ["cloacina", "--help"]
