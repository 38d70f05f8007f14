"""subscription-expiry does what VoyageSmart's check-subscriptions route does, and ends
granted tiers past valid_until, on data written the way the app writes it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from app.config import Settings, get_settings
from app.core.runner import Runner, RunOutcome
from app.models import SubscriptionHistory, UserSubscription
from app.ops.cli import cli
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock, JobRun, auth

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


def test_expiry_matches_the_app_route_and_ends_granted_tiers(engine: Engine,
                                                             settings: Settings,
                                                             run_job: JobRun) -> None:
    users = _seed(engine)
    before = _subs(engine, users)
    outcome = run_job("subscription-expiry", settings, at=NOW)
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


def test_second_run_and_dry_run(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    users = _seed(engine)
    before = _subs(engine, users)
    dry = run_job("subscription-expiry", settings, at=NOW, dry_run=True)
    assert dry.details["expired"] == 3 and "would move 3" in dry.message
    assert _subs(engine, users) == before and _history(engine) == []
    assert run_job("subscription-expiry", settings, at=NOW).details["expired"] == 3
    again = run_job("subscription-expiry", settings, at=NOW, force=True)
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


def _dry_then_real(run_job: JobRun, settings: Settings, **kwargs: Any
                   ) -> tuple[RunOutcome, RunOutcome]:
    dry = run_job("subscription-expiry", settings, at=NOW, dry_run=True, **kwargs)
    return dry, run_job("subscription-expiry", settings, at=NOW, **kwargs)


def _same_prediction(dry: RunOutcome, real: RunOutcome) -> None:
    assert (dry.status, dry.records_processed) == (real.status, real.records_processed)
    assert dry.message.replace("would move", "moved") == real.message
    assert {**dry.details, "dry_run": None} == {**real.details, "dry_run": None}


def test_dry_run_predicts_the_real_run(engine: Engine, settings: Settings, run_job: JobRun) -> None:
    _seed(engine)
    dry, real = _dry_then_real(run_job, settings)
    _same_prediction(dry, real)
    assert real.details["expired"] == 3 and len(real.details["samples"]) == 3


def _all_subs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(UserSubscription.__table__).order_by(UserSubscription.id)).mappings()]


def _many_sign_ups(engine: Engine, n: int) -> None:
    """n users signed up 200 days ago, each with the trigger's premium year."""
    app = AppWriter(engine)
    for i in range(n):
        app.sign_up(f"user{i}@example.com", at=NOW - 200 * DAY)


def test_a_wrong_clock_trips_the_brake_and_changes_nothing(engine: Engine,
                                                           settings: Settings) -> None:
    _many_sign_ups(engine, 120)
    _seed(engine)
    before = _all_subs(engine)
    # A clock two years ahead: every premium year looks over.
    wrong = Runner(settings, engine, clock=FixedClock(NOW + 730 * DAY))
    dry = wrong.run("subscription-expiry", trigger="cli", dry_run=True)
    real = wrong.run("subscription-expiry", trigger="cli")
    for outcome in (dry, real):
        assert outcome.status == "error"
        assert outcome.message.startswith(
            "safety brake: would downgrade subscriptions to free: 125 of 127 (98%), "
            "above 10% and above 100; nothing was changed")
        assert "SUBSCRIPTION_EXPIRY_DOWNGRADE_BRAKE_SHARE" in outcome.message
        samples = outcome.details["brake"]["samples"]
        assert len(samples) == 5 and all(s.startswith("user ") for s in samples)
        assert "@" not in " ".join(samples)
    assert dry.details["brake"]["samples"] == real.details["brake"]["samples"]
    assert _all_subs(engine) == before and _history(engine) == []
    forced = wrong.run("subscription-expiry", trigger="cli", force=True)
    assert forced.status == "success" and forced.details["expired"] == 125


def test_restore_puts_back_what_one_run_expired(engine: Engine, settings: Settings,
                                                db_url: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                run_job: JobRun) -> None:
    users = _seed(engine)
    before = _subs(engine, users)
    run = run_job("subscription-expiry", settings, at=NOW)
    assert run.details["expired"] == 3
    # After the run the app changes one of them again: that one is left as the app set it.
    AppWriter(engine).stripe_subscribed(users["promo_over"], tier="ai", at=NOW + DAY)
    changed_since = _subs(engine, users)["promo_over"]

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        preview = CliRunner().invoke(cli, ["restore", str(run.run_id), "--dry-run"])
        done = CliRunner().invoke(cli, ["restore", str(run.run_id)])
        again = CliRunner().invoke(cli, ["restore", str(run.run_id)])
    finally:
        get_settings.cache_clear()
    assert json.loads(preview.output)["other"]["would_restore"] == 2
    assert done.exit_code == 1, done.output  # one row could not come back: said so
    summary = json.loads(done.output)["other"]
    assert (summary["subscriptions_restored"], summary["left"]) == (2, 1)
    after = _subs(engine, users)
    for name in ("canceled_past", "trial_year_over"):
        assert {k: v for k, v in after[name].items() if k != "updated_at"} == {
            k: v for k, v in before[name].items() if k != "updated_at"}, name
    assert after["promo_over"] == changed_since
    assert json.loads(again.output)["other"]["subscriptions_restored"] == 0
    t = SubscriptionHistory.__table__
    with engine.connect() as conn:
        restored = conn.execute(sa.select(t).where(t.c.event_type == "admin_update")
                                ).mappings().all()
    assert len(restored) == 2
    assert {r["details"]["restores_run"] for r in restored} == {str(run.run_id)}
