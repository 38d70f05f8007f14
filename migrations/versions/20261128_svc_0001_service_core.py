"""Service core: run log, job leases, sent notifications, audit log.

Revision ID: svc_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("service",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cron_audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_audit_log")),
    )
    op.create_index(
        op.f("ix_cron_audit_log_created_at"), "cron_audit_log", ["created_at"], unique=False
    )
    op.create_table(
        "cron_job_lease",
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.Uuid(), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task", name=op.f("pk_cron_job_lease")),
    )
    op.create_table(
        "cron_job_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("job_name", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("records_processed", sa.Integer(), nullable=False),
        sa.Column(
            "error_details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_job_log")),
        sa.UniqueConstraint("run_id", name=op.f("uq_cron_job_log_run_id")),
    )
    op.create_index("ix_cron_job_log_job_slot", "cron_job_log", ["job_name", "slot"], unique=False)
    op.create_index(
        "ix_cron_job_log_job_started", "cron_job_log", ["job_name", "started_at"], unique=False
    )
    op.create_index("ix_cron_job_log_status", "cron_job_log", ["status"], unique=False)
    op.create_table(
        "cron_notification",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_notification")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_cron_notification_dedupe_key")),
    )
    op.create_index(
        "ix_cron_notification_kind_status", "cron_notification", ["kind", "status"], unique=False
    )
    op.create_index(
        op.f("ix_cron_notification_user_id"), "cron_notification", ["user_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cron_notification_user_id"), table_name="cron_notification")
    op.drop_index("ix_cron_notification_kind_status", table_name="cron_notification")
    op.drop_table("cron_notification")
    op.drop_index("ix_cron_job_log_status", table_name="cron_job_log")
    op.drop_index("ix_cron_job_log_job_started", table_name="cron_job_log")
    op.drop_index("ix_cron_job_log_job_slot", table_name="cron_job_log")
    op.drop_table("cron_job_log")
    op.drop_table("cron_job_lease")
    op.drop_index(op.f("ix_cron_audit_log_created_at"), table_name="cron_audit_log")
    op.drop_table("cron_audit_log")
