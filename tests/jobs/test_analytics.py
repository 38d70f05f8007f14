"""analytics: a fixed dataset gives the figures counted by hand; one row per ISO week."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from app.models import CronWeeklyAnalytics
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock, JobRun

WS = dt.datetime(2026, 11, 16, tzinfo=dt.UTC)  # Monday of 2026-W47
NOW = dt.datetime(2026, 11, 23, 3, 0, 20, tzinfo=dt.UTC)  # the Monday after, 03:00
D = dt.timedelta(days=1)


def _seed(engine: Engine) -> dict[str, uuid.UUID]:
    """Written the way the app writes it: every sign-up gets the trigger's premium year."""
    app = AppWriter(engine)

    def user(name: str, created: dt.datetime, seen: dt.datetime | None = None) -> uuid.UUID:
        return app.sign_up(f"{name}@example.com", at=created, last_sign_in=seen)

    u = {
        "u1": user("u1", WS - 30 * D, WS + D),        # active; the trigger's premium year
        "u2": user("u2", WS + 2 * D),                 # new, active, starts paying premium
        "u3": user("u3", WS - 60 * D, WS - 10 * D),   # paid, upgrades premium -> ai
        "u4": user("u4", WS - 40 * D),                # paid, Stripe deletes it this week
        "u5": user("u5", WS - 20 * D, WS + 6 * D),    # active, downgrades ai -> premium
        "u6": user("u6", WS + D),                     # new, a promo code's ai tier
        "u7": user("u7", WS - 100 * D),               # deleted long before: free
        "u8": user("u8", WS + 8 * D),                 # after the week
    }
    app.stripe_subscribed(u["u2"], tier="premium", at=WS + 3 * D)
    app.stripe_subscribed(u["u3"], tier="premium", at=WS - 50 * D)
    app.stripe_updated(u["u3"], tier="ai", at=WS + 4 * D)
    app.stripe_subscribed(u["u4"], tier="premium", at=WS - 35 * D)
    app.stripe_deleted(u["u4"], WS + 5 * D)
    app.stripe_subscribed(u["u5"], tier="ai", at=WS - 10 * D)
    app.stripe_updated(u["u5"], tier="premium", at=WS + D)
    app.stripe_subscribed(u["u7"], tier="premium", at=WS - 90 * D)
    app.stripe_deleted(u["u7"], WS - 20 * D)
    promo = app.promo_code("AIWEEK", tier="ai", at=WS - 5 * D, expires_at=WS + 60 * D)
    app.redeem(u["u6"], promo, WS + 2 * D)

    def trip(owner: str, created: dt.datetime, start: dt.date, end: dt.date | None,
             guests: tuple[str, ...] = ()) -> uuid.UUID:
        trip_id = app.create_trip(u[owner], name=f"{owner} trip", at=created,
                                  start_date=start, end_date=end)
        for i, status in enumerate(guests):
            app.invite(trip_id, at=created, email=f"guest{i}@example.com", status=status)
        return trip_id

    trip("u3", WS + D, dt.date(2026, 11, 18), dt.date(2026, 11, 20),
         ("accepted", "accepted", "pending"))
    t2 = trip("u1", WS - 5 * D, dt.date(2026, 11, 10), dt.date(2026, 11, 17),
              ("accepted", "accepted"))
    t3 = trip("u5", WS + 3 * D, dt.date(2026, 12, 20), None, ("accepted",))
    t4 = trip("u4", WS + 6 * D, dt.date(2026, 11, 22), None)
    trip("u1", WS + 7 * D + dt.timedelta(hours=1), dt.date(2026, 11, 23), None)
    app.journal_media(t3, u["u5"], "a.jpg", WS + 4 * D)
    app.journal_media(t3, u["u5"], "b.jpg", WS + 4 * D)
    app.journal_media(t2, u["u1"], "c.jpg", WS + 2 * D)
    app.document(t3, u["u5"], "https://cdn.example.com/ticket.pdf", WS + 4 * D)
    app.document(t4, u["u4"], "https://cdn.example.com/visa.pdf", WS + 6 * D)
    return u


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(CronWeeklyAnalytics.__table__)).mappings()]


EXPECTED = {
    "engagement": {"active_users": 4, "new_users": 2, "trips_created": 3,
                   "trips_starting": 2, "group_trips_under_way": 2},
    "conversion": {
        # Stripe-paid subscriptions only.
        "new_paid_by_tier": {"premium": 1, "ai": 0}, "new_paid": 1,
        "upgrades": 1, "downgrades": 1,
        "cancellations_by_tier": {"premium": 1, "ai": 0}, "cancellations": 1,
        "free_users": 4, "converted_users": 1, "conversion_rate": 0.25,
        "paid_at_start": 3, "paid_now_by_tier": {"premium": 2, "ai": 1},
        "churn_rate": 0.3333,
        # Granted tiers, apart: u1 and u8's sign-up year, u6's promo code.
        "grants_by_source": {"promo_code": {"premium": 0, "ai": 1},
                             "sign_up": {"premium": 2, "ai": 0}},
        "grants": 3,
    },
    "usage_by_tier": {  # the owner's current tier; each trip counts its owner participant
        "free": {"trips": 1, "participants": 1, "media": 0, "documents": 1},
        "premium": {"trips": 1, "participants": 2, "media": 3, "documents": 1},
        "ai": {"trips": 1, "participants": 4, "media": 0, "documents": 0},
    },
}


def test_week_figures_match_the_hand_count(engine: Engine, settings: Settings,
                                           run_job: JobRun) -> None:
    _seed(engine)
    outcome = run_job("analytics", settings, at=NOW, expect="success")
    assert outcome.details["iso_week"] == "2026-W47"
    assert outcome.details["metrics"] == EXPECTED
    [row] = _stored(engine)
    assert row["iso_week"] == "2026-W47"
    assert row["week_start"] == dt.date(2026, 11, 16)
    assert row["week_end"] == dt.date(2026, 11, 23)
    assert (row["active_users"], row["new_users"], row["new_paid_subscriptions"]) == (4, 2, 1)
    assert row["conversion_rate"] == 0.25 and row["churn_rate"] == 0.3333
    assert row["metrics"] == EXPECTED


def test_rerun_for_the_same_week_leaves_one_row(engine: Engine, settings: Settings,
                                                run_job: JobRun) -> None:
    _seed(engine)
    run_job("analytics", settings, at=NOW, expect="success")
    AppWriter(engine).sign_up("late@example.com", at=WS + 6 * D)
    run_job("analytics", settings, at=NOW, expect="success")
    [row] = _stored(engine)
    assert row["new_users"] == 3 and row["active_users"] == 5


def test_dry_run_stores_nothing(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    _seed(engine)
    outcome = run_job("analytics", settings, at=NOW, dry_run=True, expect="success")
    assert outcome.details["metrics"] == EXPECTED
    assert outcome.message.startswith("would store 2026-W47")
    assert _stored(engine) == []


def test_empty_database_gives_zeros_not_errors(engine: Engine, settings: Settings,
                                               run_job: JobRun) -> None:
    outcome = run_job("analytics", settings, at=NOW, expect="success")
    metrics = outcome.details["metrics"]
    assert metrics["engagement"]["active_users"] == 0
    assert metrics["conversion"]["conversion_rate"] is None
    assert metrics["conversion"]["grants"] == 0
    assert metrics["conversion"]["churn_rate"] is None


def test_cli_shows_a_stored_week(engine: Engine, settings: Settings, db_url: str,
                                 monkeypatch: Any, run_job: JobRun) -> None:
    from typer.testing import CliRunner

    from app.config import get_settings
    from app.ops.cli import cli

    _seed(engine)
    run_job("analytics", settings, at=NOW, expect="success")
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(cli, ["analytics", "show", "--week", "2026-W47"])
        missing = CliRunner().invoke(cli, ["analytics", "show", "--week", "2026-W01"])
        bad = CliRunner().invoke(cli, ["analytics", "show", "--week", "last week"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert '"iso_week": "2026-W47"' in shown.output and '"conversion_rate": 0.25' in shown.output
    assert missing.exit_code == 1 and bad.exit_code == 2


def test_dry_run_predicts_the_real_run(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    _seed(engine)
    dry = run_job("analytics", settings, at=NOW, dry_run=True, expect="success")
    real = run_job("analytics", settings, at=NOW, expect="success")
    assert (dry.status, dry.records_processed) == (real.status, real.records_processed) == (
        "success", 1)
    assert dry.message.replace("would store", "stored") == real.message
    assert dry.details == real.details


def test_churn_counts_a_cancellation_in_the_week_its_period_ended(
        engine: Engine, settings: Settings, run_job: JobRun) -> None:
    app = AppWriter(engine)
    users = {name: app.sign_up(f"{name}@example.com", at=WS - 90 * D)
             for name in ("c1", "c2", "p")}
    sunday_night = WS + 6 * D + dt.timedelta(hours=23, minutes=30)
    app.stripe_subscribed(users["c1"], tier="premium", at=WS - 46 * D,
                          period_end=sunday_night)
    app.canceled_at_period_end(users["c1"], WS - 6 * D)
    app.stripe_subscribed(users["c2"], tier="ai", at=WS - 42 * D, period_end=WS + 3 * D)
    app.canceled_at_period_end(users["c2"], WS - 4 * D)
    app.stripe_subscribed(users["p"], tier="premium", at=WS - 46 * D, period_end=WS + 20 * D)
    # The daily expiry runs on Monday 00:00, after c1's period ended on Sunday night (and
    # c2's on Thursday): c1's end is recorded in the next week, and belongs to this one.
    expiry = Runner(settings, engine, clock=FixedClock(WS + 7 * D + dt.timedelta(seconds=30)))
    assert expiry.run("subscription-expiry", trigger="cli").details["expired"] == 2

    conversion = run_job("analytics", settings, at=NOW,
                         expect="success").details["metrics"]["conversion"]

    assert conversion["cancellations_by_tier"] == {"premium": 1, "ai": 1}
    assert conversion["paid_at_start"] == 3
    assert conversion["churn_rate"] == 0.6667
    assert conversion["paid_now_by_tier"] == {"premium": 1, "ai": 0}
