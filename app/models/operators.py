"""Tables behind the operators' defenses: shared rate-limit counters, audit indexes."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime
from app.models.service import CronAuditLog


class CronRateLimit(Base):
    """One counter per (key, fixed window), shared by every instance of the service.

    Vercel runs many short-lived instances behind one address; a counter kept in process
    memory would give an attacker the limit once per instance.  The row is bumped with a
    single upsert, so the database decides the count.
    """

    __tablename__ = "cron_rate_limit"
    __table_args__ = (sa.Index("ix_cron_rate_limit_window_start", "window_start"),)

    key: Mapped[str] = mapped_column(sa.String(160), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    hits: Mapped[int] = mapped_column(sa.Integer, default=0)


# Metrics and the dashboard count recent refusals by outcome; the retention prune and the
# per-address investigation read by time.
sa.Index("ix_cron_audit_log_outcome_created", CronAuditLog.outcome, CronAuditLog.created_at)
sa.Index("ix_cron_audit_log_client_created", CronAuditLog.client_ip, CronAuditLog.created_at)
