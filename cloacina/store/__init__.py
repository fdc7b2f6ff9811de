"""Durable store: SQLAlchemy models, repositories and migrations (SQLite and PostgreSQL)."""
