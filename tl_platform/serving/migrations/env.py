"""Alembic environment of the prediction log, run only by ``tl_platform.serving.log_migrations``.

There is no alembic.ini and no offline mode: the caller opens the connection, starts its transaction, takes
the migration lock, and passes the connection and the table prefix in ``config.attributes``. Every revision
runs inside that one transaction (``transactional_ddl``; on SQLite too, where alembic's default is off), so a
failed upgrade leaves the schema where it was.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tl_platform.serving.log_schema import version_table_name


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the prediction log's migrations run through tl_platform.serving.log_migrations.migrate_log "
            "(or `python -m tl_platform.serving.log_admin migrate`), with an open connection"
        )
    prefix = str(context.config.attributes.get("table_prefix", ""))
    context.configure(connection=connection, version_table=version_table_name(prefix), transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
