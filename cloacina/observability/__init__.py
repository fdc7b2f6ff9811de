"""Observability for services: structured logs, Prometheus metrics, ``/metrics``, ``/livez`` and ``/readyz``.

- :mod:`cloacina.observability.logs`: ``configure_logging(fmt, level)`` (text or JSON lines) and ``redact``.
- :mod:`cloacina.observability.metrics`: ``Metrics`` (the ``cloacina_*`` series), prefork multiprocess support.
- :mod:`cloacina.observability.http`: a small threaded server for ``GET /metrics``, ``/livez`` and ``/readyz``.

>>> from cloacina.observability.logs import redact
>>> redact("postgresql://app:s3cret@db/prod")
'postgresql://app:***@db/prod'

The submodules are imported on demand, so ``import cloacina`` never pays for prometheus_client or redis.
"""
