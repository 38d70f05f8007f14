"""Notification tables and indexes for trip reminders and user engagement.

Revision ID: svc_0003
Revises: svc_0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0003"
down_revision: str | Sequence[str] | None = "svc_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("cron_notification") as batch:
        batch.add_column(sa.Column("trip_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("reference_date", sa.Date(), nullable=True))
        batch.add_column(sa.Column("payload", _JSON, nullable=True))
    op.create_index(
        "ix_cron_notification_kind_reference",
        "cron_notification",
        ["kind", "reference_date"],
        unique=False,
    )
    op.create_table(
        "cron_engagement_metrics",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("active_users", sa.Integer(), nullable=False),
        sa.Column("inactive_users", sa.Integer(), nullable=False),
        sa.Column("emails_sent", sa.Integer(), nullable=False),
        sa.Column("emails_failed", sa.Integer(), nullable=False),
        sa.Column("opted_out", sa.Integer(), nullable=False),
        sa.Column("returned_users", sa.Integer(), nullable=False),
        sa.Column("inactivity_days", sa.Integer(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_cron_engagement_metrics")),
    )


def downgrade() -> None:
    op.drop_table("cron_engagement_metrics")
    op.drop_index("ix_cron_notification_kind_reference", table_name="cron_notification")
    with op.batch_alter_table("cron_notification") as batch:
        batch.drop_column("payload")
        batch.drop_column("reference_date")
        batch.drop_column("trip_id")
