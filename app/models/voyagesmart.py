"""VoyageSmart's own tables, in the shape its production database has.

The source is VoyageSmart's repository: its SQL (`supabase/schema.sql`,
`supabase/migrations/20240601_update_existing_users_to_premium.sql`,
`supabase/subscription_history.sql`) and, where that SQL is silent, the columns its code
writes (the Stripe webhook, the promo-code routes, uploads, chat).  "The VoyageSmart
tables" in docs/deploy.md says which is which.

The service reads and writes these tables; it never alters them on an existing VoyageSmart
database (the `voyagesmart` migration branch creates them only on a fresh one).  A model
lists the columns the service uses; the real table may have more.

`auth.users` is Supabase's.  On PostgreSQL it is the `auth` schema (a stand-in on a fresh
database); on SQLite it lives in a sibling database file attached as `auth` (see
`app.db.attach_auth`), so the same statements name `auth.users` on both.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType, new_uuid

TIERS = ("free", "premium", "ai")
# The values user_subscriptions.status admits (its CHECK constraint).
SUBSCRIPTION_STATUSES = ("active", "inactive", "canceled")
PLAN_INTERVALS = ("month", "year")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class AuthUser(Base):
    """Supabase's `auth.users`: the columns the service reads."""

    __tablename__ = "users"
    __table_args__ = {"schema": "auth"}

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    email: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("auth.users.id", ondelete="CASCADE"), primary_key=True)
    email: Mapped[str] = mapped_column(sa.Text, unique=True)
    full_name: Mapped[str | None] = mapped_column(sa.Text)
    avatar_url: Mapped[str | None] = mapped_column(sa.Text)
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Set when the profile row is created; the app's login path never updates it.
    last_login: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class UserSubscription(Base):
    """One row per user: the tier the app grants.  Written by a trigger at sign-up (a
    premium year, no Stripe id), the Stripe webhook, promo redemptions and the app's own
    cancel/downgrade routes."""

    __tablename__ = "user_subscriptions"
    __table_args__ = (
        sa.CheckConstraint(_in("tier", TIERS), name="tier"),
        sa.CheckConstraint(_in("status", SUBSCRIPTION_STATUSES), name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("auth.users.id", ondelete="CASCADE"), index=True)
    tier: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text)
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    payment_id: Mapped[str | None] = mapped_column(sa.Text)
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.Text)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.Text)
    current_period_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancel_at_period_end: Mapped[bool | None] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Plan(Base):
    """`subscriptions`: the plan catalogue (name, tier, price, interval)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        sa.CheckConstraint(_in("tier", TIERS), name="tier"),
        sa.CheckConstraint(_in("interval", PLAN_INTERVALS), name="interval"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    tier: Mapped[str] = mapped_column(sa.Text)
    price: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    currency: Mapped[str | None] = mapped_column(sa.Text, default="EUR")
    interval: Mapped[str | None] = mapped_column(sa.Text)
    features: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SubscriptionHistory(Base):
    __tablename__ = "subscription_history"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, index=True)
    event_type: Mapped[str] = mapped_column(sa.Text)
    tier: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str | None] = mapped_column(sa.Text)
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.Text)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.Text)
    event_timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PromoCode(Base):
    """A code grants `tier` until `expires_at`; the app counts `used_count` itself."""

    __tablename__ = "promo_codes"
    __table_args__ = (sa.CheckConstraint(_in("tier", TIERS), name="tier"),)

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    code: Mapped[str] = mapped_column(sa.Text, unique=True)
    tier: Mapped[str] = mapped_column(sa.Text)
    max_uses: Mapped[int | None] = mapped_column(sa.Integer)
    used_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PromoCodeRedemption(Base):
    __tablename__ = "promo_code_redemptions"
    __table_args__ = (sa.UniqueConstraint("promo_code_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    promo_code_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("promo_codes.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, index=True)
    redeemed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Trip(Base):
    __tablename__ = "trips"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    start_date: Mapped[dt.date | None] = mapped_column(sa.Date, index=True)
    end_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    destination: Mapped[str | None] = mapped_column(sa.Text)
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=dict)
    is_private: Mapped[bool | None] = mapped_column(sa.Boolean, default=True)
    budget_total: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class TripParticipant(Base):
    """The app inserts a trip's owner here too, as `admin`, `accepted`."""

    __tablename__ = "trip_participants"
    __table_args__ = (
        sa.UniqueConstraint("trip_id", "user_id", name="uq_trip_participants_trip_id"),
        sa.UniqueConstraint("trip_id", "invited_email",
                            name="uq_trip_participants_trip_id_invited_email"),
        # Created by the voyagesmart branch on fresh databases only; trip-reminders finds
        # a day's travellers through it.
        sa.Index("ix_trip_participants_accepted_trip", "trip_id", "user_id",
                 postgresql_where=sa.text("invitation_status = 'accepted'"),
                 sqlite_where=sa.text("invitation_status = 'accepted'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="SET NULL"), index=True)
    role: Mapped[str | None] = mapped_column(sa.Text, default="member")
    share_ratio: Mapped[Decimal | None] = mapped_column(sa.Numeric(5, 2), default=Decimal("1.0"))
    invited_email: Mapped[str | None] = mapped_column(sa.Text)
    invitation_status: Mapped[str | None] = mapped_column(sa.Text, default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class TripMedia(Base):
    __tablename__ = "trip_media"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    day_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="SET NULL"))
    type: Mapped[str | None] = mapped_column(sa.Text, default="photo")
    url: Mapped[str] = mapped_column(sa.Text)
    caption: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="SET NULL"))
    type: Mapped[str | None] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text)
    file_url: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Expense(Base):
    __tablename__ = "expenses"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    category: Mapped[str | None] = mapped_column(sa.Text)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    currency: Mapped[str | None] = mapped_column(sa.Text, default="USD")
    date: Mapped[dt.date | None] = mapped_column(sa.Date)
    description: Mapped[str | None] = mapped_column(sa.Text)
    paid_by: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="SET NULL"))
    receipt_url: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Accommodation(Base):
    """`documents` is a JSON array of `{name, url, type}` written by the app's uploads."""

    __tablename__ = "accommodations"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.Text)
    type: Mapped[str | None] = mapped_column(sa.Text)
    check_in_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    check_out_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    documents: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Transportation(Base):
    """`documents` is a JSON array of `{name, url, type}` written by the app's uploads."""

    __tablename__ = "transportation"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(sa.Text)
    provider: Mapped[str | None] = mapped_column(sa.Text)
    departure_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    documents: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class TripChatMessage(Base):
    """Not in VoyageSmart's SQL: the columns its chat component writes."""

    __tablename__ = "trip_chat_messages"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUIDType, sa.ForeignKey("users.id", ondelete="SET NULL"))
    content: Mapped[str] = mapped_column(sa.Text)
    is_system_message: Mapped[bool | None] = mapped_column(sa.Boolean, default=False)
    attachment_url: Mapped[str | None] = mapped_column(sa.Text)
    attachment_type: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


VOYAGESMART_TABLES = [
    AuthUser.__table__,
    User.__table__,
    UserSubscription.__table__,
    Plan.__table__,
    SubscriptionHistory.__table__,
    PromoCode.__table__,
    PromoCodeRedemption.__table__,
    Trip.__table__,
    TripParticipant.__table__,
    TripMedia.__table__,
    Document.__table__,
    Expense.__table__,
    Accommodation.__table__,
    Transportation.__table__,
    TripChatMessage.__table__,
]
