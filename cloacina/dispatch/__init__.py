"""Dispatchers: where task attempts execute (threads embedded, Celery distributed)."""
