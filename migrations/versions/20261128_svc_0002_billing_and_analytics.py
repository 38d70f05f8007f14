"""Billing and analytics tables (weekly analytics, monthly subscription reports).

Revision ID: svc_0002
Revises: svc_0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0002"
down_revision: str | Sequence[str] | None = "svc_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cron_weekly_analytics",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("iso_week", sa.String(length=8), nullable=False),
        sa.Column("week_start", sa.Date(), nullable=False),
        sa.Column("week_end", sa.Date(), nullable=False),
        sa.Column("active_users", sa.Integer(), nullable=False),
        sa.Column("new_users", sa.Integer(), nullable=False),
        sa.Column("new_paid_subscriptions", sa.Integer(), nullable=False),
        sa.Column("conversion_rate", sa.Float(), nullable=True),
        sa.Column("churn_rate", sa.Float(), nullable=True),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_weekly_analytics")),
        sa.UniqueConstraint("iso_week", name=op.f("uq_cron_weekly_analytics_iso_week")),
    )
    op.create_table(
        "cron_monthly_report",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("month_start", sa.Date(), nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.Column("csv", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_to", sa.Text(), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_monthly_report")),
        sa.UniqueConstraint("month", name=op.f("uq_cron_monthly_report_month")),
    )
    op.create_index("ix_cron_monthly_report_archived", "cron_monthly_report",
                    ["archived", "month_start"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_cron_monthly_report_archived", table_name="cron_monthly_report")
    op.drop_table("cron_monthly_report")
    op.drop_table("cron_weekly_analytics")
