"""Applications the benchmarks start workers with: cloacina workflows, plain Celery tasks, and their probes."""
