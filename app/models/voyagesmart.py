"""VoyageSmart's own tables, as the application defines them.

The service reads and writes these; it never alters them on an existing VoyageSmart
database (the `voyagesmart` migration branch creates them only on a fresh one).  User
references carry no foreign key: in VoyageSmart they point at the auth schema, which is why
`promo-cleanup` must repair redemptions whose user is gone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType, new_uuid


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    email: Mapped[str] = mapped_column(sa.Text, unique=True)
    full_name: Mapped[str | None] = mapped_column(sa.Text)
    avatar_url: Mapped[str | None] = mapped_column(sa.Text)
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_login: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.Text)


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, index=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.Text)
    tier: Mapped[str] = mapped_column(sa.Text, default="free")
    status: Mapped[str] = mapped_column(sa.Text, index=True)
    current_period_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    current_period_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancel_at_period_end: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    canceled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trial_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trial_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SubscriptionHistory(Base):
    __tablename__ = "subscription_history"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, index=True)
    event_type: Mapped[str] = mapped_column(sa.Text)
    tier: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str | None] = mapped_column(sa.Text)
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.Text)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.Text)
    event_timestamp: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PromoCode(Base):
    __tablename__ = "promo_codes"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    code: Mapped[str] = mapped_column(sa.Text, unique=True)
    stripe_promotion_code_id: Mapped[str | None] = mapped_column(sa.Text)
    discount_type: Mapped[str] = mapped_column(sa.Text, default="percent")
    discount_value: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2), default=0)
    max_redemptions: Mapped[int | None] = mapped_column(sa.Integer)
    current_redemptions: Mapped[int] = mapped_column(sa.Integer, default=0)
    valid_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class PromoCodeRedemption(Base):
    __tablename__ = "promo_code_redemptions"
    __table_args__ = (sa.UniqueConstraint("promo_code_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    promo_code_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("promo_codes.id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUIDType, index=True)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    redeemed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Trip(Base):
    __tablename__ = "trips"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    start_date: Mapped[dt.date | None] = mapped_column(sa.Date, index=True)
    end_date: Mapped[dt.date | None] = mapped_column(sa.Date)
    destination: Mapped[str | None] = mapped_column(sa.Text)
    preferences: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    is_private: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    budget_total: Mapped[Decimal | None] = mapped_column(sa.Numeric(12, 2))
    owner_id: Mapped[uuid.UUID] = mapped_column(UUIDType, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class TripParticipant(Base):
    __tablename__ = "trip_participants"
    # Created by the voyagesmart branch (vs_0002) on fresh databases only; trip-reminders
    # finds a day's travellers through it.
    __table_args__ = (
        sa.Index("ix_trip_participants_accepted_trip", "trip_id", "user_id",
                 postgresql_where=sa.text("invitation_status = 'accepted'"),
                 sqlite_where=sa.text("invitation_status = 'accepted'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType, index=True)
    role: Mapped[str] = mapped_column(sa.Text, default="participant")
    share_ratio: Mapped[Decimal | None] = mapped_column(sa.Numeric(6, 4))
    invited_email: Mapped[str | None] = mapped_column(sa.Text)
    invitation_status: Mapped[str] = mapped_column(sa.Text, default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class TripMedia(Base):
    __tablename__ = "trip_media"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True
    )
    day_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    type: Mapped[str] = mapped_column(sa.Text, default="image")
    url: Mapped[str] = mapped_column(sa.Text)
    caption: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    type: Mapped[str | None] = mapped_column(sa.Text)
    name: Mapped[str] = mapped_column(sa.Text)
    file_url: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Expense(Base):
    __tablename__ = "expenses"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=new_uuid)
    trip_id: Mapped[uuid.UUID] = mapped_column(
        UUIDType, sa.ForeignKey("trips.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    currency: Mapped[str] = mapped_column(sa.Text, default="EUR")
    date: Mapped[dt.date | None] = mapped_column(sa.Date)
    description: Mapped[str | None] = mapped_column(sa.Text)
    paid_by: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    receipt_url: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


VOYAGESMART_TABLES = [
    User.__table__,
    Subscription.__table__,
    SubscriptionHistory.__table__,
    PromoCode.__table__,
    PromoCodeRedemption.__table__,
    Trip.__table__,
    TripParticipant.__table__,
    TripMedia.__table__,
    Document.__table__,
    Expense.__table__,
]
