"""Per-run mail hand-over cursor; send-queue and run indexes on notifications.

`cron_job_log.mail_cursor` is the id of the `cron_notification` row the run is handing to
the mail server right now (app/mail/handover.py): one small write per email that touches no
indexed column, so PostgreSQL updates the row in place (HOT).

On `cron_notification`, a partial index on pending rows gives the send queue in id order,
and `run_id` is indexed so a run's own rows (and a dead run's) are found without scanning
the whole history.  They replace the index on (kind, status), which every status change had
to update and which no query needs any more.

Revision ID: svc_0006
Revises: svc_0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0006"
down_revision: str | Sequence[str] | None = "svc_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("cron_job_log") as batch:
        batch.add_column(sa.Column("mail_cursor", sa.BigInteger(), nullable=True))
    op.create_index("ix_cron_notification_pending", "cron_notification", ["kind", "id"],
                    unique=False, postgresql_where=_PENDING, sqlite_where=_PENDING)
    op.create_index("ix_cron_notification_run_id", "cron_notification", ["run_id"],
                    unique=False)
    op.drop_index("ix_cron_notification_kind_status", table_name="cron_notification")


def downgrade() -> None:
    op.create_index("ix_cron_notification_kind_status", "cron_notification",
                    ["kind", "status"], unique=False)
    op.drop_index("ix_cron_notification_run_id", table_name="cron_notification")
    op.drop_index("ix_cron_notification_pending", table_name="cron_notification")
    with op.batch_alter_table("cron_job_log") as batch:
        batch.drop_column("mail_cursor")
