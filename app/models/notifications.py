"""Tables of the user notifications: monthly engagement metrics.

The notifications themselves live in `cron_notification` (app/models/service.py).
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, UUIDType


class CronEngagementMetrics(Base):
    """One row per calendar month, rewritten by every `user-engagement` run of that month."""

    __tablename__ = "cron_engagement_metrics"

    month: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)  # first day
    active_users: Mapped[int] = mapped_column(sa.Integer)
    inactive_users: Mapped[int] = mapped_column(sa.Integer)
    emails_sent: Mapped[int] = mapped_column(sa.Integer)
    emails_failed: Mapped[int] = mapped_column(sa.Integer)
    opted_out: Mapped[int] = mapped_column(sa.Integer)
    # Users emailed by the previous campaign who logged in after that email.
    returned_users: Mapped[int] = mapped_column(sa.Integer)
    inactivity_days: Mapped[int] = mapped_column(sa.Integer)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
