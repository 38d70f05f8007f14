"""Tables of the billing jobs: weekly analytics and monthly subscription reports."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType


class CronWeeklyAnalytics(Base):
    """One row per ISO week; a rerun for the same week replaces its figures."""

    __tablename__ = "cron_weekly_analytics"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    iso_week: Mapped[str] = mapped_column(sa.String(8), unique=True)  # "2026-W47"
    week_start: Mapped[dt.date] = mapped_column(sa.Date)
    week_end: Mapped[dt.date] = mapped_column(sa.Date)  # exclusive (the next Monday)
    active_users: Mapped[int] = mapped_column(sa.Integer)
    new_users: Mapped[int] = mapped_column(sa.Integer)
    new_paid_subscriptions: Mapped[int] = mapped_column(sa.Integer)
    conversion_rate: Mapped[float | None] = mapped_column(sa.Float)
    churn_rate: Mapped[float | None] = mapped_column(sa.Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)


class CronMonthlyReport(Base):
    """One row per month.  `sent_at` set means the admins got it; archived rows stay."""

    __tablename__ = "cron_monthly_report"
    __table_args__ = (sa.Index("ix_cron_monthly_report_archived", "archived", "month_start"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    month: Mapped[str] = mapped_column(sa.String(7), unique=True)  # "2026-10"
    month_start: Mapped[dt.date] = mapped_column(sa.Date)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    csv: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    sent_to: Mapped[str | None] = mapped_column(sa.Text)
    archived: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    archived_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
