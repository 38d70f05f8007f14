"""Tables of the user notifications: the notifications sent, the monthly engagement
metrics, and the opt-outs and consent that decide who may be emailed."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType


class CronNotification(Base):
    """Every notification the service sends, keyed so that no one is emailed twice.

    `status` moves pending -> sent | failed | unconfirmed | expired; app/mail/delivery.py
    owns the transitions and documents them.
    """

    __tablename__ = "cron_notification"
    __table_args__ = (
        sa.Index("ix_cron_notification_kind_reference", "kind", "reference_date"),
        # The send queue: pending rows of a kind in id order (app/mail/delivery.py).
        sa.Index("ix_cron_notification_pending", "kind", "id",
                 postgresql_where=sa.text("status = 'pending'"),
                 sqlite_where=sa.text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    dedupe_key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, index=True)
    recipient: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16))
    run_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What the message is about (trip start date, campaign month) and what it says.
    trip_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    reference_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


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
