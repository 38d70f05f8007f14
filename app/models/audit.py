"""Tables behind the operators' defenses: the audit log of cron calls and the shared
rate-limit counters."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, UUIDType


class CronAuditLog(Base):
    """Every cron call and every failed authentication; never the presented token."""

    __tablename__ = "cron_audit_log"
    __table_args__ = (
        # Metrics and the dashboard count recent refusals by outcome; the retention prune
        # and the per-address investigation read by time.
        sa.Index("ix_cron_audit_log_outcome_created", "outcome", "created_at"),
        sa.Index("ix_cron_audit_log_client_created", "client_ip", "created_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    client_ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    method: Mapped[str] = mapped_column(sa.String(8))
    path: Mapped[str] = mapped_column(sa.String(512))
    task: Mapped[str | None] = mapped_column(sa.String(64))
    outcome: Mapped[str] = mapped_column(sa.String(32))
    status_code: Mapped[int] = mapped_column(sa.Integer)
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)


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
