"""Email opt-outs (one-click unsubscribe) and recorded consent.

`cron_email_opt_out`: one row per user and list they left (`all` for every list); every
user email's planning excludes them.  `cron_email_consent`: one row per user and list they
consented to, imported by an operator; required for re-engagement emails when
ENGAGEMENT_REQUIRE_CONSENT is set.  Both belong to the service: VoyageSmart's database has
no opt-out of its own.

Revision ID: svc_0008
Revises: svc_0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0008"
down_revision: str | Sequence[str] | None = "svc_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                     autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "cron_email_opt_out",
        _id(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("list", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_email_opt_out")),
        sa.UniqueConstraint("user_id", "list", name="uq_cron_email_opt_out"),
    )
    op.create_table(
        "cron_email_consent",
        _id(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("list", sa.String(length=32), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_email_consent")),
        sa.UniqueConstraint("user_id", "list", name="uq_cron_email_consent"),
    )


def downgrade() -> None:
    op.drop_table("cron_email_consent")
    op.drop_table("cron_email_opt_out")
