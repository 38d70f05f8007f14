"""Operators' view and defenses: shared rate-limit counters, audit log indexes.

Rate limits live in the database rather than in process memory because Vercel spreads
requests over many short-lived instances: only a shared counter holds across them.

Revision ID: svc_0005
Revises: svc_0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0005"
down_revision: str | Sequence[str] | None = "svc_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cron_rate_limit",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_cron_rate_limit")),
    )
    op.create_index(
        "ix_cron_rate_limit_window_start", "cron_rate_limit", ["window_start"], unique=False
    )
    op.create_index(
        "ix_cron_audit_log_outcome_created", "cron_audit_log", ["outcome", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_cron_audit_log_client_created", "cron_audit_log", ["client_ip", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_cron_audit_log_client_created", table_name="cron_audit_log")
    op.drop_index("ix_cron_audit_log_outcome_created", table_name="cron_audit_log")
    op.drop_index("ix_cron_rate_limit_window_start", table_name="cron_rate_limit")
    op.drop_table("cron_rate_limit")
