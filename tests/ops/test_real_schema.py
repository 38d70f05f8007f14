"""The `voyagesmart` branch builds VoyageSmart's real shape, and moves an old one over."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.db import make_engine
from app.ops.migrate import alembic_config, upgrade
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import create_pg_database, drop_pg_database, pg_url, rows

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)


def test_sign_up_gets_the_triggers_premium_year_without_stripe(engine: Engine) -> None:
    user = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO auth.users (id, email) VALUES (:id, 'a@example.com')"),
                     {"id": user.hex if engine.dialect.name == "sqlite" else user})
    found = rows(engine, "SELECT tier, status, stripe_subscription_id, valid_until, "
                         "created_at FROM user_subscriptions")
    assert len(found) == 1
    tier, status, stripe_id, valid_until, created = found[0]
    assert (tier, status, stripe_id) == ("premium", "active", None)
    # One year after sign-up (the database's clock, as in Supabase).
    if isinstance(valid_until, str):
        valid_until, created = (dt.datetime.fromisoformat(v) for v in (valid_until, created))
    assert dt.timedelta(days=364) < valid_until - created < dt.timedelta(days=367)


@pytest.mark.parametrize("column, value", [("status", "trialing"), ("tier", "enterprise")])
def test_check_constraints_reject_what_the_app_may_not_store(
        engine: Engine, column: str, value: str) -> None:
    user = AppWriter(engine).sign_up("b@example.com", at=NOW)
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE user_subscriptions SET {column} = :v WHERE user_id = :u"),
                     {"v": value, "u": user.hex if engine.dialect.name == "sqlite" else user})


def test_plan_catalogue_is_seeded_as_the_app_seeds_it(engine: Engine) -> None:
    plans = {r[0]: (str(r[1]), r[2], r[3]) for r in rows(
        engine, "SELECT tier, price, currency, interval FROM subscriptions")}
    assert plans == {"free": ("0.00" if engine.dialect.name == "postgresql" else "0", "EUR",
                              "month"),
                     "premium": ("4.99", "EUR", "month"), "ai": ("9.99", "EUR", "month")}


def test_row_level_security_is_on_with_the_apps_policies(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    enabled = {r[0] for r in rows(engine, "SELECT relname FROM pg_class c JOIN pg_namespace n "
                                          "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                                          "AND c.relrowsecurity")}
    assert {"users", "trips", "trip_participants", "subscription_history",
            "user_subscriptions"} <= enabled
    policies = {(r[0], r[1]) for r in rows(engine, "SELECT tablename, policyname FROM pg_policies")}
    assert ("users", "Users can view their own profile") in policies
    assert ("trip_participants", "trip_participants_access") in policies
    roles = {r[0]: r[1] for r in rows(engine, "SELECT rolname, rolbypassrls FROM pg_roles WHERE "
                                              "rolname IN ('anon', 'authenticated', "
                                              "'service_role')")}
    assert roles == {"anon": False, "authenticated": False, "service_role": True}
    assert rows(engine, "SELECT auth.uid()") == [(None,)]


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_url(request: pytest.FixtureRequest, tmp_path: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/blank.db"
        return
    request.getfixturevalue("pg_database")  # skips when PostgreSQL is unreachable
    name = create_pg_database("vsc_blank")
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


def _to(engine: Engine, target: str, *, down: bool = False) -> None:
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)


def test_an_old_development_database_is_moved_to_the_real_shape_and_back(
        blank_url: str) -> None:
    engine = make_engine(blank_url)
    try:
        _to(engine, "vs_0002")
        uid = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO users (id, email, created_at, last_login, stripe_customer_id) "
                "VALUES (:id, 'old@example.com', :t, :t, 'cus_1')"),
                {"id": uid.hex if engine.dialect.name == "sqlite" else uid, "t": NOW})
            conn.execute(sa.text(
                "INSERT INTO subscriptions (id, user_id, stripe_subscription_id, "
                "stripe_customer_id, tier, status, cancel_at_period_end, created_at, "
                "updated_at) VALUES (:sid, :id, 'sub_1', 'cus_1', 'ai', 'past_due', false, "
                ":t, :t)"),
                {"sid": uuid.uuid4().hex, "id": uid.hex if engine.dialect.name == "sqlite"
                 else uid, "t": NOW})
        _to(engine, "vs_0003")
        assert rows(engine, "SELECT email FROM auth.users") == [("old@example.com",)]
        # past_due is still paying: `active` in the values the CHECK admits.
        assert rows(engine, "SELECT tier, status, stripe_subscription_id FROM "
                            "user_subscriptions") == [("ai", "active", "sub_1")]
        _to(engine, "vs_0002", down=True)
        assert rows(engine, "SELECT email, stripe_customer_id FROM users") == [
            ("old@example.com", "cus_1")]
        assert rows(engine, "SELECT tier, stripe_subscription_id FROM subscriptions") == [
            ("ai", "sub_1")]
        upgrade(engine)
        assert rows(engine, "SELECT count(*) FROM user_subscriptions") == [(1,)]
    finally:
        engine.dispose()


def test_service_only_touches_only_the_service_tables(blank_url: str) -> None:
    engine = make_engine(blank_url)
    try:
        upgrade(engine, service_only=True)
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            schemas = sa.inspect(conn).get_schema_names()
        # The service's own: its cron_ tables and, on PostgreSQL, the queue's (procrastinate_).
        assert tables and all(t.startswith(("cron_", "procrastinate_")) for t in tables), tables
        if engine.dialect.name == "postgresql":
            assert "auth" not in schemas
    finally:
        engine.dispose()
