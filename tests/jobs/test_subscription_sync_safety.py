"""subscription-sync never lowers a tier on the key's or the items' word alone.

Stripe answers in its own JSON shape, from a small local server (`StripeShapeServer`)
where localstripe cannot (several items with prices, a key of the wrong mode), or from
localstripe itself; always through the official SDK.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from app.models import CronJobLog, SubscriptionHistory, UserSubscription
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock, JobRun, make_settings
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.servers import free_port
from tests.support.stripe_servers import (
    FaultProxy,
    StripeShapeServer,
    localstripe,
    stripe_proxy,
    stripe_shape,
    subscription_json,
)

__all__ = ["localstripe", "stripe_proxy", "stripe_shape"]

NOW = dt.datetime(2026, 11, 28, 2, 0, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
PREMIUM, AI_ADDON, UNKNOWN = "price_1PremiumMonthly", "price_1AiAddonMonthly", "price_1Gift"
TIER_MAP = {PREMIUM: "premium", AI_ADDON: "ai"}
PREMIUM_ITEM = (PREMIUM, "prod_Premium", 499)
AI_ITEM = (AI_ADDON, "prod_AiAddon", 500)
subs_t = UserSubscription.__table__
history_t = SubscriptionHistory.__table__


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


PERIOD_END = NOW + 20 * DAY


def _subscriber(engine: Engine, name: str, tier: str, sub_id: str) -> uuid.UUID:
    app = AppWriter(engine)
    user = app.sign_up(f"{name}-{uuid.uuid4().hex[:6]}@example.com", at=NOW - 90 * DAY)
    app.stripe_subscribed(user, tier=tier, at=NOW - 40 * DAY, subscription_id=sub_id,
                          customer_id=f"cus_{name}", period_end=PERIOD_END)
    return user


def _stripe(server: StripeShapeServer, sub_id: str, prices: list[tuple[str, str, int]],
            **kwargs: Any) -> dict[str, Any]:
    return server.add(subscription_json(
        sub_id, customer=f"cus_{sub_id}", prices=prices, created=_epoch(NOW - 40 * DAY),
        period_end=_epoch(PERIOD_END), **kwargs))


def _settings(db_url: str, tmp_path: Path, api: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stripe_secret_key": "sk_test_safety", "stripe_api_base": api,
        "stripe_tier_map": TIER_MAP, "stripe_sync_strategy": "retrieve",
        "stripe_rate_limit": 100, "stripe_max_network_retries": 0, "stripe_timeout": 5.0,
        **overrides}
    return make_settings(db_url, tmp_path, **values)


def _rows(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every subscription row by customer id."""
    with engine.connect() as conn:
        return {r["stripe_customer_id"]: dict(r)
                for r in conn.execute(sa.select(subs_t)).mappings()}


def _sync_history(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(history_t)).mappings()
                if (r["details"] or {}).get("source") == "subscription-sync"]


# --- finding 5: the tier comes from every item ---------------------------------------------
def test_premium_plus_ai_addon_is_ai_whatever_the_item_order(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    _subscriber(engine, "addon_last", "ai", "sub_AddonLast")
    _subscriber(engine, "addon_first", "ai", "sub_AddonFirst")
    _subscriber(engine, "premium_only", "ai", "sub_PremiumOnly")
    _stripe(stripe_shape, "sub_AddonLast", [PREMIUM_ITEM, AI_ITEM])
    _stripe(stripe_shape, "sub_AddonFirst", [AI_ITEM, PREMIUM_ITEM])
    _stripe(stripe_shape, "sub_PremiumOnly", [PREMIUM_ITEM])

    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)

    assert outcome.status == "success", outcome.message
    rows = _rows(engine)
    assert rows["cus_addon_last"]["tier"] == "ai"
    assert rows["cus_addon_first"]["tier"] == "ai"
    # One item, mapped: complete evidence, so the downgrade Stripe says is made.
    assert rows["cus_premium_only"]["tier"] == "premium"
    [event] = _sync_history(engine)
    assert event["stripe_subscription_id"] == "sub_PremiumOnly"
    assert event["details"]["before"] == {"tier": "ai"}
    assert outcome.details["changed"] == 1 and outcome.details["downgrades"] == 1


def test_an_item_no_map_entry_covers_keeps_the_tier_and_is_reported(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    _subscriber(engine, "gift", "ai", "sub_Gift")
    _subscriber(engine, "partial", "ai", "sub_Partial")
    _stripe(stripe_shape, "sub_Gift", [PREMIUM_ITEM, (UNKNOWN, "prod_Gift", 300)])
    # Stripe gave the first page of the items only: the rest could hold the AI add-on.
    _stripe(stripe_shape, "sub_Partial", [PREMIUM_ITEM], items_has_more=True)

    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)

    assert outcome.status == "warning", outcome.message
    rows = _rows(engine)
    assert rows["cus_gift"]["tier"] == "ai" and rows["cus_partial"]["tier"] == "ai"
    assert _sync_history(engine) == []
    assert outcome.details["unmapped_tier_ids"] == [UNKNOWN]
    assert outcome.details["incomplete_item_lists"] == ["sub_Partial"]
    assert UNKNOWN in outcome.message and "sub_Partial" in outcome.message


# --- finding 4: the key's word is not the customers' ----------------------------------------
def test_a_key_that_knows_none_of_the_subscriptions_cancels_nothing(
        engine: Engine, db_url: str, tmp_path: Path, stripe_proxy: FaultProxy,
        run_job: JobRun) -> None:
    """30 active subscriptions, a key whose account (localstripe's) has none of them."""
    for n in range(30):
        _subscriber(engine, f"u{n:02d}", "premium" if n % 2 else "ai", f"sub_Live{n:02d}x")
    before = _rows(engine)

    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy.url), at=NOW)

    assert outcome.status == "error"
    assert "Stripe knows none of the 30 subscription(s)" in outcome.message
    assert "nothing was changed" in outcome.message
    assert outcome.attempts == 1  # not retried: the same key gives the same answer
    assert _rows(engine) == before
    assert _sync_history(engine) == []
    with engine.connect() as conn:
        log = conn.execute(sa.select(CronJobLog.__table__)).mappings().one()
    assert log["status"] == "error" and log["details"]["missing_in_stripe"] == 30


def test_a_mode_mismatch_404_is_a_failure_not_a_missing_subscription(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    _subscriber(engine, "known", "premium", "sub_Known")
    _subscriber(engine, "live_a", "premium", "sub_LiveA")
    _subscriber(engine, "live_b", "ai", "sub_LiveB")
    _stripe(stripe_shape, "sub_Known", [PREMIUM_ITEM])
    stripe_shape.other_mode.update({"sub_LiveA": "live", "sub_LiveB": "live"})
    before = _rows(engine)

    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)

    assert outcome.status == "warning", outcome.message
    assert _rows(engine) == before
    assert outcome.details["missing_in_stripe"] == 0
    assert outcome.details["key_mismatches"] == 2
    assert "sub_LiveA" in outcome.message and "sub_LiveB" in outcome.message


def test_every_subscription_in_the_other_mode_refuses_the_run(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    for n in range(3):
        _subscriber(engine, f"live{n}", "premium", f"sub_Live{n}")
        stripe_shape.other_mode[f"sub_Live{n}"] = "live"
    before = _rows(engine)

    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)

    assert outcome.status == "error" and outcome.attempts == 1
    assert "only in the other mode" in outcome.message
    assert "a similar object exists in live mode" in outcome.message
    assert _rows(engine) == before and _sync_history(engine) == []


def test_brake_stops_mass_cancellations_and_force_goes_on(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    ended = NOW - 2 * DAY
    for n in range(30):
        sub_id = f"sub_Brake{n:02d}"
        _subscriber(engine, f"b{n:02d}", "premium", sub_id)
        if n < 20:  # canceled in Stripe, the webhooks lost
            _stripe(stripe_shape, sub_id, [PREMIUM_ITEM], status="canceled",
                    canceled_at=_epoch(ended - DAY), ended_at=_epoch(ended))
        else:
            _stripe(stripe_shape, sub_id, [PREMIUM_ITEM])
    before = _rows(engine)
    settings = _settings(db_url, tmp_path, stripe_shape.url)

    dry = run_job("subscription-sync", settings, at=NOW, dry_run=True)
    real = run_job("subscription-sync", settings, at=NOW)

    for outcome in (dry, real):
        assert outcome.status == "error"
        assert outcome.message.startswith(
            "safety brake: would cancel or downgrade subscriptions: 20 of 30 (67%)")
        assert "SUBSCRIPTION_SYNC_DOWNGRADE_BRAKE_SHARE" in outcome.message
        assert outcome.details["brake"]["samples"] == [
            f"sub_Brake{n:02d}: premium/active -> free/inactive (canceled_in_stripe)"
            for n in range(5)]
    assert _rows(engine) == before and _sync_history(engine) == []

    forced = run_job("subscription-sync", settings, at=NOW, force=True)
    assert forced.status == "success", forced.message
    assert forced.details["deleted"] == 20 and forced.details["brake"]["forced"]
    events = _sync_history(engine)
    assert len(events) == 20
    # Dated when Stripe ended them (the reports count them in that month), recorded now.
    assert {e["event_timestamp"] for e in events} == {ended}
    assert {e["created_at"] for e in events} == {NOW}


# --- issue 12, item 6: a total outage is an error, whatever the count -----------------------
def test_stripe_unreachable_with_three_subscriptions_fails_the_run(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    for n in range(3):
        _subscriber(engine, f"down{n}", "premium", f"sub_Down{n}")
    before = _rows(engine)
    settings = _settings(db_url, tmp_path, f"http://127.0.0.1:{free_port()}")

    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)
    outcome = runner.run("subscription-sync", trigger="vercel")

    assert outcome.status == "error" and outcome.http_status == 500
    assert outcome.attempts == 3  # retried by the runner, then alerted
    assert "alerts" in outcome.details
    assert "Stripe failed 3 calls and answered none" in outcome.message
    assert _rows(engine) == before
    # The slot is not done: the scheduler's next delivery of it runs again.
    again = runner.run("subscription-sync", trigger="vercel")
    assert again.status == "error" and again.run_id != outcome.run_id


def test_the_brake_waits_for_every_read_chunk_however_many_calls_they_take(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads cut into chunks of 7 subscriptions, one call each: the brake is asked once
    every chunk is read, over all 30, and nothing is written before it says no."""
    from app.jobs import subscription_sync

    for n in range(30):
        sub_id = f"sub_Brake{n:02d}"
        _subscriber(engine, f"b{n:02d}", "premium", sub_id)
        if n % 3:  # canceled in Stripe, the webhooks lost: 20 of 30, spread over chunks
            _stripe(stripe_shape, sub_id, [PREMIUM_ITEM], status="canceled",
                    canceled_at=_epoch(NOW - 3 * DAY), ended_at=_epoch(NOW - 2 * DAY))
        else:
            _stripe(stripe_shape, sub_id, [PREMIUM_ITEM])
    before = _rows(engine)
    monkeypatch.setattr(subscription_sync, "_CHUNK", 7)
    runner = Runner(_settings(db_url, tmp_path, stripe_shape.url), engine,
                    clock=FixedClock(NOW), sleep=lambda _s: None)
    dry = runner.run("subscription-sync", trigger="cli", dry_run=True)
    cut_everywhere(monkeypatch)

    answers = run_to_the_end(runner, "subscription-sync", trigger="cli")

    # 30 candidates in ranges of 7: four bounded ranges and the open one past them.
    assert [a.status for a in answers] == ["partial"] * 5 + ["error"]
    assert [a.details["chunks_done"] for a in answers[:-1]] == [1, 2, 3, 4, 5]
    last = answers[-1]
    assert last.message.startswith(
        "safety brake: would cancel or downgrade subscriptions: 20 of 30 (67%)")
    assert dry.status == "error" and dry.message == last.message
    assert _rows(engine) == before and _sync_history(engine) == []


def test_some_failures_are_a_warning_naming_them(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    _subscriber(engine, "fine", "premium", "sub_Fine")
    _subscriber(engine, "broken", "premium", "sub_Broken")
    _stripe(stripe_shape, "sub_Fine", [PREMIUM_ITEM])
    stripe_shape.errors["sub_Broken"] = 500
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)
    assert outcome.status == "warning"
    assert outcome.details["failed"] == 1 and "failed: sub_Broken" in outcome.message


# --- a webhook landing mid-run wins ---------------------------------------------------------
def test_a_row_the_app_changed_during_the_run_is_left_to_the_app(
        engine: Engine, db_url: str, tmp_path: Path, stripe_shape: StripeShapeServer,
        run_job: JobRun) -> None:
    user = _subscriber(engine, "racer", "premium", "sub_Racer")
    _stripe(stripe_shape, "sub_Racer", [AI_ITEM])  # a plan change the webhook missed

    def cancel_route(_sub_id: str) -> None:
        # The user cancels while Stripe is being asked; the app's cancel route does not
        # touch updated_at.
        AppWriter(engine).canceled_at_period_end(user, NOW)

    stripe_shape.on_retrieve = cancel_route
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_shape.url), at=NOW)

    assert outcome.details["skipped_concurrent"] == 1
    row = _rows(engine)["cus_racer"]
    assert row["cancel_at_period_end"] is True and row["tier"] == "premium"
    assert _sync_history(engine) == []
