"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    prefix = str(context.config.attributes.get("table_prefix", ""))  # every table name carries it
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    prefix = str(context.config.attributes.get("table_prefix", ""))
    ${downgrades if downgrades else "pass"}
