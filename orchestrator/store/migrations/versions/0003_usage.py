"""the usage ledger (usage_records) and tenants.submit_rate_per_second

Revision ID: 0003
Revises: 0002
Create Date: 2026-03-01

Frozen history: this file states the tables as they were at revision 0003 and must not
import schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("submit_rate_per_second", sa.Double(), nullable=True))
    op.create_table(
        "usage_records",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("model_ref", sa.Text(), nullable=False),
        sa.Column("pool_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("provider_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=False, server_default=""),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False, server_default="0"),
        sa.Column("finished_at", sa.Double(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("queue_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("vram_byte_seconds", sa.Double(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("job_id", name="pk_usage_records"),
    )
    op.create_index("ix_usage_records_finished_at", "usage_records", ["finished_at"])
    op.create_index("ix_usage_records_tenant_id_finished_at", "usage_records",
                    ["tenant_id", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_tenant_id_finished_at", table_name="usage_records")
    op.drop_index("ix_usage_records_finished_at", table_name="usage_records")
    op.drop_table("usage_records")
    with op.batch_alter_table("tenants") as batch:  # SQLite: copies the table
        batch.drop_column("submit_rate_per_second")
