"""Alembic revisions of the prediction log; run them with ``tl_platform.serving.log_migrations.migrate_log``."""
