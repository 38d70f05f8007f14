"""Rows written the way VoyageSmart's app writes them: for the demo, tests and benchmarks.

Each method follows one code path of the app (named in its docstring) on a database
migrated by the `voyagesmart` branch, so the data has the shape production data has:

- signing up inserts `auth.users`; the sign-up trigger then grants a premium year with no
  Stripe id; the profile row in `users` is inserted on the first session;
- the Stripe webhook fills the Stripe columns of `user_subscriptions`;
- the cancel route sets `cancel_at_period_end`; the deletion webhook writes free/inactive;
- a promo redemption grants the code's tier, adds a redemption row, bumps `used_count`;
- creating a trip adds its owner as an `admin`, `accepted` participant;
- uploads store full public URLs (`…/storage/v1/object/public/<bucket>/<key>`), in URL
  columns and in the JSONB `documents` arrays.

Times are explicit (`at=`) so a test controls its clock; the sign-up trigger stamps the
database's clock, so `sign_up` moves that row to `at`, as if it had run then.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db import new_uuid, table_of
from app.models import (
    Accommodation,
    AuthUser,
    Document,
    Expense,
    PromoCode,
    PromoCodeRedemption,
    SubscriptionHistory,
    Transportation,
    Trip,
    TripChatMessage,
    TripMedia,
    TripParticipant,
    User,
    UserSubscription,
)

STORAGE_URL = "https://demo-project.supabase.co/storage/v1/object/public"
_ENCODE_URI_SAFE = ";,/?:@&=+$-_.!~*'()#"
YEAR = dt.timedelta(days=365)

auth_users = table_of(AuthUser)
users = table_of(User)
subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)
codes = table_of(PromoCode)
redemptions = table_of(PromoCodeRedemption)


def public_url(bucket: str, key: str) -> str:
    """What supabase-js `getPublicUrl(key).data.publicUrl` returns (`encodeURI` of the
    path: spaces and non-ASCII escaped, `/ ? # &` and the like left as they are)."""
    return f"{STORAGE_URL}/{bucket}/{quote(key, safe=_ENCODE_URI_SAFE)}"


def signed_url(bucket: str, key: str, token: str) -> str:
    """What supabase-js `createSignedUrl(key, …).data.signedUrl` returns: the server's
    `/object/sign/<bucket>/<key>?token=…` (the path decoded), then `encodeURI` of it all."""
    base = STORAGE_URL.removesuffix("/public")
    return f"{base}/sign/{quote(f'{bucket}/{key}', safe=_ENCODE_URI_SAFE)}?token={token}"


class AppWriter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert(self, table: sa.Table, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**values))

    # --- accounts -------------------------------------------------------------------
    def sign_up(self, email: str, *, at: dt.datetime, full_name: str | None = None,
                last_sign_in: dt.datetime | None = None,
                preferences: dict[str, Any] | None = None) -> uuid.UUID:
        """Supabase sign-up, the trigger's premium year, the profile row on first session
        (`AuthProvider.tsx`: id, email, full_name; `last_login` defaults to that moment)."""
        user_id = new_uuid()
        with self.engine.begin() as conn:
            conn.execute(auth_users.insert().values(
                id=user_id, email=email, created_at=at, last_sign_in_at=last_sign_in or at))
            # The trigger ran with the database's clock; place its row at sign-up time.
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                created_at=at, updated_at=at, valid_until=at + YEAR))
            conn.execute(users.insert().values(
                id=user_id, email=email, full_name=full_name or email.split("@")[0],
                preferences=preferences if preferences is not None else {},
                created_at=at, last_login=at))
        return user_id

    def profile_avatar(self, user_id: uuid.UUID, avatar_url: str) -> None:
        """The profile form: `avatar_url` is whatever the user typed (no upload writes it)."""
        with self.engine.begin() as conn:
            conn.execute(users.update().where(users.c.id == user_id)
                         .values(avatar_url=avatar_url))

    def signed_in(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        """A Supabase sign-in: only `auth.users.last_sign_in_at` moves."""
        with self.engine.begin() as conn:
            conn.execute(auth_users.update().where(auth_users.c.id == user_id)
                         .values(last_sign_in_at=at))

    def delete_account(self, user_id: uuid.UUID) -> None:
        """A user deletes their account (Supabase's `auth.admin.deleteUser`): `auth.users`
        goes, and with it, by `ON DELETE CASCADE`, `users` and `user_subscriptions`.
        `subscription_history` has no foreign key and stays.  SQLite cannot cascade from
        the attached `auth` file, so the cascade is spelled out there."""
        with self.engine.begin() as conn:
            if conn.dialect.name != "postgresql":
                conn.execute(subs.delete().where(subs.c.user_id == user_id))
                conn.execute(users.delete().where(users.c.id == user_id))
            conn.execute(auth_users.delete().where(auth_users.c.id == user_id))

    # --- Stripe (webhook and app routes) ----------------------------------------------
    def stripe_subscribed(self, user_id: uuid.UUID, *, tier: str, at: dt.datetime,
                          subscription_id: str | None = None,
                          customer_id: str | None = None,
                          period_end: dt.datetime | None = None,
                          status: str = "active") -> str:
        """checkout.session.completed then the webhook's `updateSubscription`: Stripe ids,
        tier, status, period end; history `checkout_completed`, `subscription_created`."""
        subscription_id = subscription_id or f"sub_{uuid.uuid4().hex[:14]}"
        customer_id = customer_id or f"cus_{uuid.uuid4().hex[:14]}"
        with self.engine.begin() as conn:
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                tier=tier, status=status, stripe_subscription_id=subscription_id,
                stripe_customer_id=customer_id,
                current_period_end=period_end or at + dt.timedelta(days=30),
                cancel_at_period_end=False, updated_at=at))
            conn.execute(history.insert(), [
                self._event(user_id, "checkout_completed", at, customer=customer_id),
                self._event(user_id, "subscription_created", at, tier=tier, status=status,
                            subscription=subscription_id, customer=customer_id),
            ])
        return subscription_id

    def stripe_updated(self, user_id: uuid.UUID, *, tier: str, at: dt.datetime) -> None:
        """customer.subscription.updated (a plan change): the webhook's `updateSubscription`
        writes the tier and records `subscription_created`, as it does for every update."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(subs).where(subs.c.user_id == user_id)).one()
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                tier=tier, updated_at=at))
            conn.execute(history.insert().values(self._event(
                user_id, "subscription_created", at, tier=tier, status=row.status,
                subscription=row.stripe_subscription_id, customer=row.stripe_customer_id)))

    def canceled_at_period_end(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        """`/api/stripe/cancel`: keep the tier, `cancel_at_period_end`, valid_until = the
        period end; history `subscription_canceled` (status active)."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(subs).where(subs.c.user_id == user_id)).one()
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                cancel_at_period_end=True, valid_until=row.current_period_end))
            conn.execute(history.insert().values(self._event(
                user_id, "subscription_canceled", at, tier=row.tier, status="active",
                subscription=row.stripe_subscription_id, customer=row.stripe_customer_id,
                details={"cancel_at_period_end": True,
                         "current_period_end": row.current_period_end.isoformat()})))

    def stripe_deleted(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        """customer.subscription.deleted: free/inactive, no Stripe subscription id;
        history `subscription_deleted`."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(subs).where(subs.c.user_id == user_id)).one()
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                tier="free", status="inactive", stripe_subscription_id=None,
                cancel_at_period_end=False, updated_at=at))
            conn.execute(history.insert().values(self._event(
                user_id, "subscription_deleted", at, tier="free", status="inactive",
                subscription=row.stripe_subscription_id, customer=row.stripe_customer_id)))

    # --- promo codes ------------------------------------------------------------------
    def promo_code(self, code: str, *, tier: str, at: dt.datetime,
                   max_uses: int | None = None, expires_at: dt.datetime | None = None,
                   used_count: int = 0, is_active: bool = True) -> uuid.UUID:
        """The admin route's insert (`promo-codes-simple`)."""
        code_id = new_uuid()
        self._insert(codes, id=code_id, code=code, tier=tier, max_uses=max_uses,
                     used_count=used_count, expires_at=expires_at, is_active=is_active,
                     description=f"Codice promozionale per piano {tier}", created_at=at,
                     updated_at=at)
        return code_id

    def redeem(self, user_id: uuid.UUID, code_id: uuid.UUID, at: dt.datetime, *,
               record_row: bool = True, count_use: bool = True) -> None:
        """`/api/promo-codes/redeem`: the tier until the code expires (or 3 months), a
        redemption row and the `used_count` RPC (each of which the app lets fail), and a
        `promo_code_redemption` history row."""
        with self.engine.begin() as conn:
            code = conn.execute(sa.select(codes).where(codes.c.id == code_id)).one()
            until = code.expires_at or at + dt.timedelta(days=91)
            conn.execute(subs.update().where(subs.c.user_id == user_id).values(
                tier=code.tier, status="active", valid_until=until, updated_at=at))
            if record_row:
                conn.execute(redemptions.insert().values(
                    id=new_uuid(), promo_code_id=code_id, user_id=user_id, redeemed_at=at))
            if count_use:
                conn.execute(codes.update().where(codes.c.id == code_id)
                             .values(used_count=codes.c.used_count + 1))
            conn.execute(history.insert().values(self._event(
                user_id, "promo_code_redemption", at, tier=code.tier, status="active",
                details={"promo_code": code.code, "promo_code_id": str(code_id),
                         "valid_until": until.isoformat()})))

    # --- trips and files --------------------------------------------------------------
    def create_trip(self, owner_id: uuid.UUID, *, name: str, at: dt.datetime,
                    start_date: dt.date | None = None, end_date: dt.date | None = None,
                    destination: str | None = None) -> uuid.UUID:
        """`/trips/new`: the trip, then its owner as participant (admin, accepted)."""
        trip_id = new_uuid()
        with self.engine.begin() as conn:
            conn.execute(table_of(Trip).insert().values(
                id=trip_id, name=name, destination=destination, start_date=start_date,
                end_date=end_date, preferences={"currency": "EUR"}, is_private=True,
                budget_total=Decimal("1500.00"), owner_id=owner_id, created_at=at,
                updated_at=at))
            conn.execute(table_of(TripParticipant).insert().values(
                id=new_uuid(), trip_id=trip_id, user_id=owner_id, role="admin",
                invitation_status="accepted", created_at=at))
        return trip_id

    def invite(self, trip_id: uuid.UUID, *, at: dt.datetime, user_id: uuid.UUID | None = None,
               email: str | None = None, status: str = "accepted", role: str = "member"
               ) -> None:
        self._insert(table_of(TripParticipant), id=new_uuid(), trip_id=trip_id,
                     user_id=user_id, invited_email=email, role=role,
                     invitation_status=status, created_at=at)

    def journal_media(self, trip_id: uuid.UUID, user_id: uuid.UUID, key: str,
                      at: dt.datetime) -> str:
        """`SimpleMediaUploader`: a `trip-media` upload, its URL in `trip_media.url`."""
        url = public_url("trip-media", key)
        self._insert(table_of(TripMedia), id=new_uuid(), trip_id=trip_id, user_id=user_id,
                     type="photo", url=url, created_at=at)
        return url

    def chat_attachment(self, trip_id: uuid.UUID, user_id: uuid.UUID, key: str,
                        at: dt.datetime) -> str:
        """`TripChat`: a `trip-media` upload under `<trip>/`, in `attachment_url`."""
        url = public_url("trip-media", key)
        self._insert(table_of(TripChatMessage), id=new_uuid(), trip_id=trip_id,
                     user_id=user_id, content=f"Shared a file: {key.rsplit('/', 1)[-1]}",
                     is_system_message=False, attachment_url=url,
                     attachment_type="image/jpeg", created_at=at)
        return url

    def accommodation(self, trip_id: uuid.UUID, name: str, keys: list[str],
                      at: dt.datetime) -> list[str]:
        """`AccommodationModal`: `trip-documents` uploads in the JSONB `documents`."""
        docs = [{"name": key.rsplit("/", 1)[-1], "url": public_url("trip-documents", key),
                 "type": "application/pdf"} for key in keys]
        self._insert(table_of(Accommodation), id=new_uuid(), trip_id=trip_id, name=name,
                     documents=docs, created_at=at, updated_at=at)
        return [d["url"] for d in docs]

    def transportation(self, trip_id: uuid.UUID, kind: str, keys: list[str],
                       at: dt.datetime) -> list[str]:
        """`TransportationModal`: `trip-documents` uploads in the JSONB `documents`."""
        docs = [{"name": key.rsplit("/", 1)[-1], "url": public_url("trip-documents", key),
                 "type": "application/pdf"} for key in keys]
        self._insert(table_of(Transportation), id=new_uuid(), trip_id=trip_id, type=kind,
                     documents=docs, created_at=at, updated_at=at)
        return [d["url"] for d in docs]

    def document(self, trip_id: uuid.UUID, user_id: uuid.UUID, url: str, at: dt.datetime
                 ) -> None:
        self._insert(table_of(Document), id=new_uuid(), trip_id=trip_id, user_id=user_id,
                     type="pdf", name=url.rsplit("/", 1)[-1], file_url=url, created_at=at,
                     updated_at=at)

    def expense(self, trip_id: uuid.UUID, user_id: uuid.UUID, at: dt.datetime,
                receipt_url: str | None = None) -> None:
        self._insert(table_of(Expense), id=new_uuid(), trip_id=trip_id,
                     amount=Decimal("42.50"), currency="EUR", date=at.date(),
                     description="Dinner", paid_by=user_id, receipt_url=receipt_url,
                     created_at=at, updated_at=at)

    # --- history ----------------------------------------------------------------------
    @staticmethod
    def _event(user_id: uuid.UUID, event_type: str, at: dt.datetime, *,
               tier: str | None = None, status: str | None = None,
               subscription: str | None = None, customer: str | None = None,
               details: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": new_uuid(), "user_id": user_id, "event_type": event_type, "tier": tier,
                "status": status, "stripe_subscription_id": subscription,
                "stripe_customer_id": customer, "event_timestamp": at, "created_at": at,
                "details": details or {}}
