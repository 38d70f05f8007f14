"""VoyageSmart's real shape, replacing the one vs_0001 took from its design documents.

Fresh databases only (development, tests, the demo): `migrate --service-only` never runs
the `voyagesmart` branch, so a production VoyageSmart database is never touched.  A local
database migrated with the earlier shape is moved over with its rows (demo and test data:
users, trips and their children, promo codes, history; each user's latest subscription
becomes their `user_subscriptions` row, its Stripe status mapped into the CHECK's values);
the downgrade moves the rows back.

What it creates:

1. A stand-in for Supabase's `auth` schema, only where Supabase's is absent: on
   PostgreSQL the schema with `auth.users(id, email, created_at, last_sign_in_at)`,
   `auth.uid()`, `auth.role()` and the roles `anon`, `authenticated` and `service_role`
   (the last bypasses row-level security, as on Supabase); on SQLite `auth.users` in a
   sibling database file attached as `auth` to every connection (`app.db.attach_auth`).
   SQLite has no schemas, and a table of another name would need another spelling in every
   statement; attached, `auth.users` reads the same on both dialects, and only what SQLite
   cannot do across files is lost there: the foreign keys to `auth.users` (enforced on
   PostgreSQL) and a stored trigger on it (a TEMP trigger per connection stands in).
   Roles belong to the whole PostgreSQL cluster, so the downgrade leaves them.
2. VoyageSmart's tables as its SQL and its code write them: `user_subscriptions` (CHECK
   tier and status, → `auth.users`), the `subscriptions` plan catalogue (seeded as the
   app's migration seeds it), `subscription_history` (user_id NOT NULL), promo codes that
   grant a tier (`used_count`, `expires_at`, `is_active`), `users` → `auth.users`, trips and
   participants with the app's defaults and unique keys, media, documents, expenses,
   `accommodations` and `transportation` (JSONB `documents`), `trip_chat_messages`.
3. The sign-up trigger that grants a premium year (Supabase's
   `ensure_user_subscription_trigger`).
4. On PostgreSQL, row-level security with the app's policies on `users`, `trips`,
   `trip_participants`, `subscription_history`, `user_subscriptions`, `subscriptions`,
   `accommodations` and `transportation`, and Supabase's table grants to its roles.

Revision ID: vs_0003
Revises: vs_0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "vs_0003"
down_revision: str | Sequence[str] | None = "vs_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)
STANDIN_COMMENT = "voyagesmart-cron stand-in for Supabase auth"
TIERS = "tier IN ('free', 'premium', 'ai')"

# Tables of the imagined shape (vs_0001), children first.
OLD_TABLES = ["promo_code_redemptions", "trip_participants", "trip_media", "documents",
              "expenses", "trips", "subscriptions", "subscription_history", "promo_codes",
              "users"]
# Tables of the real shape, children first.
NEW_TABLES = ["trip_chat_messages", "accommodations", "transportation", "expenses",
              "documents", "trip_media", "trip_participants", "trips",
              "promo_code_redemptions", "promo_codes", "subscription_history",
              "subscriptions", "user_subscriptions", "users"]
RLS_TABLES = ["users", "trips", "trip_participants", "subscription_history",
              "user_subscriptions", "subscriptions", "accommodations", "transportation"]


def _pg() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _now_default() -> sa.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def _uuid_default() -> dict[str, Any]:
    return {"server_default": sa.text("gen_random_uuid()")} if _pg() else {}


# --- reading rows with their types, whatever the dialect stores -------------------------
def _read(name: str, columns: dict[str, sa.types.TypeEngine[Any]]) -> list[dict[str, Any]]:
    table = sa.table(name, *(sa.column(c, t) for c, t in columns.items()))
    return [dict(row._mapping) for row in op.get_bind().execute(sa.select(table))]


def _write(name: str, rows: list[dict[str, Any]], columns: dict[str, Any],
           schema: str | None = None) -> None:
    if rows:
        table = sa.table(name, *(sa.column(c, t) for c, t in columns.items()), schema=schema)
        op.get_bind().execute(table.insert(), rows)


U, T, D, B, INT, N = sa.Uuid(), sa.Text(), sa.Date(), sa.Boolean(), sa.Integer(), sa.Numeric()
OLD = {
    "users": {"id": U, "email": T, "full_name": T, "avatar_url": T, "preferences": JSON,
              "created_at": TS, "last_login": TS, "stripe_customer_id": T},
    "subscriptions": {"id": U, "user_id": U, "stripe_subscription_id": T,
                      "stripe_customer_id": T, "tier": T, "status": T,
                      "current_period_start": TS, "current_period_end": TS,
                      "cancel_at_period_end": B, "canceled_at": TS, "trial_start": TS,
                      "trial_end": TS, "created_at": TS, "updated_at": TS},
    "subscription_history": {"id": U, "user_id": U, "event_type": T, "tier": T, "status": T,
                             "stripe_subscription_id": T, "stripe_customer_id": T,
                             "event_timestamp": TS, "details": JSON, "created_at": TS},
    "promo_codes": {"id": U, "code": T, "stripe_promotion_code_id": T, "discount_type": T,
                    "discount_value": N, "max_redemptions": INT, "current_redemptions": INT,
                    "valid_from": TS, "valid_until": TS, "active": B, "created_by": U,
                    "created_at": TS},
    "promo_code_redemptions": {"id": U, "promo_code_id": U, "user_id": U,
                               "subscription_id": U, "redeemed_at": TS},
    "trips": {"id": U, "name": T, "description": T, "start_date": D, "end_date": D,
              "destination": T, "preferences": JSON, "is_private": B, "budget_total": N,
              "owner_id": U, "created_at": TS, "updated_at": TS},
    "trip_participants": {"id": U, "trip_id": U, "user_id": U, "role": T, "share_ratio": N,
                          "invited_email": T, "invitation_status": T, "created_at": TS},
    "trip_media": {"id": U, "trip_id": U, "day_id": U, "user_id": U, "type": T, "url": T,
                   "caption": T, "created_at": TS},
    "documents": {"id": U, "trip_id": U, "user_id": U, "type": T, "name": T, "file_url": T,
                  "created_at": TS, "updated_at": TS},
    "expenses": {"id": U, "trip_id": U, "amount": N, "currency": T, "date": D,
                 "description": T, "paid_by": U, "receipt_url": T, "created_at": TS,
                 "updated_at": TS},
}
NEW_SUBS = {"id": U, "user_id": U, "tier": T, "status": T, "valid_until": TS,
            "payment_id": T, "stripe_subscription_id": T, "stripe_customer_id": T,
            "current_period_end": TS, "cancel_at_period_end": B, "created_at": TS,
            "updated_at": TS}
NEW_PROMO = {"id": U, "code": T, "tier": T, "max_uses": INT, "used_count": INT,
             "expires_at": TS, "is_active": B, "description": T, "created_at": TS,
             "updated_at": TS}
AUTH_USERS = {"id": U, "email": T, "created_at": TS, "last_sign_in_at": TS}


# --- the auth stand-in ------------------------------------------------------------------
def _create_role(name: str, extra: str = "") -> None:
    # Roles are cluster-wide: another database (or a parallel test run) may create the
    # same one at the same moment.
    op.execute(f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
            CREATE ROLE {name} NOLOGIN NOINHERIT {extra};
          END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$""")


def _supabase_auth_present() -> bool:
    return op.get_bind().execute(sa.text("SELECT to_regclass('auth.users')")).scalar() is not None


def _create_auth_standin() -> None:
    if not _pg():
        op.create_table(
            "users",
            sa.Column("id", sa.Uuid(), primary_key=True),
            sa.Column("email", sa.Text()),
            sa.Column("created_at", TS),
            sa.Column("last_sign_in_at", TS),
            schema="auth",
        )
        return
    if _supabase_auth_present():
        return
    _create_role("anon")
    _create_role("authenticated")
    _create_role("service_role", "BYPASSRLS")
    op.execute("CREATE SCHEMA auth")
    op.execute(f"COMMENT ON SCHEMA auth IS '{STANDIN_COMMENT}'")
    op.execute("""
        CREATE TABLE auth.users (
          id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
          email text,
          created_at timestamptz DEFAULT now(),
          last_sign_in_at timestamptz
        )""")
    # Supabase reads the caller from the request's JWT claims; a plain connection has
    # none, so both are NULL and every `auth.uid() = …` policy shows nothing.
    for name, claim, kind in (("uid", "sub", "uuid"), ("role", "role", "text")):
        op.execute(f"""
            CREATE FUNCTION auth.{name}() RETURNS {kind} LANGUAGE sql STABLE AS $$
              SELECT coalesce(
                nullif(current_setting('request.jwt.claim.{claim}', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> '{claim}'
              )::{kind}
            $$""")
    op.execute("GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role")
    op.execute("GRANT SELECT ON auth.users TO service_role")


def _drop_auth_standin() -> None:
    if not _pg():
        op.drop_table("users", schema="auth")
        return
    comment = op.get_bind().execute(sa.text(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'auth'"
    )).scalar()
    if comment == STANDIN_COMMENT:
        op.execute("DROP SCHEMA auth CASCADE")


# --- the real tables --------------------------------------------------------------------
def _create_real_tables() -> None:
    pg = _pg()
    auth_fk = ([sa.ForeignKeyConstraint(["id"], ["auth.users.id"], ondelete="CASCADE",
                                        name=op.f("fk_users_id_users"))] if pg else [])
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("full_name", sa.Text()),
        sa.Column("avatar_url", sa.Text()),
        sa.Column("preferences", JSON, server_default=sa.text("'{}'")),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("last_login", TS, server_default=_now_default()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        *auth_fk,
    )
    sub_fk = ([sa.ForeignKeyConstraint(["user_id"], ["auth.users.id"], ondelete="CASCADE",
                                       name=op.f("fk_user_subscriptions_user_id_users"))]
              if pg else [])
    op.create_table(
        "user_subscriptions",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("valid_until", TS),
        sa.Column("payment_id", sa.Text()),
        sa.Column("stripe_subscription_id", sa.Text()),
        sa.Column("stripe_customer_id", sa.Text()),
        sa.Column("current_period_end", TS),
        sa.Column("cancel_at_period_end", sa.Boolean(), server_default=sa.false()),
        sa.Column("created_at", TS, server_default=_now_default()),
        sa.Column("updated_at", TS, server_default=_now_default()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_subscriptions")),
        sa.CheckConstraint(TIERS, name=op.f("ck_user_subscriptions_tier")),
        sa.CheckConstraint("status IN ('active', 'inactive', 'canceled')",
                           name=op.f("ck_user_subscriptions_status")),
        *sub_fk,
    )
    op.create_index(op.f("ix_user_subscriptions_user_id"), "user_subscriptions", ["user_id"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("currency", sa.Text(), server_default="EUR"),
        sa.Column("interval", sa.Text()),
        sa.Column("features", JSON),
        sa.Column("created_at", TS, server_default=_now_default()),
        sa.Column("updated_at", TS, server_default=_now_default()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.CheckConstraint(TIERS, name=op.f("ck_subscriptions_tier")),
        sa.CheckConstraint("interval IN ('month', 'year')",
                           name=op.f("ck_subscriptions_interval")),
    )
    op.create_table(
        "subscription_history",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text()),
        sa.Column("status", sa.Text()),
        sa.Column("stripe_subscription_id", sa.Text()),
        sa.Column("stripe_customer_id", sa.Text()),
        sa.Column("event_timestamp", TS, nullable=False, server_default=_now_default()),
        sa.Column("details", JSON),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_history")),
    )
    op.create_index(op.f("ix_subscription_history_user_id"), "subscription_history",
                    ["user_id"])
    op.create_index(op.f("ix_subscription_history_event_timestamp"), "subscription_history",
                    ["event_timestamp"])
    op.create_table(
        "promo_codes",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("max_uses", sa.Integer()),
        sa.Column("used_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("expires_at", TS),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("description", sa.Text()),
        sa.Column("created_at", TS, server_default=_now_default()),
        sa.Column("updated_at", TS, server_default=_now_default()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_codes")),
        sa.UniqueConstraint("code", name=op.f("uq_promo_codes_code")),
        sa.CheckConstraint(TIERS, name=op.f("ck_promo_codes_tier")),
    )
    op.create_index(op.f("ix_promo_codes_expires_at"), "promo_codes", ["expires_at"])
    op.create_table(
        "promo_code_redemptions",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("promo_code_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("redeemed_at", TS, server_default=_now_default()),
        sa.ForeignKeyConstraint(["promo_code_id"], ["promo_codes.id"], ondelete="CASCADE",
                                name=op.f("fk_promo_code_redemptions_promo_code_id_promo_codes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_code_redemptions")),
        sa.UniqueConstraint("promo_code_id", "user_id",
                            name=op.f("uq_promo_code_redemptions_promo_code_id")),
    )
    op.create_index(op.f("ix_promo_code_redemptions_user_id"), "promo_code_redemptions",
                    ["user_id"])
    op.create_table(
        "trips",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("start_date", sa.Date()),
        sa.Column("end_date", sa.Date()),
        sa.Column("destination", sa.Text()),
        sa.Column("preferences", JSON, server_default=sa.text("'{}'")),
        sa.Column("is_private", sa.Boolean(), server_default=sa.true()),
        sa.Column("budget_total", sa.Numeric(10, 2)),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now_default()),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_trips_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trips")),
    )
    op.create_index(op.f("ix_trips_owner_id"), "trips", ["owner_id"])
    op.create_index(op.f("ix_trips_start_date"), "trips", ["start_date"])
    op.create_table(
        "trip_participants",
        sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
        sa.Column("trip_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid()),
        sa.Column("role", sa.Text(), server_default="member"),
        sa.Column("share_ratio", sa.Numeric(5, 2), server_default="1.0"),
        sa.Column("invited_email", sa.Text()),
        sa.Column("invitation_status", sa.Text(), server_default="pending"),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.ForeignKeyConstraint(["trip_id"], ["trips.id"], ondelete="CASCADE",
                                name=op.f("fk_trip_participants_trip_id_trips")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_trip_participants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trip_participants")),
        sa.UniqueConstraint("trip_id", "user_id", name=op.f("uq_trip_participants_trip_id")),
        sa.UniqueConstraint("trip_id", "invited_email",
                            name=op.f("uq_trip_participants_trip_id_invited_email")),
    )
    op.create_index(op.f("ix_trip_participants_trip_id"), "trip_participants", ["trip_id"])
    op.create_index(op.f("ix_trip_participants_user_id"), "trip_participants", ["user_id"])
    accepted = sa.text("invitation_status = 'accepted'")
    op.create_index("ix_trip_participants_accepted_trip", "trip_participants",
                    ["trip_id", "user_id"], postgresql_where=accepted, sqlite_where=accepted)

    def trip_child(name: str, *columns: sa.Column[Any], user_column: str | None = "user_id"
                   ) -> None:
        fks = [sa.ForeignKeyConstraint(["trip_id"], ["trips.id"], ondelete="CASCADE",
                                       name=op.f(f"fk_{name}_trip_id_trips"))]
        if user_column:
            fks.append(sa.ForeignKeyConstraint(
                [user_column], ["users.id"], ondelete="SET NULL",
                name=op.f(f"fk_{name}_{user_column}_users")))
        op.create_table(
            name,
            sa.Column("id", sa.Uuid(), nullable=False, **_uuid_default()),
            sa.Column("trip_id", sa.Uuid(), nullable=False),
            *columns,
            *fks,
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        )
        op.create_index(op.f(f"ix_{name}_trip_id"), name, ["trip_id"])

    trip_child(
        "trip_media",
        sa.Column("day_id", sa.Uuid()),
        sa.Column("user_id", sa.Uuid()),
        sa.Column("type", sa.Text(), server_default="photo"),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("caption", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
    )
    trip_child(
        "documents",
        sa.Column("user_id", sa.Uuid()),
        sa.Column("type", sa.Text()),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("file_url", sa.Text(), nullable=False),
        sa.Column("extracted_data", JSON),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now_default()),
    )
    trip_child(
        "expenses",
        sa.Column("category", sa.Text()),
        sa.Column("amount", sa.Numeric(10, 2), nullable=False),
        sa.Column("currency", sa.Text(), server_default="USD"),
        sa.Column("date", sa.Date(), server_default=sa.text("CURRENT_DATE")),
        sa.Column("description", sa.Text()),
        sa.Column("paid_by", sa.Uuid()),
        sa.Column("split_type", sa.Text(), server_default="equal"),
        sa.Column("receipt_url", sa.Text()),
        sa.Column("status", sa.Text(), server_default="settled"),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now_default()),
        user_column="paid_by",
    )
    trip_child(
        "accommodations",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text()),
        sa.Column("check_in_date", sa.Date()),
        sa.Column("check_out_date", sa.Date()),
        sa.Column("address", sa.Text()),
        sa.Column("booking_reference", sa.Text()),
        sa.Column("contact_info", sa.Text()),
        sa.Column("cost", sa.Numeric(10, 2)),
        sa.Column("currency", sa.Text(), server_default="USD"),
        sa.Column("documents", JSON, server_default=sa.text("'[]'")),
        sa.Column("notes", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now_default()),
        user_column=None,
    )
    trip_child(
        "transportation",
        sa.Column("day_id", sa.Uuid()),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text()),
        sa.Column("booking_reference", sa.Text()),
        sa.Column("departure_time", TS),
        sa.Column("departure_location", sa.Text()),
        sa.Column("arrival_time", TS),
        sa.Column("arrival_location", sa.Text()),
        sa.Column("notes", sa.Text()),
        sa.Column("status", sa.Text(), server_default="confirmed"),
        sa.Column("cost", sa.Numeric(10, 2)),
        sa.Column("currency", sa.Text(), server_default="USD"),
        sa.Column("documents", JSON, server_default=sa.text("'[]'")),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now_default()),
        user_column=None,
    )
    trip_child(
        "trip_chat_messages",
        sa.Column("user_id", sa.Uuid()),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("is_system_message", sa.Boolean(), server_default=sa.false()),
        sa.Column("attachment_url", sa.Text()),
        sa.Column("attachment_type", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=_now_default()),
        sa.Column("updated_at", TS),
    )


def _seed_plans() -> None:
    now = dt.datetime.now(dt.UTC)
    plans = [
        ("Free", "Basic plan with limited features", "free", Decimal("0"),
         {"max_trips": 3, "accommodations": False, "transportation": False}),
        ("Premium", "Premium plan with all features", "premium", Decimal("4.99"),
         {"max_trips": None, "accommodations": True, "transportation": True}),
        ("AI Assistant", "Premium plan with AI features", "ai", Decimal("9.99"),
         {"max_trips": None, "accommodations": True, "transportation": True,
          "ai_assistant": True}),
    ]
    _write("subscriptions", [
        {"id": uuid.uuid4(), "name": name, "description": text, "tier": tier, "price": price,
         "currency": "EUR", "interval": "month", "features": features, "created_at": now,
         "updated_at": now}
        for name, text, tier, price, features in plans
    ], {"id": U, "name": T, "description": T, "tier": T, "price": N, "currency": T,
        "interval": T, "features": JSON, "created_at": TS, "updated_at": TS})


# --- Supabase's trigger, row-level security and grants ----------------------------------
def _signup_trigger() -> None:
    if not _pg():
        from app.db import install_sqlite_signup_trigger

        cursor = op.get_bind().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            install_sqlite_signup_trigger(cursor)
        finally:
            cursor.close()
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION public.ensure_user_subscription() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
        BEGIN
          IF NOT EXISTS (SELECT 1 FROM public.user_subscriptions WHERE user_id = NEW.id) THEN
            INSERT INTO public.user_subscriptions (user_id, tier, status, valid_until)
            VALUES (NEW.id, 'premium', 'active', now() + interval '1 year');
          END IF;
          RETURN NEW;
        END $$""")
    op.execute("DROP TRIGGER IF EXISTS ensure_user_subscription_trigger ON auth.users")
    op.execute("""
        CREATE TRIGGER ensure_user_subscription_trigger AFTER INSERT ON auth.users
        FOR EACH ROW EXECUTE FUNCTION public.ensure_user_subscription()""")


_TRIP_MEMBER = ("EXISTS (SELECT 1 FROM public.trips t WHERE t.id = {table}.trip_id AND "
                "(t.owner_id = auth.uid() OR public.is_trip_participant(t.id, auth.uid())))")
POLICIES: list[tuple[str, str, str, str | None, str | None, str | None]] = [
    # (table, policy, command, role, USING, WITH CHECK) — as VoyageSmart's SQL has them.
    ("users", "Users can view their own profile", "SELECT", None, "auth.uid() = id", None),
    ("users", "Users can update their own profile", "UPDATE", None, "auth.uid() = id", None),
    ("trips", "Users can view their own trips", "SELECT", None,
     "owner_id = auth.uid() OR public.is_trip_participant(trips.id, auth.uid())", None),
    ("trips", "Users can create their own trips", "INSERT", None, None,
     "owner_id = auth.uid()"),
    ("trips", "Trip owners can update their trips", "UPDATE", None, "owner_id = auth.uid()",
     None),
    ("trips", "Trip owners can delete their trips", "DELETE", None, "owner_id = auth.uid()",
     None),
    ("trip_participants", "trip_participants_access", "ALL", None,
     "EXISTS (SELECT 1 FROM public.trips t WHERE t.id = trip_participants.trip_id AND "
     "t.owner_id = auth.uid()) OR public.is_trip_participant(trip_participants.trip_id, "
     "auth.uid())", None),
    ("subscription_history", "Allow user to read own history", "SELECT", None,
     "user_id = auth.uid()", None),
    ("subscription_history", "Allow authenticated users to insert own history", "INSERT",
     "authenticated", None, "user_id = auth.uid()"),
    ("subscription_history", "Allow service_role to insert", "INSERT", "service_role", None,
     "true"),
    ("user_subscriptions", "Users can read their own subscriptions", "SELECT", None,
     "auth.uid() = user_id", None),
    ("user_subscriptions", "Service role can manage user_subscriptions", "ALL", None,
     "auth.role() = 'service_role'", None),
    ("subscriptions", "Anyone can read subscription plans", "SELECT", None, "true", None),
    ("subscriptions", "Service role can manage subscriptions", "ALL", None,
     "auth.role() = 'service_role'", None),
    *[(table, f"Users can {verb} {table} of their trips", cmd, None,
       None if cmd == "INSERT" else _TRIP_MEMBER.format(table=f"public.{table}"),
       _TRIP_MEMBER.format(table=f"public.{table}") if cmd == "INSERT" else None)
      for table in ("accommodations", "transportation")
      for verb, cmd in (("view", "SELECT"), ("insert", "INSERT"), ("update", "UPDATE"),
                        ("delete", "DELETE"))],
]


def _row_level_security() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION public.is_trip_participant(trip_uuid uuid, user_uuid uuid)
        RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
          SELECT EXISTS (SELECT 1 FROM public.trip_participants
                         WHERE trip_id = trip_uuid AND user_id = user_uuid
                           AND invitation_status = 'accepted')
        $$""")
    for table in RLS_TABLES:
        op.execute(f"ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY")
    for table, name, command, role, using, check in POLICIES:
        sql = f'CREATE POLICY "{name}" ON public.{table} FOR {command}'
        if role:
            sql += f" TO {role}"
        if using:
            sql += f" USING ({using})"
        if check:
            sql += f" WITH CHECK ({check})"
        op.execute(sql)
    # Supabase grants its API roles every privilege on public tables; RLS then decides.
    roles = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM pg_roles WHERE rolname IN "
        "('anon', 'authenticated', 'service_role')")).scalar()
    if roles == 3:
        op.execute("GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role")
        tables = ", ".join(f"public.{t}" for t in NEW_TABLES)
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} "
                   "TO anon, authenticated, service_role")


# --- moving rows between the shapes -----------------------------------------------------
_LIVE_STRIPE = ("active", "trialing", "past_due")


def _stripe_status(status: str | None) -> str:
    if status in _LIVE_STRIPE:
        return "active"
    return "canceled" if status in ("canceled", "incomplete_expired") else "inactive"


def _tier(value: str | None) -> str:
    return value if value in ("free", "premium", "ai") else "free"


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _upgrade_rows(old: dict[str, list[dict[str, Any]]]) -> None:
    users = old["users"]
    _write("users", [{"id": u["id"], "email": u["email"], "created_at": u["created_at"],
                      "last_sign_in_at": u["last_login"]} for u in users], AUTH_USERS,
           schema="auth")
    known = {u["id"] for u in users}
    keep = ("id", "email", "full_name", "avatar_url", "preferences", "created_at",
            "last_login")
    _write("users", [{k: u[k] for k in keep} for u in users],
           {k: OLD["users"][k] for k in keep})
    latest: dict[Any, dict[str, Any]] = {}
    for sub in old["subscriptions"]:
        seen = latest.get(sub["user_id"])
        if sub["user_id"] in known and (
                seen is None or (_utc(sub["updated_at"]) or dt.datetime.min.replace(
                    tzinfo=dt.UTC)) > (_utc(seen["updated_at"]) or dt.datetime.min.replace(
                        tzinfo=dt.UTC))):
            latest[sub["user_id"]] = sub
    subs = []
    for user in users:
        sub = latest.get(user["id"])
        created = _utc(user["created_at"]) or dt.datetime.now(dt.UTC)
        if sub is None:  # what the app's 20240601 migration gave every existing user
            subs.append({"id": uuid.uuid4(), "user_id": user["id"], "tier": "premium",
                         "status": "active", "valid_until": created + dt.timedelta(days=365),
                         "payment_id": None, "stripe_subscription_id": None,
                         "stripe_customer_id": user["stripe_customer_id"],
                         "current_period_end": None, "cancel_at_period_end": False,
                         "created_at": created, "updated_at": created})
            continue
        subs.append({"id": sub["id"], "user_id": user["id"], "tier": _tier(sub["tier"]),
                     "status": _stripe_status(sub["status"]),
                     "valid_until": sub["current_period_end"], "payment_id": None,
                     "stripe_subscription_id": sub["stripe_subscription_id"],
                     "stripe_customer_id": sub["stripe_customer_id"],
                     "current_period_end": sub["current_period_end"],
                     "cancel_at_period_end": bool(sub["cancel_at_period_end"]),
                     "created_at": sub["created_at"], "updated_at": sub["updated_at"]})
    _write("user_subscriptions", subs, NEW_SUBS)
    _write("subscription_history", [h for h in old["subscription_history"]
                                    if h["user_id"] is not None], OLD["subscription_history"])
    _write("promo_codes", [{
        "id": p["id"], "code": p["code"], "tier": "premium", "max_uses": p["max_redemptions"],
        "used_count": p["current_redemptions"] or 0, "expires_at": p["valid_until"],
        "is_active": p["active"], "description": f"{p['discount_type']} "
        f"{p['discount_value']}", "created_at": p["created_at"], "updated_at": p["created_at"],
    } for p in old["promo_codes"]], NEW_PROMO)
    redemption = {k: OLD["promo_code_redemptions"][k]
                  for k in ("id", "promo_code_id", "user_id", "redeemed_at")}
    _write("promo_code_redemptions", [{k: r[k] for k in redemption}
                                      for r in old["promo_code_redemptions"]], redemption)
    trips = [t for t in old["trips"] if t["owner_id"] in known]
    _write("trips", trips, OLD["trips"])
    trip_ids = {t["id"] for t in trips}

    def children(name: str, user_key: str) -> None:
        rows = [dict(r, **{user_key: r[user_key] if r[user_key] in known else None})
                for r in old[name] if r["trip_id"] in trip_ids]
        _write(name, rows, OLD[name])

    children("trip_participants", "user_id")
    children("trip_media", "user_id")
    children("expenses", "paid_by")
    for doc in old["documents"]:
        doc["file_url"] = doc["file_url"] or ""
    children("documents", "user_id")


def _downgrade_rows(new: dict[str, list[dict[str, Any]]]) -> None:
    now = dt.datetime.now(dt.UTC)
    subs = {s["user_id"]: s for s in new["user_subscriptions"]}
    _write("users", [dict(u, stripe_customer_id=(subs.get(u["id"]) or {}).get(
        "stripe_customer_id")) for u in new["users"]], OLD["users"])
    _write("subscriptions", [{
        "id": s["id"], "user_id": s["user_id"],
        "stripe_subscription_id": s["stripe_subscription_id"],
        "stripe_customer_id": s["stripe_customer_id"], "tier": s["tier"],
        "status": "active" if s["status"] == "active" else "canceled",
        "current_period_start": None, "current_period_end": s["current_period_end"],
        "cancel_at_period_end": bool(s["cancel_at_period_end"]), "canceled_at": None,
        "trial_start": None, "trial_end": None, "created_at": s["created_at"] or now,
        "updated_at": s["updated_at"] or now,
    } for s in new["user_subscriptions"] if s["stripe_subscription_id"]], OLD["subscriptions"])
    _write("subscription_history", new["subscription_history"], OLD["subscription_history"])
    _write("promo_codes", [{
        "id": p["id"], "code": p["code"], "stripe_promotion_code_id": None,
        "discount_type": "percent", "discount_value": Decimal(0),
        "max_redemptions": p["max_uses"], "current_redemptions": p["used_count"],
        "valid_from": None, "valid_until": p["expires_at"], "active": p["is_active"],
        "created_by": None, "created_at": p["created_at"] or now,
    } for p in new["promo_codes"]], OLD["promo_codes"])
    _write("promo_code_redemptions", [dict(r, subscription_id=None,
                                           redeemed_at=r["redeemed_at"] or now)
                                      for r in new["promo_code_redemptions"]],
           OLD["promo_code_redemptions"])
    _write("trips", [dict(t, is_private=bool(t["is_private"])) for t in new["trips"]],
           OLD["trips"])
    _write("trip_participants", [dict(p, role=p["role"] or "member",
                                      invitation_status=p["invitation_status"] or "pending")
                                 for p in new["trip_participants"]], OLD["trip_participants"])
    _write("trip_media", [dict(m, type=m["type"] or "photo") for m in new["trip_media"]],
           OLD["trip_media"])
    _write("documents", new["documents"], OLD["documents"])
    _write("expenses", [dict(e, currency=e["currency"] or "USD") for e in new["expenses"]],
           OLD["expenses"])


def _sibling(filename: str) -> ModuleType:
    """An earlier revision of this branch, to rebuild the shape it created."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    old = {name: _read(name, OLD[name]) for name in OLD}
    for name in OLD_TABLES:
        op.drop_table(name)
    _create_auth_standin()
    _create_real_tables()
    _upgrade_rows(old)
    _seed_plans()
    _signup_trigger()
    if _pg():
        _row_level_security()


def downgrade() -> None:
    columns = {
        "users": {k: OLD["users"][k] for k in OLD["users"] if k != "stripe_customer_id"},
        "user_subscriptions": NEW_SUBS,
        "subscription_history": OLD["subscription_history"],
        "promo_codes": NEW_PROMO,
        "promo_code_redemptions": {k: OLD["promo_code_redemptions"][k]
                                   for k in ("id", "promo_code_id", "user_id", "redeemed_at")},
        "trips": OLD["trips"],
        "trip_participants": OLD["trip_participants"],
        "trip_media": OLD["trip_media"],
        "documents": OLD["documents"],
        "expenses": OLD["expenses"],
    }
    new = {name: _read(name, cols) for name, cols in columns.items()}
    pg = _pg()
    if pg:
        op.execute("DROP TRIGGER IF EXISTS ensure_user_subscription_trigger ON auth.users")
    for name in NEW_TABLES:
        op.drop_table(name)
    if pg:
        op.execute("DROP FUNCTION IF EXISTS public.ensure_user_subscription()")
        op.execute("DROP FUNCTION IF EXISTS public.is_trip_participant(uuid, uuid)")
    else:
        op.execute("DROP TRIGGER IF EXISTS temp.ensure_user_subscription")
    _drop_auth_standin()
    _sibling("20261128_vs_0001_voyagesmart_tables.py").upgrade()
    _sibling("20261128_vs_0002_trip_reminder_index.py").upgrade()
    _downgrade_rows(new)
