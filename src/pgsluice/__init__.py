"""pgsluice: a one-shot PostgreSQL migration job that gates a rollout."""

__version__ = "0.1.0"
