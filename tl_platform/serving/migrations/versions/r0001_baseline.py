"""Baseline: the schema ``metadata.create_all`` made before migrations (an existing log is stamped here).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    prefix = str(context.config.attributes.get("table_prefix", ""))  # every table name carries it
    op.create_table(
        f"{prefix}predictions",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unit_id", sa.String(256)),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("confidence", sa.Float),
        sa.Column("probabilities", sa.Text),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("text_chars", sa.Integer, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("unknown_share", sa.Float, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False),
        sa.Column("projection", sa.Text, nullable=False),  # a JSON list of floats
        sa.Column("error", sa.Text),
    )
    # the name create_all gave the column's index=True
    op.create_index(f"ix_{prefix}predictions_ts", f"{prefix}predictions", ["ts"])
    op.create_table(
        f"{prefix}feedback",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("item_index", sa.Integer, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("outcome", sa.Float),
    )


def downgrade() -> None:
    prefix = str(context.config.attributes.get("table_prefix", ""))
    op.drop_table(f"{prefix}feedback")
    op.drop_index(f"ix_{prefix}predictions_ts", table_name=f"{prefix}predictions")
    op.drop_table(f"{prefix}predictions")
