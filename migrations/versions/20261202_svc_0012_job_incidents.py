"""Each job's incident state, for alerts per incident rather than per run.

`cron_job_incident`: one row per job that ever left `healthy` (failing, overdue, stuck), with
when the incident began, when it was last alerted, whether its one reminder went out, and a
`version` every change increments: instances claim a change by a conditional UPDATE on it,
so each alert goes out once (app/observe/alerts.py).

Revision ID: svc_0012
Revises: svc_0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0012"
down_revision: str | Sequence[str] | None = "svc_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cron_job_incident",
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("condition", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reminded", sa.Boolean(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_alert", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("task", name=op.f("pk_cron_job_incident")),
    )


def downgrade() -> None:
    op.drop_table("cron_job_incident")
