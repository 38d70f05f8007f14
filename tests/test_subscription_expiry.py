"""subscription-expiry does what VoyageSmart's check-subscriptions route does, and ends
granted tiers past valid_until, on data written the way the app writes it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import SubscriptionHistory, UserSubscription
from app.runner import Runner, RunOutcome
from app.sample_data import AppWriter
from tests.conftest import FixedClock, auth

NOW = dt.datetime(2026, 11, 28, 0, 0, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _seed(engine: Engine) -> dict[str, uuid.UUID]:
    app = AppWriter(engine)
    u = {name: app.sign_up(f"{name}@example.com", at=NOW - days * DAY) for name, days in (
        ("canceled_past", 200), ("canceled_future", 200), ("renewing", 200),
        ("free_canceled", 200), ("trial_year_over", 400), ("trial_year_left", 100),
        ("promo_over", 300), ("paid_old_signup", 500))}
    app.stripe_subscribed(u["canceled_past"], tier="premium", at=NOW - 40 * DAY,
                          subscription_id="sub_past", customer_id="cus_past",
                          period_end=NOW - DAY)
    app.canceled_at_period_end(u["canceled_past"], NOW - 20 * DAY)
    app.stripe_subscribed(u["canceled_future"], tier="ai", at=NOW - 10 * DAY,
                          period_end=NOW + 20 * DAY)
    app.canceled_at_period_end(u["canceled_future"], NOW - 5 * DAY)
    app.stripe_subscribed(u["renewing"], tier="premium", at=NOW - 40 * DAY,
                          period_end=NOW - DAY)  # renewal webhook not in yet: not canceled
    app.stripe_subscribed(u["free_canceled"], tier="premium", at=NOW - 40 * DAY,
                          period_end=NOW - DAY)
    app.canceled_at_period_end(u["free_canceled"], NOW - 20 * DAY)
    with engine.begin() as conn:
        conn.execute(sa.update(UserSubscription).where(
            UserSubscription.user_id == u["free_canceled"]).values(tier="free"))
    code = app.promo_code("SPRING", tier="ai", at=NOW - 100 * DAY,
                          expires_at=NOW - 3 * DAY)
    app.redeem(u["promo_over"], code, NOW - 50 * DAY)
    # Paying through Stripe, with the sign-up year's valid_until long past: Stripe's business.
    app.stripe_subscribed(u["paid_old_signup"], tier="premium", at=NOW - 30 * DAY,
                          period_end=NOW + DAY)
    return u


def _subs(engine: Engine, users: dict[str, uuid.UUID]) -> dict[str, dict[str, Any]]:
    names = {v: k for k, v in users.items()}
    with engine.connect() as conn:
        return {names[r["user_id"]]: dict(r) for r in conn.execute(
            sa.select(UserSubscription.__table__)).mappings()}


def _history(engine: Engine) -> list[dict[str, Any]]:
    t = SubscriptionHistory.__table__
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(t).where(t.c.event_type == "subscription_expired")).mappings()]


def _run(engine: Engine, settings: Settings, **kwargs: Any) -> RunOutcome:
    return Runner(settings, engine, clock=FixedClock(NOW)).run("subscription-expiry",
                                                              trigger="cli", **kwargs)


def test_expiry_matches_the_app_route_and_ends_granted_tiers(engine: Engine,
                                                             settings: Settings) -> None:
    users = _seed(engine)
    before = _subs(engine, users)
    outcome = _run(engine, settings)
    assert outcome.status == "success", outcome.message
    assert outcome.details["by_reason"] == {"automatic_expiration_check": 1,
                                            "valid_until_passed": 2}
    after = _subs(engine, users)
    for name in ("canceled_past", "trial_year_over", "promo_over"):
        row = after[name]
        assert (row["tier"], row["status"], row["cancel_at_period_end"]) == (
            "free", "inactive", False), name
        assert row["updated_at"] == NOW
    # The app keeps the Stripe ids when it expires a subscription.
    assert after["canceled_past"]["stripe_subscription_id"] == "sub_past"
    for name in ("canceled_future", "renewing", "free_canceled", "trial_year_left",
                 "paid_old_signup"):
        assert after[name] == before[name], name

    events = {e["user_id"]: e for e in _history(engine)}
    assert len(events) == 3
    past = events[users["canceled_past"]]
    assert (past["tier"], past["status"], past["stripe_subscription_id"],
            past["stripe_customer_id"], past["event_timestamp"]) == (
        "free", "inactive", "sub_past", "cus_past", NOW)
    assert past["details"]["previous_tier"] == "premium"
    assert past["details"]["reason"] == "automatic_expiration_check"
    assert past["details"]["expired_at"] == NOW.isoformat()
    assert events[users["promo_over"]]["details"]["previous_tier"] == "ai"


def test_second_run_and_dry_run(engine: Engine, settings: Settings) -> None:
    users = _seed(engine)
    before = _subs(engine, users)
    dry = _run(engine, settings, dry_run=True)
    assert dry.details["expired"] == 3 and "would move 3" in dry.message
    assert _subs(engine, users) == before and _history(engine) == []
    assert _run(engine, settings).details["expired"] == 3
    again = _run(engine, settings, force=True)
    assert again.details["expired"] == 0
    assert len(_history(engine)) == 3


def test_the_apps_route_path_runs_it(engine: Engine, make_client: Callable[..., TestClient]
                                     ) -> None:
    users = _seed(engine)
    client = make_client()
    response = client.get("/api/cron/check-subscriptions", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "subscription-expiry" and body["status"] == "success"
    assert _subs(engine, users)["canceled_past"]["tier"] == "free"
    again = client.get("/api/cron/subscription-expiry",
                       headers={**auth(), "User-Agent": "vercel-cron/1.0"})
    assert again.json()["status"] in ("success", "duplicate")
