"""Every job runs on the real shape, with the demo's data written the way the app writes
it: the trigger's premium years (some over), Stripe-paid subscriptions (one canceled at the
end of a past period), a promo tier, trips with their owner as admin, files referenced from
media, chat and JSONB documents."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.core.registry import JOBS
from app.core.runner import Runner
from app.ops.demo import seed
from tests.conftest import FixedClock, make_settings, rows

NOW = dt.datetime(2026, 12, 1, 5, 0, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize("task", [name for name in JOBS if name != "subscription-sync"])
def test_the_job_runs_and_a_dry_run_predicts_it(engine: Engine, db_url: str, tmp_path: Path,
                                                task: str) -> None:
    settings = make_settings(db_url, tmp_path)
    seed(engine, now=NOW, storage_root=settings.storage_root)
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    dry = runner.run(task, trigger="cli", dry_run=True)
    assert dry.status in ("success", "warning"), dry.message
    real = runner.run(task, trigger="cli", force=True)
    assert real.status in ("success", "warning"), real.message
    assert "cannot run" not in real.message


def test_expiry_then_reports_on_demo_data(engine: Engine, db_url: str, tmp_path: Path
                                          ) -> None:
    settings = make_settings(db_url, tmp_path)
    seed(engine, now=NOW, storage_root=settings.storage_root)
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    expiry = runner.run("subscription-expiry", trigger="cli")
    # Ada's premium year is over; Carl canceled at the end of a period that has passed.
    assert expiry.details["by_reason"] == {"automatic_expiration_check": 1,
                                           "valid_until_passed": 1}
    assert rows(engine, "SELECT count(*) FROM user_subscriptions WHERE status NOT IN "
                        "('active', 'inactive', 'canceled')") == [(0,)]
    storage = runner.run("storage-cleanup", trigger="cli")
    assert storage.details["buckets"][0]["orphans_deleted"] == 1
    assert storage.details["buckets"][1]["temp_deleted"] == 1
    assert sum(b["referenced"] for b in storage.details["buckets"]) == 32


def test_subscription_sync_without_stripe_refuses_in_one_line(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    settings = make_settings(db_url, tmp_path)
    seed(engine, now=NOW)
    outcome = Runner(settings, engine, clock=FixedClock(NOW)).run("subscription-sync",
                                                                 trigger="cli")
    assert outcome.status == "error" and outcome.attempts == 1
    assert outcome.message == ("subscription-sync cannot run: STRIPE_SECRET_KEY is not set "
                               "(Stripe is not configured)")
