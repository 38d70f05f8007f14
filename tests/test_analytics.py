"""analytics: a fixed dataset gives the figures counted by hand; one row per ISO week."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import (
    CronWeeklyAnalytics,
    Document,
    Subscription,
    SubscriptionHistory,
    Trip,
    TripMedia,
    TripParticipant,
    User,
)
from app.runner import Runner, RunOutcome
from tests.conftest import FixedClock

WS = dt.datetime(2026, 11, 16, tzinfo=dt.UTC)  # Monday of 2026-W47
NOW = dt.datetime(2026, 11, 23, 3, 0, 20, tzinfo=dt.UTC)  # the Monday after, 03:00
D = dt.timedelta(days=1)


def _ins(engine: Engine, model: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(model.__table__.insert(), rows)


def _seed(engine: Engine) -> dict[str, uuid.UUID]:
    u = {f"u{i}": uuid.uuid4() for i in range(1, 9)}

    def user(name: str, created: dt.datetime, login: dt.datetime | None) -> dict[str, Any]:
        return {"id": u[name], "email": f"{name}@example.com", "created_at": created,
                "last_login": login}

    _ins(engine, User, [
        user("u1", WS - 30 * D, WS + D),        # active, free
        user("u2", WS + 2 * D, WS + 2 * D),     # new, active, converts to premium
        user("u3", WS - 60 * D, WS - 10 * D),   # paid, upgrades premium -> ai
        user("u4", WS - 40 * D, None),          # paid, cancels during the week
        user("u5", WS - 20 * D, WS + 6 * D),    # active, downgrades ai -> premium
        user("u6", WS + D, None),               # new, incomplete subscription
        user("u7", WS - 100 * D, None),         # canceled long before: free
        user("u8", WS + 8 * D, WS + 8 * D),     # after the week
    ])

    def sub(owner: str, tier: str, status: str, created: dt.datetime,
            canceled: dt.datetime | None = None) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "user_id": u[owner], "stripe_subscription_id":
                f"sub_{uuid.uuid4().hex[:12]}", "tier": tier, "status": status,
                "created_at": created, "updated_at": canceled or created,
                "canceled_at": canceled, "cancel_at_period_end": False}

    _ins(engine, Subscription, [
        sub("u2", "premium", "active", WS + 3 * D),
        sub("u3", "ai", "active", WS - 50 * D),
        sub("u4", "premium", "canceled", WS - 35 * D, WS + 5 * D),
        sub("u5", "premium", "active", WS - 10 * D),
        sub("u6", "ai", "incomplete", WS + 2 * D),
        sub("u7", "premium", "canceled", WS - 90 * D, WS - 20 * D),
    ])

    def event(owner: str, tier: str, at: dt.datetime, status: str = "active"
              ) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "user_id": u[owner], "event_type": "subscription_updated",
                "tier": tier, "status": status, "event_timestamp": at, "created_at": at}

    _ins(engine, SubscriptionHistory, [
        event("u3", "premium", WS - 50 * D), event("u3", "ai", WS + 4 * D),
        event("u5", "ai", WS - 10 * D), event("u5", "premium", WS + D),
        event("u2", "premium", WS + 3 * D),
        event("u4", "premium", WS - 35 * D), event("u4", "premium", WS + 5 * D, "canceled"),
    ])

    t = {f"t{i}": uuid.uuid4() for i in range(1, 6)}

    def trip(name: str, owner: str, created: dt.datetime, start: dt.date,
             end: dt.date | None) -> dict[str, Any]:
        return {"id": t[name], "name": name, "owner_id": u[owner], "created_at": created,
                "updated_at": created, "start_date": start, "end_date": end}

    _ins(engine, Trip, [
        trip("t1", "u3", WS + D, dt.date(2026, 11, 18), dt.date(2026, 11, 20)),
        trip("t2", "u1", WS - 5 * D, dt.date(2026, 11, 10), dt.date(2026, 11, 17)),
        trip("t3", "u5", WS + 3 * D, dt.date(2026, 12, 20), None),
        trip("t4", "u4", WS + 6 * D, dt.date(2026, 11, 22), None),
        trip("t5", "u1", WS + 7 * D + dt.timedelta(hours=1), dt.date(2026, 11, 23), None),
    ])

    def member(name: str, status: str, created: dt.datetime) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "trip_id": t[name], "user_id": uuid.uuid4(),
                "invitation_status": status, "role": "participant", "created_at": created}

    _ins(engine, TripParticipant, [
        member("t1", "accepted", WS + D), member("t1", "accepted", WS + D),
        member("t1", "pending", WS + D),
        member("t2", "accepted", WS - 5 * D), member("t2", "accepted", WS - 5 * D),
        member("t3", "accepted", WS + 3 * D),
    ])

    def medium(name: str, created: dt.datetime) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "trip_id": t[name], "type": "image",
                "url": f"https://cdn.example.com/{uuid.uuid4()}.jpg", "created_at": created}

    _ins(engine, TripMedia, [medium("t3", WS + 4 * D), medium("t3", WS + 4 * D),
                             medium("t2", WS + 2 * D)])

    def doc(name: str, created: dt.datetime) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "trip_id": t[name], "name": "ticket.pdf",
                "created_at": created, "updated_at": created}

    _ins(engine, Document, [doc("t3", WS + 4 * D), doc("t4", WS + 6 * D)])
    return u


def _run(engine: Engine, settings: Settings, *, dry_run: bool = False) -> RunOutcome:
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    outcome = runner.run("analytics", trigger="cli", dry_run=dry_run)
    assert outcome.status == "success", outcome.message
    return outcome


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(CronWeeklyAnalytics.__table__)).mappings()]


EXPECTED = {
    "engagement": {"active_users": 3, "new_users": 2, "trips_created": 3,
                   "trips_starting": 2, "group_trips_under_way": 2},
    "conversion": {
        "new_paid_by_tier": {"premium": 1, "ai": 0}, "new_paid": 1,
        "upgrades": 1, "downgrades": 1,
        "cancellations_by_tier": {"premium": 1, "ai": 0}, "cancellations": 1,
        "free_users": 4, "converted_users": 1, "conversion_rate": 0.25,
        "paid_at_start": 3, "churn_rate": 0.3333,
    },
    "usage_by_tier": {
        "free": {"trips": 1, "participants": 0, "media": 1, "documents": 1},
        "premium": {"trips": 1, "participants": 1, "media": 2, "documents": 1},
        "ai": {"trips": 1, "participants": 3, "media": 0, "documents": 0},
    },
}


def test_week_figures_match_the_hand_count(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    outcome = _run(engine, settings)
    assert outcome.details["iso_week"] == "2026-W47"
    assert outcome.details["metrics"] == EXPECTED
    [row] = _stored(engine)
    assert row["iso_week"] == "2026-W47"
    assert row["week_start"] == dt.date(2026, 11, 16)
    assert row["week_end"] == dt.date(2026, 11, 23)
    assert (row["active_users"], row["new_users"], row["new_paid_subscriptions"]) == (3, 2, 1)
    assert row["conversion_rate"] == 0.25 and row["churn_rate"] == 0.3333
    assert row["metrics"] == EXPECTED


def test_rerun_for_the_same_week_leaves_one_row(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    _run(engine, settings)
    _ins(engine, User, [{"id": uuid.uuid4(), "email": "late@example.com",
                         "created_at": WS + 6 * D, "last_login": WS + 6 * D}])
    _run(engine, settings)
    [row] = _stored(engine)
    assert row["new_users"] == 3 and row["active_users"] == 4


def test_dry_run_stores_nothing(engine: Engine, settings: Settings) -> None:
    _seed(engine)
    outcome = _run(engine, settings, dry_run=True)
    assert outcome.details["metrics"] == EXPECTED
    assert outcome.message.startswith("would store 2026-W47")
    assert _stored(engine) == []


def test_empty_database_gives_zeros_not_errors(engine: Engine, settings: Settings) -> None:
    outcome = _run(engine, settings)
    metrics = outcome.details["metrics"]
    assert metrics["engagement"]["active_users"] == 0
    assert metrics["conversion"]["conversion_rate"] is None
    assert metrics["conversion"]["churn_rate"] is None


def test_cli_shows_a_stored_week(engine: Engine, settings: Settings, db_url: str,
                                 monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from app.cli import cli
    from app.config import get_settings

    _seed(engine)
    _run(engine, settings)
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
