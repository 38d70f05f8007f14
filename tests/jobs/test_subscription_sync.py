"""subscription-sync against localstripe: every kind of drift, 404, 429, 500, timeouts.

Local rows are `user_subscriptions` rows written as the app writes them: sign-up (the
trigger's premium year), then the webhook's Stripe columns, then drifted.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import stripe
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import RunOutcome
from app.jobs.subscription_sync import FIELDS, STATUS_MAP, stripe_state
from app.models import SubscriptionHistory, UserSubscription
from app.models.voyagesmart import SUBSCRIPTION_STATUSES
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import JobRun, make_settings
from tests.support.stripe_servers import FaultProxy, LocalStripe, localstripe, stripe_proxy

__all__ = ["localstripe", "stripe_proxy"]

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


class World:
    """Plans in localstripe, and subscriptions made to drift locally."""

    def __init__(self, server: LocalStripe) -> None:
        self.client = stripe.StripeClient("sk_test_world", base_addresses={"api": server.url})
        tag = uuid.uuid4().hex[:8]
        premium = self.client.v1.products.create(params={"name": f"Premium {tag}"})
        ai = self.client.v1.products.create(params={"name": f"AI {tag}"})
        self.ai_product = ai.id
        self.premium_plan = self.client.v1.plans.create(params={
            "id": f"premium-{tag}", "amount": 499, "currency": "eur", "interval": "month",
            "product": premium.id}).id
        self.ai_plan = self.client.v1.plans.create(params={
            "id": f"ai-{tag}", "amount": 999, "currency": "eur", "interval": "month",
            "product": ai.id}).id
        # The plan maps premium; only the product maps ai (lookup falls back to it).
        self.tier_map = {self.premium_plan: "premium", self.ai_product: "ai"}

    def subscription(self, plan: str, **params: Any) -> dict[str, Any]:
        customer = self.client.v1.customers.create(params={
            "email": f"{uuid.uuid4().hex[:8]}@example.com", "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"}})
        sub = self.client.v1.subscriptions.create(params={
            "customer": customer.id, "items": [{"plan": plan}], **params})
        return sub.to_dict()

    def get(self, sub_id: str) -> dict[str, Any]:
        return self.client.v1.subscriptions.retrieve(sub_id).to_dict()


def _row(world: World, obj: dict[str, Any] | None, **drift: Any) -> dict[str, Any]:
    """A local row equal to Stripe's state, then drifted by `drift`."""
    state = stripe_state(obj, world.tier_map) if obj else {
        "status": "active", "tier": "premium", "current_period_end": NOW + 20 * DAY,
        "cancel_at_period_end": False,
        "stripe_subscription_id": f"sub_gone_{uuid.uuid4().hex[:10]}"}
    if obj and obj["status"] == "canceled":  # what the row said before Stripe canceled it
        state.update(status="active", tier="premium")
    return {
        "stripe_customer_id": obj["customer"] if obj else "cus_gone",
        "updated_at": NOW - 3 * DAY,
        **state, **drift,
    }


@pytest.fixture
def world(localstripe: LocalStripe) -> World:
    return World(localstripe)


def _seed(engine: Engine, world: World) -> dict[str, dict[str, Any]]:
    w = world
    canceled = w.subscription(w.premium_plan)
    w.client.v1.subscriptions.cancel(canceled["id"])
    canceled_recently = w.subscription(w.premium_plan)
    w.client.v1.subscriptions.cancel(canceled_recently["id"])
    pending_cancel = w.subscription(w.premium_plan)
    w.client.v1.subscriptions.update(pending_cancel["id"],
                                     params={"cancel_at_period_end": True})
    rows = {
        "status": _row(w, w.subscription(w.premium_plan), status="inactive"),
        "tier": _row(w, w.subscription(w.ai_plan), tier="premium"),
        "period": _row(w, p := w.subscription(w.premium_plan),
                       current_period_end=stripe_state(p, {})["current_period_end"]
                       - 30 * DAY),
        "cancel_at_period_end": _row(w, w.get(pending_cancel["id"]),
                                     cancel_at_period_end=False),
        "trial": _row(w, w.subscription(w.premium_plan,
                                        trial_end=int((NOW + 14 * DAY).timestamp())),
                      tier="ai"),
        "canceled_in_stripe": _row(w, w.get(canceled["id"])),
        "missing": _row(w, None),
        "unchanged": _row(w, w.subscription(w.ai_plan)),
        "unchanged_premium": _row(w, w.subscription(w.premium_plan)),
        "canceled_long_ago": _row(w, w.subscription(w.premium_plan), status="inactive",
                                  updated_at=NOW - 90 * DAY),
        "canceled_recently": _row(w, w.get(canceled_recently["id"]), status="inactive",
                                  updated_at=NOW - 5 * DAY),
    }
    app = AppWriter(engine)
    subs = UserSubscription.__table__
    for name, row in rows.items():
        row["user_id"] = app.sign_up(f"{name}-{uuid.uuid4().hex[:6]}@example.com",
                                     at=NOW - 60 * DAY)
        with engine.begin() as conn:
            conn.execute(subs.update().where(subs.c.user_id == row["user_id"]).values(
                **{k: v for k, v in row.items() if k != "user_id"}))
    # The sign-up trigger's premium year: no Stripe id, never Stripe's business.
    rows["grant"] = {"user_id": app.sign_up(f"grant-{uuid.uuid4().hex[:6]}@example.com",
                                            at=NOW - 60 * DAY)}
    return rows


def _settings(db_url: str, tmp_path: Path, proxy: FaultProxy, world: World,
              **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stripe_secret_key": "sk_test_sync", "stripe_api_base": proxy.url,
        "stripe_tier_map": world.tier_map, "stripe_sync_strategy": "retrieve",
        "stripe_rate_limit": 100, "stripe_max_network_retries": 1, "stripe_timeout": 5.0,
    }
    values.update(overrides)
    return make_settings(db_url, tmp_path, **values)


def _local(engine: Engine, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_user = {row["user_id"]: name for name, row in rows.items()}
    with engine.connect() as conn:
        found = conn.execute(sa.select(UserSubscription.__table__)).mappings().all()
    return {by_user[r["user_id"]]: dict(r) for r in found}


def _history(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(SubscriptionHistory.__table__)).mappings()]


EXPECTED_BY_FIELD = {"status": 3, "tier": 5, "current_period_end": 1,
                     "cancel_at_period_end": 1, "stripe_subscription_id": 3}
ENDED = ("canceled_in_stripe", "missing", "canceled_recently")


def _assert_repaired(engine: Engine, world: World, rows: dict[str, dict[str, Any]],
                     outcome: RunOutcome) -> None:
    details = outcome.details
    assert details["checked"] == 10  # every row with a Stripe id but the long-inactive one
    assert details["changed"] == 8
    assert details["changed_by_field"] == EXPECTED_BY_FIELD
    assert details["missing_in_stripe"] == 1
    assert details["deleted"] == 3
    assert details["failed"] == 0
    local = _local(engine, rows)
    for name in ("status", "tier", "period", "cancel_at_period_end", "trial", "unchanged",
                 "unchanged_premium"):
        expected = stripe_state(world.get(rows[name]["stripe_subscription_id"]),
                                world.tier_map)
        assert {f: local[name][f] for f in FIELDS} == expected, name
    # What the app's customer.subscription.deleted handler writes.
    for name in ENDED:
        assert {f: local[name][f] for f in FIELDS} == {
            "status": "inactive", "tier": "free", "current_period_end":
            local[name]["current_period_end"], "cancel_at_period_end": False,
            "stripe_subscription_id": None}, name
    assert {r["status"] for r in local.values()} <= set(SUBSCRIPTION_STATUSES)
    # Outside the lookback: not checked, left as it was although Stripe says active.
    assert local["canceled_long_ago"]["status"] == "inactive"
    assert local["canceled_long_ago"]["updated_at"] == NOW - 90 * DAY
    assert local["unchanged"]["updated_at"] == NOW - 3 * DAY
    # The trigger's premium year is not Stripe's: untouched.
    assert (local["grant"]["tier"], local["grant"]["status"]) == ("premium", "active")
    assert local["grant"]["updated_at"] == NOW - 60 * DAY

    events = [e for e in _history(engine) if e["details"].get("source") == "subscription-sync"]
    assert len(events) == 8
    by_sub = {e["stripe_subscription_id"]: e for e in events}
    assert {by_sub[rows[n]["stripe_subscription_id"]]["event_type"] for n in ENDED} == {
        "subscription_deleted"}
    assert rows["unchanged"]["stripe_subscription_id"] not in by_sub
    tier_event = by_sub[rows["tier"]["stripe_subscription_id"]]
    assert tier_event["event_type"] == "subscription_created"  # the app's name for updates
    assert tier_event["details"]["before"] == {"tier": "premium"}
    assert tier_event["details"]["after"] == {"tier": "ai"}
    assert tier_event["tier"] == "ai" and tier_event["user_id"] == rows["tier"]["user_id"]
    assert by_sub[rows["trial"]["stripe_subscription_id"]]["details"]["after"] == {
        "tier": "premium"}
    gone = by_sub[rows["missing"]["stripe_subscription_id"]]
    assert gone["details"]["reason"] == "missing_in_stripe"
    assert (gone["tier"], gone["status"]) == ("free", "inactive")


def test_sync_repairs_every_kind_of_drift(engine: Engine, db_url: str, tmp_path: Path,
                                         stripe_proxy: FaultProxy, world: World,
                                         run_job: JobRun) -> None:
    rows = _seed(engine, world)
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world), at=NOW)
    assert outcome.status == "success", outcome.message
    _assert_repaired(engine, world, rows, outcome)
    assert outcome.details["api_calls"] == 10 == stripe_proxy.count(r"^/v1/subscriptions/")
    assert "checked 10: changed 8" in outcome.message


def test_second_run_changes_nothing(engine: Engine, db_url: str, tmp_path: Path,
                                   stripe_proxy: FaultProxy, world: World, run_job: JobRun) -> None:
    rows = _seed(engine, world)
    settings = _settings(db_url, tmp_path, stripe_proxy, world)
    run_job("subscription-sync", settings, at=NOW)
    before = _local(engine, rows)
    again = run_job("subscription-sync", settings, at=NOW)
    assert again.status == "success"
    assert again.details["changed"] == 0 and again.details["changed_by_field"] == {}
    # The ended ones have no Stripe id any more: not Stripe's business now.
    assert again.details["checked"] == 7 and again.details["missing_in_stripe"] == 0
    assert _local(engine, rows) == before
    assert len([e for e in _history(engine)
                if e["details"].get("source") == "subscription-sync"]) == 8


def test_list_paging_gives_the_same_repairs(engine: Engine, db_url: str, tmp_path: Path,
                                            stripe_proxy: FaultProxy, world: World,
                                            run_job: JobRun) -> None:
    rows = _seed(engine, world)
    settings = _settings(db_url, tmp_path, stripe_proxy, world, stripe_sync_strategy="list")
    outcome = run_job("subscription-sync", settings, at=NOW)
    assert outcome.status == "success", outcome.message
    assert outcome.details["strategy"] == "list"
    _assert_repaired(engine, world, rows, outcome)
    pages = stripe_proxy.count(r"^/v1/subscriptions\?")
    # Active rows come from the list; only our inactive rows and those the list lacks
    # (canceled in Stripe, missing) are retrieved.
    assert stripe_proxy.count(r"^/v1/subscriptions/") == 5
    assert outcome.details["api_calls"] == pages + 5


def test_dry_run_reports_and_writes_nothing(engine: Engine, db_url: str, tmp_path: Path,
                                            stripe_proxy: FaultProxy, world: World,
                                            run_job: JobRun) -> None:
    rows = _seed(engine, world)
    before = _local(engine, rows)
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world), at=NOW,
                      dry_run=True)
    assert outcome.status == "success"
    assert outcome.details["changed"] == 8
    assert outcome.details["changed_by_field"] == EXPECTED_BY_FIELD
    assert "would change 8" in outcome.message
    assert _local(engine, rows) == before
    assert not [e for e in _history(engine) if e["details"].get("source")]


def test_rate_limited_calls_are_retried(engine: Engine, db_url: str, tmp_path: Path,
                                        stripe_proxy: FaultProxy, world: World,
                                        run_job: JobRun) -> None:
    rows = _seed(engine, world)
    stripe_proxy.inject("/v1/subscriptions/" + rows["status"]["stripe_subscription_id"],
                        status=429, times=2, retry_after="0.05")
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world), at=NOW)
    assert outcome.status == "success", outcome.message
    assert outcome.details["rate_limited_retries"] == 2
    assert outcome.details["api_calls"] == 12
    _assert_repaired(engine, world, rows, outcome)


def test_one_failing_subscription_does_not_stop_the_others(
        engine: Engine, db_url: str, tmp_path: Path, stripe_proxy: FaultProxy,
        world: World, run_job: JobRun) -> None:
    rows = _seed(engine, world)
    bad = rows["tier"]["stripe_subscription_id"]
    stripe_proxy.inject("/v1/subscriptions/" + bad, status=500)
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world), at=NOW)
    assert outcome.status == "warning"
    assert outcome.details["failed"] == 1
    assert outcome.details["failures"][0]["stripe_subscription_id"] == bad
    assert bad in outcome.message and "1 failed" in outcome.message
    assert outcome.details["changed"] == 7
    assert outcome.details["api_calls"] == 11  # the SDK retried the 500 once
    local = _local(engine, rows)
    assert local["tier"]["tier"] == "premium"  # untouched
    assert local["status"]["status"] == "active"  # the others were repaired
    with engine.connect() as conn:
        log = conn.execute(sa.text("SELECT status, message FROM cron_job_log")).one()
    assert log.status == "warning" and bad in log.message


def test_timeout_is_retried(engine: Engine, db_url: str, tmp_path: Path,
                            stripe_proxy: FaultProxy, world: World, run_job: JobRun) -> None:
    rows = _seed(engine, world)
    stripe_proxy.inject("/v1/subscriptions/" + rows["period"]["stripe_subscription_id"],
                        delay=1.5, times=1)
    outcome = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world,
                                     stripe_timeout=0.5), at=NOW)
    assert outcome.status == "success", outcome.message
    assert outcome.details["api_calls"] == 11
    _assert_repaired(engine, world, rows, outcome)


def test_stripe_down_fails_the_run_for_a_retry(engine: Engine, db_url: str, tmp_path: Path,
                                               stripe_proxy: FaultProxy,
                                               world: World, run_job: JobRun) -> None:
    rows = _seed(engine, world)
    stripe_proxy.inject("/v1/subscriptions", status=503)
    settings = _settings(db_url, tmp_path, stripe_proxy, world, stripe_max_network_retries=0)
    outcome = run_job("subscription-sync", settings, at=NOW)
    assert outcome.status == "error"
    assert outcome.attempts == 3  # the runner retried the whole run
    assert "Stripe failed 10 calls" in outcome.message
    assert not [e for e in _history(engine) if e["details"].get("source")]
    assert _local(engine, rows)["status"]["status"] == "inactive"


def test_period_is_read_from_the_item_first() -> None:
    new_shape = {"status": "active", "items": {"data": [{
        "price": {"id": "price_ai", "product": "prod_x"},
        "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]},
        "current_period_start": 1, "current_period_end": 2}
    old_shape = {"status": "active", "plan": {"id": "plan_p", "product": "prod_p"},
                 "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}
    tiers = {"price_ai": "ai", "prod_x": "premium", "prod_p": "premium"}
    for obj, tier in ((new_shape, "ai"), (old_shape, "premium")):
        state = stripe_state(obj, tiers)
        assert state["tier"] == tier
        assert state["current_period_end"] == dt.datetime(2023, 12, 14, 22, 13, 20,
                                                          tzinfo=dt.UTC)
    assert stripe_state(old_shape, {})["tier"] is None


def test_every_stripe_status_maps_into_the_check_or_is_left_alone() -> None:
    stripe_statuses = ["active", "trialing", "past_due", "unpaid", "incomplete", "paused",
                       "canceled", "incomplete_expired", "something_new"]
    for status in stripe_statuses:
        mapped = stripe_state({"status": status}, {})["status"]
        assert mapped is None or mapped in SUBSCRIPTION_STATUSES, status
    assert set(STATUS_MAP.values()) <= set(SUBSCRIPTION_STATUSES)
    assert stripe_state({"status": "something_new"}, {})["status"] is None


def test_dry_run_predicts_the_real_run(engine: Engine, db_url: str, tmp_path: Path,
                                       stripe_proxy: FaultProxy, world: World,
                                       run_job: JobRun) -> None:
    _seed(engine, world)
    settings = _settings(db_url, tmp_path, stripe_proxy, world)
    dry = run_job("subscription-sync", settings, at=NOW, dry_run=True)
    real = run_job("subscription-sync", settings, at=NOW)
    assert (dry.status, dry.records_processed) == (real.status, real.records_processed)
    assert dry.message.replace("would change", "changed") == real.message
    assert {**dry.details, "dry_run": None} == {**real.details, "dry_run": None}
    assert real.details["downgrades"] == 4 and len(real.details["samples"]) == 5


def test_restore_puts_back_what_one_run_changed(engine: Engine, db_url: str, tmp_path: Path,
                                                stripe_proxy: FaultProxy, world: World,
                                                monkeypatch: pytest.MonkeyPatch,
                                                run_job: JobRun) -> None:
    from typer.testing import CliRunner

    from app.config import get_settings
    from app.ops.cli import cli

    rows = _seed(engine, world)
    before = _local(engine, rows)
    run = run_job("subscription-sync", _settings(db_url, tmp_path, stripe_proxy, world), at=NOW)
    assert run.details["changed"] == 8
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(cli, ["restore", str(run.run_id)])
        again = CliRunner().invoke(cli, ["restore", str(run.run_id)])
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    assert '"subscriptions_restored": 8' in done.output
    assert '"subscriptions_restored": 0' in again.output
    after = _local(engine, rows)
    for name, row in before.items():
        assert {f: after[name][f] for f in FIELDS} == {f: row[f] for f in FIELDS}, name
    restored = [e for e in _history(engine) if e["event_type"] == "admin_update"]
    assert len(restored) == 8
    assert {e["details"]["restores_run"] for e in restored} == {str(run.run_id)}
