"""Resource usage per run: `cron_job_log.resource_usage`.

One JSON object per run, written when the run's row is closed (app/observe/usage.py says
what each figure means): peak memory, CPU seconds, time in the database, outbound calls by
service.  NULL for runs logged before this revision and for runs refused before their
first attempt.

Revision ID: svc_0011
Revises: svc_0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0011"
down_revision: str | Sequence[str] | None = "svc_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.add_column(sa.Column(
            "resource_usage",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.drop_column("resource_usage")
