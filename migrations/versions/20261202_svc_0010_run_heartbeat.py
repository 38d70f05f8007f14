"""Run heartbeats: `cron_job_log.heartbeat_at`.

A live run renews it every HEARTBEAT_INTERVAL seconds (app/core/runner.py), together with
its lease; a `running` row whose heartbeat is older than DEAD_AFTER belongs to a dead
process (app/core/health.py says so at once, the next call takes the slot up).  Not
indexed: the renewal touches no indexed column, so PostgreSQL updates the row in place.
Rows written before this revision have none and are judged by their max runtime as before.

Revision ID: svc_0010
Revises: svc_0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0010"
down_revision: str | Sequence[str] | None = "svc_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.drop_column("heartbeat_at")
