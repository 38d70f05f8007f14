"""A mail hand-over cursor per chunk, so that a run's send chunks can go side by side.

`cron_run_chunk` gains `mail_cursor` (the id of the message the chunk is handing to the
mail server now) and `mail_owner` (the attempt of the chunk that may move it).  A send
chunk covers an id range of the run's messages: its cursor says what of that range was
handed over, as `cron_job_log.mail_cursor` does for a whole run (app/mail/delivery.py).

Revision ID: svc_0015
Revises: svc_0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0015"
down_revision: str | Sequence[str] | None = "svc_0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cron_run_chunk") as batch:
        batch.add_column(sa.Column("mail_cursor", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("mail_owner", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_run_chunk") as batch:
        batch.drop_column("mail_owner")
        batch.drop_column("mail_cursor")
