"""scheduler policy versions (policy_versions)

Revision ID: 0004
Revises: 0003
Create Date: 2026-03-08

Frozen history: this file states the table as it was at revision 0004 and must not
import schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("author", sa.String(128), nullable=False, server_default=""),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.CheckConstraint("language IN ('lua', 'builtin')",
                           name="ck_policy_versions_language"),
        sa.PrimaryKeyConstraint("version", name="pk_policy_versions"),
    )


def downgrade() -> None:
    op.drop_table("policy_versions")
