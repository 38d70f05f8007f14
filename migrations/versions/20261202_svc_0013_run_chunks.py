"""Runs made of chunks: the planned pieces of a run and its progress.

`cron_run_chunk`: one row per planned piece of a run's work (its arguments, and once done its
records and result).  `cron_job_log` gains `chunks_total`, `chunks_done`, `checkpoint`
(what the run's plan noted for its closing summary) and `resumed_at` (when a later call
continued it: /health measures a live run's time from there).  A run that reached its
invocation's time budget is closed `partial` and continued by the next call
(app/core/chunks.py).

Revision ID: svc_0013
Revises: svc_0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "svc_0013"
down_revision: str | Sequence[str] | None = "svc_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cron_run_chunk",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("args", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_cron_run_chunk")),
    )
    with op.batch_alter_table("cron_job_log") as batch:
        batch.add_column(sa.Column("chunks_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("chunks_done", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("checkpoint", _JSON, nullable=True))
        batch.add_column(sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.drop_column("resumed_at")
        batch.drop_column("checkpoint")
        batch.drop_column("chunks_done")
        batch.drop_column("chunks_total")
    op.drop_table("cron_run_chunk")
