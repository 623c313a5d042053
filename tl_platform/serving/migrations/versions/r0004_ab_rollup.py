"""The A/B rollup: state tables beside the log, so a daily analysis reads small sufficient statistics instead of
the experiment's raw rows.

Eight new tables, ``{prefix}ab_*`` (see ``log_schema.RollupTables`` and ``experiments/ab_rollup.py``); the log's
own tables are untouched, so a large log upgrades without copying anything. The tables start empty: an
experiment's state is built by its first fold. Downgrading drops them (the state is derived, refolding rebuilds it).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen with this revision (not imported from the live schema, which may change in later revisions).
EXPERIMENT_CHARS = 128
TABLES = ("ab_rollup", "ab_unit_days", "ab_unit_slices", "ab_units", "ab_daily", "ab_slices", "ab_operations",
          "ab_latency_tail")


def _prefix() -> str:
    return str(context.config.attributes.get("table_prefix", ""))


def _sums() -> list[sa.Column[object]]:
    return [sa.Column("labelled", sa.Integer, nullable=False), sa.Column("correct", sa.Integer, nullable=False),
            sa.Column("outcome_n", sa.Integer, nullable=False), sa.Column("outcome_sum", sa.Float, nullable=False)]


def _stats() -> list[sa.Column[object]]:
    return [sa.Column("n", sa.Integer, nullable=False), sa.Column("total", sa.Float, nullable=False),
            sa.Column("total_sq", sa.Float, nullable=False)]


def upgrade() -> None:
    prefix = _prefix()

    def experiment(**kwargs: object) -> sa.Column[object]:
        return sa.Column("experiment_id", sa.String(EXPERIMENT_CHARS), **kwargs)  # type: ignore[arg-type]

    op.create_table(
        f"{prefix}ab_rollup",
        experiment(primary_key=True),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slice_keys", sa.Text, nullable=False),
        sa.Column("served_up_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feedback_up_to", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feedback_rows", sa.BigInteger, nullable=False),
        sa.Column("champion_units", sa.Integer, nullable=False),
        sa.Column("challenger_units", sa.Integer, nullable=False),
        sa.Column("units_in_both_arms", sa.Integer, nullable=False),
        sa.Column("champion_tail_min", sa.Float),
        sa.Column("challenger_tail_min", sa.Float),
    )
    op.create_table(
        f"{prefix}ab_unit_days",
        experiment(primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        *_sums(),
    )
    op.create_table(
        f"{prefix}ab_unit_slices",
        experiment(primary_key=True),
        sa.Column("slice_key", sa.String(EXPERIMENT_CHARS), primary_key=True),
        sa.Column("slice_value", sa.String(256), primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        *_sums(),
    )
    op.create_table(
        f"{prefix}ab_units",
        experiment(primary_key=True),
        sa.Column("unit_id", sa.String(256), primary_key=True),
        sa.Column("champion", sa.Integer, nullable=False),
        sa.Column("challenger", sa.Integer, nullable=False),
    )
    op.create_table(
        f"{prefix}ab_daily",
        experiment(primary_key=True),
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        *_stats(),
        sa.Column("new_units", sa.Integer, nullable=False),
        sa.Column("change", sa.Float, nullable=False),
        sa.Column("change_sq", sa.Float, nullable=False),
    )
    op.create_table(
        f"{prefix}ab_slices",
        experiment(primary_key=True),
        sa.Column("metric", sa.String(16), primary_key=True),
        sa.Column("slice_key", sa.String(EXPERIMENT_CHARS), primary_key=True),
        sa.Column("slice_value", sa.String(256), primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        *_stats(),
    )
    op.create_table(
        f"{prefix}ab_operations",
        experiment(primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("variant", sa.String(16), primary_key=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("rows_without_unit", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency_sum", sa.Float, nullable=False),
    )
    op.create_table(
        f"{prefix}ab_latency_tail",
        experiment(nullable=False),
        sa.Column("variant", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    op.create_index(f"ix_{prefix}ab_latency_tail_experiment_variant_latency", f"{prefix}ab_latency_tail",
                    ["experiment_id", "variant", "latency_ms"])


def downgrade() -> None:
    """Back to 0003: the rollup state goes (it is derived from the log; a fold at 0004 rebuilds it)."""
    prefix = _prefix()
    op.drop_index(f"ix_{prefix}ab_latency_tail_experiment_variant_latency", table_name=f"{prefix}ab_latency_tail")
    for table in reversed(TABLES):
        op.drop_table(f"{prefix}{table}")
