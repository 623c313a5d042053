"""Monitoring columns: the text, typed projection columns, experiment, routing salt and split per row.

Adds ``text``, ``experiment_id``, ``routing_salt``, ``challenger_share`` and ``projection_0`` .. ``projection_7``
(all nullable: rows logged before this revision did not record them), moves each row's JSON ``projection`` list
into the typed columns (the first K, the rest NULL), drops the JSON column, and indexes (model_version, ts)
for "one model version's rows in one day". SQLite alters through ``batch_alter_table`` (it cannot drop a
column in place on every version alembic supports); Postgres alters in place.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen with this revision (not imported from the live schema, which may change in later revisions).
PROJECTION = tuple(f"projection_{i}" for i in range(8))
ROUTING_CHARS = 128


def _table() -> str:
    return f"{context.config.attributes.get('table_prefix', '')}predictions"


def upgrade() -> None:
    table = _table()
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("text", sa.Text, nullable=True))
        batch.add_column(sa.Column("experiment_id", sa.String(ROUTING_CHARS), nullable=True))
        batch.add_column(sa.Column("routing_salt", sa.String(ROUTING_CHARS), nullable=True))
        batch.add_column(sa.Column("challenger_share", sa.Float, nullable=True))
        for name in PROJECTION:
            batch.add_column(sa.Column(name, sa.Float, nullable=True))
    _projection_json_to_columns(table)
    with op.batch_alter_table(table) as batch:
        batch.drop_column("projection")
    op.create_index(f"ix_{table}_model_version_ts", table, ["model_version", "ts"])


def downgrade() -> None:
    """Back to 0001: the typed projection returns to a JSON list; text, experiment, salt and split are lost."""
    table = _table()
    op.drop_index(f"ix_{table}_model_version_ts", table_name=table)
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("projection", sa.Text, nullable=True))
    _columns_to_projection_json(table)
    with op.batch_alter_table(table) as batch:
        batch.alter_column("projection", existing_type=sa.Text, nullable=False)
        for name in ("text", "experiment_id", "routing_salt", "challenger_share", *PROJECTION):
            batch.drop_column(name)


def _quoted(table: str) -> str:
    return op.get_bind().dialect.identifier_preparer.quote(table)


def _projection_json_to_columns(table: str) -> None:
    """One UPDATE in the database's own JSON functions; an index past the list's end gives NULL."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        element = "json_extract(projection, '$[{i}]')"
    elif dialect == "postgresql":
        element = "CAST(CAST(projection AS jsonb) ->> {i} AS double precision)"
    else:
        raise NotImplementedError(f"the prediction log runs on sqlite or postgresql, not {dialect}")
    assignments = ", ".join(f"{name} = {element.format(i=i)}" for i, name in enumerate(PROJECTION))
    op.execute(f"UPDATE {_quoted(table)} SET {assignments}")


def _columns_to_projection_json(table: str) -> None:
    """'[p0,p1,...]' of the leading non-NULL columns; '[]' when projection_0 is NULL (a row that failed)."""
    head, *rest = PROJECTION
    parts = " || ".join([f"CAST({head} AS TEXT)", *(f"COALESCE(',' || CAST({name} AS TEXT), '')" for name in rest)])
    op.execute(f"UPDATE {_quoted(table)} SET projection = COALESCE('[' || {parts} || ']', '[]')")
