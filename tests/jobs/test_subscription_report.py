"""subscription-report: totals by email with a CSV, sent once, archived reports readable.

Data is written the way the app writes it (app/voyagesmart/sample_data.py): only Stripe
subscriptions are paid; the sign-up trigger's year and promo codes are grants, reported apart.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from app.config import Settings, get_settings
from app.jobs.subscription_report import read_report
from app.models import CronMonthlyReport, Plan, SubscriptionHistory, UserSubscription
from app.ops.cli import cli
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import JobRun, make_settings
from tests.support.servers import SmtpSink
from tests.support.stripe_servers import StripeShapeServer, stripe_shape, subscription_json

__all__ = ["stripe_shape"]

NOW = dt.datetime(2026, 12, 1, 4, 0, 10, tzinfo=dt.UTC)
ADMINS = ["ceo@example.com", "cfo@example.com"]


def _at(y: int, m: int, d: int) -> dt.datetime:
    return dt.datetime(y, m, d, 12, tzinfo=dt.UTC)


def _seed(engine: Engine) -> None:
    app = AppWriter(engine)
    people = {name: app.sign_up(f"{name}@example.com", at=_at(2026, 5, 1))
              for name in "ABCDEH"}
    app.stripe_subscribed(people["A"], tier="premium", at=_at(2026, 9, 1))
    app.stripe_subscribed(people["B"], tier="premium", at=_at(2026, 11, 10))   # new in Nov
    app.stripe_subscribed(people["C"], tier="ai", at=_at(2026, 10, 5))         # new in Oct
    app.stripe_subscribed(people["D"], tier="ai", at=_at(2026, 8, 1))
    app.stripe_deleted(people["D"], _at(2026, 11, 15))                          # ends in Nov
    app.stripe_subscribed(people["E"], tier="premium", at=_at(2026, 6, 1))
    app.stripe_deleted(people["E"], _at(2026, 10, 20))                          # ends in Oct
    # Canceled at the end of a period that has not ended yet: still paying.
    app.stripe_subscribed(people["H"], tier="premium", at=_at(2026, 9, 15),
                          period_end=_at(2026, 12, 15))
    app.canceled_at_period_end(people["H"], _at(2026, 11, 20))
    # Grants: a sign-up year (F) and a promo code's tier (G); never in MRR.
    app.sign_up("F@example.com", at=_at(2026, 11, 2))
    promo = app.promo_code("AIFREE", tier="ai", at=_at(2026, 11, 1),
                           expires_at=_at(2027, 2, 1))
    app.redeem(app.sign_up("G@example.com", at=_at(2026, 11, 19)), promo, _at(2026, 11, 20))


def _settings(db_url: str, tmp_path: Path, sink: SmtpSink, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"admin_emails": ADMINS, **sink.settings}
    return make_settings(db_url, tmp_path, **{**values, **overrides})


def _parts(message: Any) -> tuple[str, str, list[list[str]]]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "subscription-report-2026-11.csv"
    rows = list(csv.reader(io.StringIO(attachment.get_content())))
    return text, html, rows


def test_report_arrives_with_totals_and_csv(engine: Engine, db_url: str, tmp_path: Path,
                                            smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed(engine)
    outcome = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW)
    assert outcome.status == "success", outcome.message
    [mail] = smtp_sink.received
    assert sorted(mail.rcpt_tos) == sorted(ADMINS)
    message = mail.message
    assert "2026-11" in message["Subject"] and "24.96 EUR" in message["Subject"]
    text, html, rows = _parts(message)
    assert "paid at month end    4 (+0)" in text
    assert "MRR                  24.96 EUR (-5.00)" in text
    assert "net change           +0" in text
    assert "churn rate           0.25" in text
    assert "sign_up              premium 1 ai 0" in text
    assert "promo_code           premium 0 ai 1" in text
    assert "<strong>24.96 EUR</strong>" in html
    assert rows[0] == ["month", "tier", "metric", "value", "previous_month_value"]
    table = {(r[1], r[2]): (r[3], r[4]) for r in rows[1:]}
    assert table[("premium", "active")] == ("3", "2")
    assert table[("ai", "active")] == ("1", "2")
    assert table[("premium", "new")] == ("1", "0")
    assert table[("ai", "new")] == ("0", "1")
    assert table[("ai", "canceled")] == ("1", "0")
    assert table[("premium", "canceled")] == ("0", "1")
    assert table[("premium", "mrr")] == ("14.97", "9.98")
    assert table[("all", "mrr_EUR")] == ("24.96", "29.96")
    assert table[("all", "net_change")] == ("0", "0")
    assert table[("all", "churn_rate")] == ("0.25", "0.25")
    with engine.connect() as conn:
        stored = read_report(conn, "2026-11")
    assert stored is not None and stored["sent_at"] == NOW and not stored["archived"]
    assert stored["data"]["totals"]["mrr"] == {"EUR": "24.96"}
    assert stored["data"]["grants"]["total"] == 2


def test_mrr_leaves_grants_out_and_prices_come_from_the_plan_catalogue(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed(engine)
    plans = Plan.__table__
    with engine.begin() as conn:  # a yearly AI plan: a twelfth of it per month
        conn.execute(plans.update().where(plans.c.tier == "ai").values(
            price=119.88, interval="year"))
    outcome = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW,
                      dry_run=True)
    report = outcome.details["report"]
    # 3 premium x 4.99 + 1 ai x 9.99: the granted premium year and promo ai tier add 0.
    assert report["totals"]["mrr"] == {"EUR": "24.96"}
    assert report["tiers"]["ai"]["price"] == "9.99"
    assert report["grants"]["by_source"] == {"promo_code": {"premium": 0, "ai": 1},
                                             "sign_up": {"premium": 1, "ai": 0}}
    assert "2 granted tiers (not in MRR)" in outcome.message
    with engine.begin() as conn:
        conn.execute(plans.delete().where(plans.c.tier == "ai"))
    again = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW,
                    dry_run=True)
    assert again.details["report"]["totals"]["mrr"] == {"EUR": "14.97"}
    assert again.details["report"]["warnings"] == [
        "no plan for tier ai in subscriptions: its MRR counts as 0"]


def test_second_run_sends_nothing_unless_forced(engine: Engine, db_url: str,
                                                tmp_path: Path, smtp_sink: SmtpSink,
                                                run_job: JobRun) -> None:
    _seed(engine)
    settings = _settings(db_url, tmp_path, smtp_sink)
    run_job("subscription-report", settings, at=NOW)
    again = run_job("subscription-report", settings, at=NOW)
    assert again.status == "success"
    assert "already sent, not sent again" in again.message
    assert len(smtp_sink.received) == 1
    forced = run_job("subscription-report", settings, at=NOW, force=True)
    assert "sent to 2 admin(s)" in forced.message
    assert len(smtp_sink.received) == 2
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(
            CronMonthlyReport.__table__)) == 1


def test_dry_run_sends_and_stores_nothing(engine: Engine, db_url: str, tmp_path: Path,
                                          smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed(engine)
    outcome = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW,
                      dry_run=True)
    assert outcome.status == "success"
    assert "would send" in outcome.message
    assert outcome.details["report"]["totals"]["active"] == 4
    assert smtp_sink.received == []
    with engine.connect() as conn:
        assert read_report(conn, "2026-11") is None


def test_without_admins_the_report_is_stored_and_the_run_warns(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed(engine)
    outcome = run_job("subscription-report",
                      _settings(db_url, tmp_path, smtp_sink, admin_emails=[]), at=NOW)
    assert outcome.status == "warning"
    assert "ADMIN_EMAILS is empty" in outcome.message
    with engine.connect() as conn:
        stored = read_report(conn, "2026-11")
    assert stored is not None and stored["sent_at"] is None


def test_old_reports_are_archived_and_stay_readable(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch, run_job: JobRun) -> None:
    def old(month: str) -> dict[str, Any]:
        first = dt.datetime.strptime(month, "%Y-%m").date()
        return {"month": month, "month_start": first, "data": {"month": month, "totals": {}},
                "csv": f"month\n{month}\n", "created_at": NOW, "updated_at": NOW,
                "sent_at": NOW, "archived": False}

    with engine.begin() as conn:
        conn.execute(CronMonthlyReport.__table__.insert(),
                     [old("2024-10"), old("2024-11"), old("2024-12")])
    outcome = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW)
    # Retention 24 months from December 2026: everything before December 2024 goes.
    assert outcome.details["archived"] == 2
    with engine.connect() as conn:
        archived = read_report(conn, "2024-10")
        kept = read_report(conn, "2024-12")
    assert archived is not None and archived["archived"] and archived["archived_at"] == NOW
    assert archived["csv"] == "month\n2024-10\n"
    assert kept is not None and not kept["archived"]

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(cli, ["report", "show", "--month", "2024-10"])
        as_csv = CliRunner().invoke(cli, ["report", "show", "--month", "2024-10", "--csv"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert '"archived": true' in shown.output
    assert as_csv.output == "month\n2024-10\n"


# --- what happened counts, in the month it happened ----------------------------------------
PREMIUM_PRICE = "price_1PremiumMonthly"


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def test_cancellations_count_in_the_month_they_ended_and_late_news_is_a_correction(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        stripe_shape: StripeShapeServer, run_job: JobRun) -> None:
    """Two monthly reports with a fixed clock, and what happens between them."""
    app = AppWriter(engine)
    people = {name: app.sign_up(f"{name}@example.com", at=_at(2026, 5, 1)) for name in "AKHL"}
    ends = {"A": _at(2026, 12, 20), "K": dt.datetime(2026, 11, 30, 22, tzinfo=dt.UTC),
            "H": _at(2026, 12, 15), "L": _at(2026, 12, 10)}
    for name, start in (("A", _at(2026, 9, 1)), ("K", _at(2026, 9, 5)),
                        ("H", _at(2026, 9, 15)), ("L", _at(2026, 10, 10))):
        app.stripe_subscribed(people[name], tier="premium", at=start,
                              subscription_id=f"sub_{name}", customer_id=f"cus_{name}",
                              period_end=ends[name])
    # Canceled at period end: Stripe sets canceled_at to the request's time.
    app.canceled_at_period_end(people["K"], _at(2026, 11, 5))   # ends Nov 30, 22:00
    app.canceled_at_period_end(people["H"], _at(2026, 11, 20))  # ends Dec 15
    # In Stripe: L was canceled at once on Nov 28 and the webhook never arrived.
    lost = dt.datetime(2026, 11, 28, 9, tzinfo=dt.UTC)
    created = _epoch(_at(2026, 9, 1))
    item = [(PREMIUM_PRICE, "prod_Premium", 499)]
    stripe_shape.add(subscription_json("sub_A", customer="cus_A", prices=item,
                                       created=created, period_end=_epoch(ends["A"])))
    stripe_shape.add(subscription_json(
        "sub_H", customer="cus_H", prices=item, created=created,
        period_end=_epoch(ends["H"]), cancel_at_period_end=True,
        canceled_at=_epoch(_at(2026, 11, 20))))
    stripe_shape.add(subscription_json(
        "sub_K", customer="cus_K", prices=item, created=created, status="canceled",
        period_end=_epoch(ends["K"]), cancel_at_period_end=True,
        canceled_at=_epoch(_at(2026, 11, 5)), ended_at=_epoch(ends["K"])))
    stripe_shape.add(subscription_json(
        "sub_L", customer="cus_L", prices=item, created=created, status="canceled",
        period_end=_epoch(ends["L"]), canceled_at=_epoch(lost), ended_at=_epoch(lost)))
    settings = _settings(db_url, tmp_path, smtp_sink, stripe_secret_key="sk_test_report",
                         stripe_api_base=stripe_shape.url,
                         stripe_tier_map={PREMIUM_PRICE: "premium"},
                         stripe_sync_strategy="retrieve", stripe_max_network_retries=0)

    # Dec 1, 00:00: expiry ends K (its period ended 2 hours before); 04:00: November.
    run_job("subscription-expiry", settings, at=dt.datetime(2026, 12, 1, 0, 0, 30, tzinfo=dt.UTC),
            expect=("success", "warning"))
    november = run_job("subscription-report", settings, at=NOW,
                       expect=("success", "warning")).details["report"]
    assert november["month"] == "2026-11"
    assert november["tiers"]["premium"] | {"mrr": None} == {
        "active": 3, "new": 0, "canceled": 1, "mrr": None, "currency": "EUR",
        "price": "4.99"}  # K ended in November, when its period did
    assert november["previous"]["totals"]["active"] == 4
    assert november["corrections"] == []
    with engine.connect() as conn:
        sent_november = read_report(conn, "2026-11")
    assert sent_november is not None

    # Dec 2: the sync finds what Stripe did to L on Nov 28 (and K's end, already known).
    sync = run_job("subscription-sync", settings,
                   at=dt.datetime(2026, 12, 2, 2, 0, 30, tzinfo=dt.UTC),
                   expect=("success", "warning"))
    assert sync.details["deleted"] == 2

    # Jan 1: December.  H ended on Dec 15 and nothing recorded it: it still counts.
    december_run = run_job("subscription-report", settings,
                           at=dt.datetime(2027, 1, 1, 4, 0, 10, tzinfo=dt.UTC),
                           expect=("success", "warning"))
    december = december_run.details["report"]
    assert december["month"] == "2026-12"
    assert (december["tiers"]["premium"]["active"], december["tiers"]["premium"]["new"],
            december["tiers"]["premium"]["canceled"]) == (1, 0, 1)
    assert december["totals"]["mrr"] == {"EUR": "4.99"}
    # November as known now: L ended there too.  Not silently: each change is named.
    assert december["previous"]["totals"]["canceled"] == 2
    corrected = {(c["month"], c["tier"], c["figure"]): (c["reported"], c["corrected"])
                 for c in december["corrections"]}
    assert corrected[("2026-11", "all", "canceled")] == (1, 2)
    assert corrected[("2026-11", "all", "active")] == (3, 2)
    assert corrected[("2026-11", "all", "mrr_EUR")] == ("14.97", "9.98")
    assert corrected[("2026-11", "all", "churn_rate")] == (0.25, 0.5)
    assert "; corrects 2026-11 active (all): reported 3, now 2; 2026-11 canceled (all): " \
        "reported 1, now 2" in december_run.message
    # The last report mail (the sink also holds the service's own alerts: other jobs are
    # overdue on this test's clock).
    [*_, mail] = [m.message for m in smtp_sink.received
                  if not str(m.message["Subject"]).startswith("[voyagesmart-cron]")]
    assert "(corrects 2026-11)" in mail["Subject"]
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert "Corrections to figures already reported" in text
    assert "2026-11 canceled (all): reported 1, now 2" in text
    # The report already sent is kept as it was sent.
    with engine.connect() as conn:
        assert read_report(conn, "2026-11") == sent_november


def _history_event(engine: Engine, user_id: Any, sub_id: str, at: dt.datetime, *,
                   tier: str, status: str) -> None:
    """What the webhook's `updateSubscription` records: Stripe's status verbatim (the
    history has no CHECK on it, unlike `user_subscriptions.status`)."""
    with engine.begin() as conn:
        conn.execute(SubscriptionHistory.__table__.insert().values(
            id=uuid.uuid4(), user_id=user_id, event_type="subscription_created", tier=tier,
            status=status, stripe_subscription_id=sub_id, stripe_customer_id=f"cus_{sub_id}",
            event_timestamp=at, created_at=at, details={"status": status}))


def test_paused_and_incomplete_subscriptions_are_not_paid(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    app = AppWriter(engine)
    people = {name: app.sign_up(f"{name}@example.com", at=_at(2026, 5, 1)) for name in "QRS"}
    subs = UserSubscription.__table__
    # Q pays for AI from October and pauses on Nov 10 (the sync then writes inactive).
    app.stripe_subscribed(people["Q"], tier="ai", at=_at(2026, 10, 1), subscription_id="sub_Q")
    _history_event(engine, people["Q"], "sub_Q", _at(2026, 11, 10), tier="ai",
                   status="paused")
    # R never paid: its first invoice failed, then the subscription expired.
    _history_event(engine, people["R"], "sub_R", _at(2026, 11, 12), tier="premium",
                   status="incomplete")
    _history_event(engine, people["R"], "sub_R", _at(2026, 11, 13), tier="premium",
                   status="incomplete_expired")
    # S's first payment failed, then succeeded: it starts paying on Nov 15.
    _history_event(engine, people["S"], "sub_S", _at(2026, 11, 14), tier="premium",
                   status="incomplete")
    app.stripe_subscribed(people["S"], tier="premium", at=_at(2026, 11, 15),
                          subscription_id="sub_S")
    with engine.begin() as conn:
        conn.execute(subs.update().where(subs.c.user_id == people["Q"])
                     .values(status="inactive"))
        conn.execute(subs.update().where(subs.c.user_id == people["R"]).values(
            tier="free", status="inactive", stripe_subscription_id="sub_R"))

    report = run_job("subscription-report", _settings(db_url, tmp_path, smtp_sink), at=NOW,
                     dry_run=True).details["report"]

    assert report["tiers"]["ai"] | {"mrr": None, "price": None} == {
        "active": 0, "new": 0, "canceled": 1, "mrr": None, "price": None,
        "currency": "EUR"}
    assert report["previous"]["tiers"]["ai"]["active"] == 1  # Q paid all of October
    assert report["tiers"]["premium"]["new"] == 1  # S only; R never paid
    assert report["totals"]["mrr"] == {"EUR": "4.99"}


def test_dry_run_predicts_the_real_run(engine: Engine, db_url: str, tmp_path: Path,
                                       smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed(engine)
    settings = _settings(db_url, tmp_path, smtp_sink)
    dry = run_job("subscription-report", settings, at=NOW, dry_run=True)
    real = run_job("subscription-report", settings, at=NOW)
    assert (dry.status, dry.records_processed) == (real.status, real.records_processed)
    assert {**dry.details, "dry_run": None} == {**real.details, "dry_run": None}
    assert dry.details["sent_to"] == ADMINS
