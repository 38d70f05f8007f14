"""What is unusual about a run: `cron_job_log.anomalies`.

A run that ended `success` or `warning` is judged against its job's recent successful runs
(app/observe/run_marks.py); when it is far outside them, the marks it earned are stored here
as a JSON list, each with the measure, the value, the baseline and the factor.  NULL for
every run that earned none, so existing rows need no backfill.

Revision ID: svc_0009
Revises: svc_0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0009"
down_revision: str | Sequence[str] | None = "svc_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.add_column(sa.Column(
            "anomalies",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.drop_column("anomalies")
