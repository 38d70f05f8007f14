"""Work skipped when there is none: each job's precondition ends the run `skipped`, fast,
with its reason, touching nothing; a forced run still runs; `skipped` counts as done for
the slot and for overdue, and shows in /metrics and the dashboard."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core import health, registry
from app.core.context import JobContext, JobResult
from app.core.registry import JOBS, JobSpec
from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, PromoCode, UserSubscription
from tests.conftest import FixedClock, auth, make_settings, rows
from tests.support.notification_data import add_people, seed_reminders, user
from tests.support.servers import SmtpSink

# 28 Nov 2026, 10:05 UTC: the 08:00 trip-reminders slot targets trips starting 5 Dec.
NOW = dt.datetime(2026, 11, 28, 10, 5, tzinfo=dt.UTC)
FAST_MS = 2000  # a skip is a few indexed reads; the jobs themselves take longer


def _runner(engine: Engine, settings: Any, now: dt.datetime = NOW,
            jobs: dict[str, JobSpec] | None = None) -> Runner:
    return Runner(settings, engine, clock=FixedClock(now), jobs=jobs)


def _never_called(name: str) -> dict[str, JobSpec]:
    """The registry, with `name`'s job replaced by one that fails the test if it runs."""

    def job(ctx: JobContext) -> JobResult:
        raise AssertionError(f"{ctx.task} ran although its precondition held")

    return {**JOBS, name: dataclasses.replace(JOBS[name], func=job)}


def _assert_skipped(outcome: RunOutcome, reason: str) -> None:
    assert outcome.status == RunStatus.SKIPPED, outcome.message
    assert outcome.http_status == 200
    assert outcome.message == f"skipped: {reason}"
    assert outcome.details == {"skipped": reason}
    assert outcome.records_processed == 0 and outcome.attempts == 1
    assert outcome.duration_ms < FAST_MS


def _logged(engine: Engine, run_id: uuid.UUID | None) -> Any:
    log_t = table_of(CronJobLog)
    with engine.connect() as conn:
        return conn.execute(sa.select(log_t).where(log_t.c.run_id == run_id)).one()


# --- trip-reminders ---------------------------------------------------------------------
def test_trip_reminders_skip_when_no_trip_starts_and_none_is_pending(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    outcome = _runner(engine, settings, jobs=_never_called("trip-reminders")).run(
        "trip-reminders", trigger="vercel")
    _assert_skipped(outcome, "no trip starts on 2026-12-05 and no reminder is pending")
    assert outcome.slot == dt.datetime(2026, 11, 28, 8, tzinfo=dt.UTC)
    logged = _logged(engine, outcome.run_id)
    assert (logged.status, logged.message) == ("skipped", outcome.message)
    assert logged.ended_at is not None
    assert rows(engine, "SELECT count(*) AS n FROM cron_notification")[0].n == 0

    forced = _runner(engine, settings).run("trip-reminders", trigger="cli", force=True)
    assert forced.status == RunStatus.SUCCESS, forced.message
    assert forced.message.startswith("trips starting 2026-12-05: 0 sent")


def test_trip_reminders_run_when_a_trip_starts_or_a_reminder_waits(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    seed_reminders(engine, dt.date(2026, 12, 5), NOW)
    first = _runner(engine, settings).run("trip-reminders", trigger="vercel")
    assert first.status == RunStatus.SUCCESS and first.records_processed == 3, first.message

    # The next day no trip starts on its target day, but a reminder is still pending.
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE cron_notification SET status = 'pending'")
    next_day = _runner(engine, settings, NOW + dt.timedelta(days=1)).run(
        "trip-reminders", trigger="vercel")
    assert next_day.status != RunStatus.SKIPPED, next_day.message


# --- promo-cleanup ----------------------------------------------------------------------
def _code(code: str, *, expires: dt.datetime | None, created: dt.datetime) -> PromoCode:
    return PromoCode(id=uuid.uuid4(), code=code, tier="premium", max_uses=10, used_count=0,
                     expires_at=expires, is_active=True, created_at=created,
                     updated_at=created)


def test_promo_cleanup_skips_when_nothing_changed_since_its_last_run(
        engine: Engine, settings: Any) -> None:
    with Session(engine) as s, s.begin():
        s.add_all([_code("SUMMER", expires=NOW + dt.timedelta(days=3),
                         created=NOW - dt.timedelta(days=30)),
                   _code("SPRING", expires=NOW - dt.timedelta(days=1),
                         created=NOW - dt.timedelta(days=60))])
    # Never run: no "since" to compare with, so it runs (and deactivates SPRING).
    first = _runner(engine, settings).run("promo-cleanup", trigger="cli")
    assert first.status == RunStatus.SUCCESS and "1 deactivated" in first.message

    day2 = NOW + dt.timedelta(days=1)
    skipped = _runner(engine, settings, day2, _never_called("promo-cleanup")).run(
        "promo-cleanup", trigger="vercel")
    _assert_skipped(skipped, (
        "no promo code changed since the last run (2026-11-28 10:05 UTC): none created, "
        "edited or redeemed, no active code expired or used up, none past its retention, "
        "no archived row to purge"))

    # A skipped run is not "the last run": on day 5 SUMMER has expired since day 0's run.
    day5 = NOW + dt.timedelta(days=5)
    ran = _runner(engine, settings, day5).run("promo-cleanup", trigger="vercel")
    assert ran.status == RunStatus.SUCCESS and "1 deactivated" in ran.message, ran.message

    forced = _runner(engine, settings, day5 + dt.timedelta(hours=1)).run(
        "promo-cleanup", trigger="cli", force=True)
    assert forced.status == RunStatus.SUCCESS and forced.message.startswith("changed 0 codes")


def test_promo_cleanup_runs_after_a_new_code_or_a_redemption(engine: Engine,
                                                            settings: Any) -> None:
    first = _runner(engine, settings).run("promo-cleanup", trigger="cli")
    assert first.status == RunStatus.SUCCESS
    later = NOW + dt.timedelta(hours=2)
    with Session(engine) as s, s.begin():
        s.add(_code("NEW", expires=None, created=later))
    ran = _runner(engine, settings, NOW + dt.timedelta(days=1)).run(
        "promo-cleanup", trigger="vercel")
    assert ran.status == RunStatus.SUCCESS, ran.message


# --- storage-cleanup --------------------------------------------------------------------
def test_storage_cleanup_skips_where_storage_is_not_configured(
        engine: Engine, settings: Any) -> None:
    root = settings.storage_root
    assert not root.exists()
    outcome = _runner(engine, settings, jobs=_never_called("storage-cleanup")).run(
        "storage-cleanup", trigger="cli")
    _assert_skipped(outcome, (
        f"storage is not configured: STORAGE_BACKEND=local and its root {root} does not "
        "exist (set STORAGE_LOCAL_ROOT, or STORAGE_BACKEND=s3)"))
    assert not root.exists()
    # Forced, the job itself runs and says what is missing.
    forced = _runner(engine, settings).run("storage-cleanup", trigger="cli", force=True)
    assert forced.status == RunStatus.ERROR
    assert "do not exist on the local backend" in forced.message


# --- subscriptions ----------------------------------------------------------------------
def test_subscription_jobs_skip_with_no_subscriptions(engine: Engine, db_url: str,
                                                      tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path, stripe_secret_key="sk_test_not_called")
    for name, reason in [
        ("subscription-sync",
         "no subscription to sync: no user_subscriptions row has a stripe_subscription_id"),
        ("subscription-expiry",
         "no paid subscription has passed its canceled period's end or its valid_until"),
    ]:
        _assert_skipped(_runner(engine, settings, jobs=_never_called(name)).run(
            name, trigger="cli"), reason)
    forced = _runner(engine, settings).run("subscription-expiry", trigger="cli", force=True)
    assert forced.status == RunStatus.SUCCESS
    assert forced.message.startswith("moved 0 subscription(s)")


def test_subscription_expiry_runs_when_a_tier_has_ended(engine: Engine,
                                                       settings: Any) -> None:
    person = user("grant@example.com", created=NOW - dt.timedelta(days=400))
    with Session(engine) as s, s.begin():
        add_people(s, [person])
        s.flush()
        s.add(UserSubscription(id=uuid.uuid4(), user_id=person.id, tier="premium",
                               status="active", valid_until=NOW - dt.timedelta(days=1),
                               cancel_at_period_end=False, created_at=person.created_at,
                               updated_at=person.created_at))
    outcome = _runner(engine, settings).run("subscription-expiry", trigger="cli")
    assert outcome.status == RunStatus.SUCCESS and outcome.records_processed == 1


# --- the runner's part ------------------------------------------------------------------
def test_a_skipped_slot_is_done_and_a_second_delivery_is_a_duplicate(
        engine: Engine, settings: Any) -> None:
    first = _runner(engine, settings).run("subscription-expiry", trigger="vercel")
    assert first.status == RunStatus.SKIPPED
    again = _runner(engine, settings, NOW + dt.timedelta(minutes=5)).run(
        "subscription-expiry", trigger="vercel")
    assert again.status == RunStatus.DUPLICATE and again.run_id == first.run_id
    assert f"already ran (run {first.run_id}, skipped)" in again.message


def test_a_skipped_run_counts_for_overdue(engine: Engine, settings: Any) -> None:
    spec = JOBS["subscription-expiry"]
    _runner(engine, settings).run("subscription-expiry", trigger="vercel")
    facts, baseline = health.read_facts(engine, {spec.name: spec})
    assert facts[spec.name].last_success == NOW
    # Due by the next midnight plus the grace, not before.
    due = registry.next_fire(spec.schedule, NOW) + spec.grace
    assert not health.job_health(spec, facts[spec.name], due, baseline).overdue
    assert health.job_health(spec, facts[spec.name], due + dt.timedelta(seconds=1),
                             baseline).overdue
    assert not health.job_health(spec, facts[spec.name], due, baseline).failing


def test_a_precondition_that_fails_lets_the_job_run(engine: Engine, settings: Any) -> None:
    def broken(ctx: JobContext) -> str | None:
        raise RuntimeError("cannot tell")

    jobs = {**JOBS, "subscription-expiry": dataclasses.replace(
        JOBS["subscription-expiry"], precondition=broken)}
    outcome = _runner(engine, settings, jobs=jobs).run("subscription-expiry", trigger="cli")
    assert outcome.status == RunStatus.SUCCESS
    assert outcome.message.startswith("moved 0 subscription(s)")


def test_a_dry_run_reports_the_jobs_plan_and_that_a_real_run_would_skip(
        engine: Engine, settings: Any) -> None:
    outcome = _runner(engine, settings).run("subscription-expiry", trigger="cli",
                                            dry_run=True)
    assert outcome.status == RunStatus.SUCCESS and outcome.dry_run
    assert outcome.message.startswith("would move 0 subscription(s)")
    assert outcome.details["would_skip"] == (
        "no paid subscription has passed its canceled period's end or its valid_until")


def test_skipped_shows_in_metrics_and_the_dashboard_filter(
        engine: Engine, db_url: str, tmp_path: Path,
        make_client: Callable[..., TestClient]) -> None:
    settings = make_settings(db_url, tmp_path, dashboard_user="ops",
                             dashboard_password="dashboard-password-123")
    _runner(engine, settings).run("subscription-expiry", trigger="cli")
    client = make_client(settings=settings)
    metrics = client.get("/metrics", headers=auth()).text
    assert 'cron_runs_total{status="skipped",task="subscription-expiry"} 1.0' in metrics
    page = client.get("/dashboard/jobs/subscription-expiry?status=skipped",
                      auth=("ops", "dashboard-password-123"))
    assert page.status_code == 200, page.text
    assert "no paid subscription has passed" in page.text


def test_the_jobs_that_declare_a_precondition() -> None:
    assert {n for n, spec in JOBS.items() if spec.precondition is not None} == {
        "trip-reminders", "promo-cleanup", "storage-cleanup", "subscription-sync",
        "subscription-expiry"}
