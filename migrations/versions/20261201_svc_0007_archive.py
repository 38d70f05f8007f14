"""Archive of the rows jobs delete, so that one run's removals can be restored.

Revision ID: svc_0007
Revises: svc_0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0007"
down_revision: str | Sequence[str] | None = "svc_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cron_archived_row",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("job_name", sa.String(length=64), nullable=False),
        sa.Column("source_table", sa.String(length=128), nullable=False),
        sa.Column("row_key", sa.Text(), nullable=False),
        sa.Column("row_data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_archived_row")),
    )
    op.create_index("ix_cron_archived_row_run_id", "cron_archived_row", ["run_id"])
    op.create_index("ix_cron_archived_row_archived_at", "cron_archived_row", ["archived_at"])


def downgrade() -> None:
    op.drop_index("ix_cron_archived_row_archived_at", table_name="cron_archived_row")
    op.drop_index("ix_cron_archived_row_run_id", table_name="cron_archived_row")
    op.drop_table("cron_archived_row")
