"""model pins (pins)

Revision ID: 0005
Revises: 0004
Create Date: 2026-03-09

Frozen history: this file states the table as it was at revision 0005 and must not
import schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pins",
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("pool_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("model_ref", "pool_id", "device_id", name="pk_pins"),
    )


def downgrade() -> None:
    op.drop_table("pins")
