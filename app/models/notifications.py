"""Tables of the user notifications: monthly engagement metrics, opt-outs and consent.

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


class CronEmailOptOut(Base):
    """A user who left a mailing list (app/mail/unsubscribe.py): no email of that list, or of
    any list when `list` is `all`, is planned or sent to them again."""

    __tablename__ = "cron_email_opt_out"
    __table_args__ = (sa.UniqueConstraint("user_id", "list", name="uq_cron_email_opt_out"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    list: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # one-click (RFC 8058 POST by a mail client), page (the confirmation page's button)
    source: Mapped[str] = mapped_column(sa.String(32))


class CronEmailConsent(Base):
    """A user's recorded consent to a list's emails, imported by an operator
    (`voyagesmart-cron consent import`); required by ENGAGEMENT_REQUIRE_CONSENT."""

    __tablename__ = "cron_email_consent"
    __table_args__ = (sa.UniqueConstraint("user_id", "list", name="uq_cron_email_consent"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    list: Mapped[str] = mapped_column(sa.String(32))
    # When the user gave it (from the imported record), and when it was imported.
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Where the consent comes from (a sign-up form, a CRM export, ...), as the operator said.
    source: Mapped[str] = mapped_column(sa.String(200))
