"""Backfill a past slot: `?slot=` on the cron endpoint (real HTTP) and `run --slot` in the
CLI run that day's slot with that day's data window, once; a slot the schedule does not
have, or one in the future, is refused with 400 (exit 2 in the CLI) and nothing runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import registry
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import SECRET, FixedClock, auth, rows
from tests.support.notification_data import recipients, seed_reminders
from tests.support.servers import SmtpSink, UvicornProcess

pytestmark = pytest.mark.slow

TASK = "trip-reminders"  # 0 8 * * *, REMINDER_DAYS_AHEAD = 7


def _three_days_ago() -> dt.datetime:
    """08:00 UTC three days ago: a slot trip-reminders has, in the past."""
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).date()
    return dt.datetime.combine(day, dt.time(8), dt.UTC)


def _run_ids(engine: Engine) -> list[Any]:
    log_t = table_of(CronJobLog)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(log_t.c.run_id, log_t.c.slot, log_t.c.trigger,
                                           log_t.c.status).order_by(log_t.c.id)))


@pytest.fixture
def server(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[UvicornProcess]:
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "SMTP_HOST": smtp_sink.host,
        "SMTP_PORT": str(smtp_sink.port), "SMTP_SECURITY": "none",
    }, cwd=tmp_path).start()
    yield proc
    proc.stop()


def test_a_backfilled_slot_uses_its_days_window_runs_once_then_is_a_duplicate(
        server: UvicornProcess, engine: Engine, smtp_sink: SmtpSink) -> None:
    slot = _three_days_ago()
    starts = slot.date() + dt.timedelta(days=7)  # that day's window, not today's
    world = seed_reminders(engine, starts, slot - dt.timedelta(days=30))
    url = f"{server.url}/api/cron/{TASK}"
    with httpx.Client(timeout=60) as http:
        first = http.get(url, params={"slot": slot.isoformat()}, headers=auth())
        second = http.post(url, params={"slot": slot.strftime("%Y-%m-%dT%H:%M:%SZ")},
                           headers=auth())
        unauthenticated = http.get(url, params={"slot": slot.isoformat()})

    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["status"], body["slot"]) == ("success", slot.isoformat())
    assert body["details"]["target_date"] == starts.isoformat()
    assert body["records_processed"] == 3
    got = recipients(smtp_sink)
    assert set(got) == world.expected and all(n == 1 for n in got.values())
    # The "Later trip" starts a day after the slot's window: nobody there is emailed.
    assert "later@example.com" not in got

    assert second.status_code == 200, second.text
    again = second.json()
    assert again["status"] == "duplicate" and again["run_id"] == body["run_id"]
    assert f"slot {slot.isoformat()} already ran" in again["message"]
    assert len(smtp_sink.messages()) == 3
    assert unauthenticated.status_code == 401

    [logged] = _run_ids(engine)
    assert logged.run_id == uuid.UUID(body["run_id"]) and logged.slot == slot
    assert (logged.trigger, logged.status) == ("http", "success")
    # Audited like any call: both authenticated calls, and the refused one.
    audit = rows(engine, "SELECT path, status_code, outcome FROM cron_audit_log ORDER BY id")
    assert [(a.path, a.status_code) for a in audit] == [
        (f"/api/cron/{TASK}", 200), (f"/api/cron/{TASK}", 200), (f"/api/cron/{TASK}", 401)]
    assert [a.outcome for a in audit][:2] == ["success", "duplicate"]


def test_a_slot_the_schedule_lacks_or_in_the_future_is_400_and_runs_nothing(
        server: UvicornProcess, engine: Engine) -> None:
    slot = _three_days_ago()
    tomorrow = slot + dt.timedelta(days=4)
    url = f"{server.url}/api/cron/{TASK}"
    with httpx.Client(timeout=60) as http:
        off_schedule = http.get(url, params={"slot": (slot + dt.timedelta(minutes=30))
                                             .isoformat()}, headers=auth())
        future = http.post(url, params={"slot": tomorrow.isoformat()}, headers=auth())
        garbage = http.get(url, params={"slot": "last tuesday"}, headers=auth())
        forced_future = http.get(url, params={"slot": tomorrow.isoformat(), "force": "1"},
                                 headers=auth())
    for response in (off_schedule, future, garbage, forced_future):
        assert response.status_code == 400, response.text
        assert response.headers["cache-control"] == "no-store"
    half_past = (slot + dt.timedelta(minutes=30)).isoformat()
    assert off_schedule.json()["error"] == (
        f"trip-reminders (0 8 * * *) has no slot at {half_past}; the nearest are "
        f"{slot.isoformat()} and {(slot + dt.timedelta(days=1)).isoformat()}")
    assert future.json()["error"].startswith(
        f"slot {tomorrow.isoformat()} is in the future (now ")
    assert garbage.json()["error"] == (
        "slot 'last tuesday' is not an ISO 8601 time (e.g. 2026-11-28T08:00:00Z)")
    assert _run_ids(engine) == []


# --- the runner, with a clock -------------------------------------------------------------
NOW = dt.datetime(2026, 11, 28, 10, 5, tzinfo=dt.UTC)


def test_a_forced_backfill_runs_a_slot_that_already_ran(engine: Engine, settings: Any) -> None:
    slot = dt.datetime(2026, 11, 25, 0, 0, tzinfo=dt.UTC)
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    first = runner.run("subscription-expiry", trigger="cli", slot=slot)
    again = runner.run("subscription-expiry", trigger="cli", slot=slot)
    forced = runner.run("subscription-expiry", trigger="cli", slot=slot, force=True)
    assert first.status == RunStatus.SKIPPED and first.slot == slot
    assert again.status == RunStatus.DUPLICATE and again.run_id == first.run_id
    assert forced.status == RunStatus.SUCCESS and forced.slot == slot  # forced: no skip
    slots = [r.slot for r in _run_ids(engine)]
    assert slots == [slot, slot]


def test_the_data_window_follows_the_slot_for_weekly_and_monthly_jobs(
        engine: Engine, settings: Any) -> None:
    runner = Runner(settings, engine, clock=FixedClock(NOW))
    weekly = runner.run("analytics", trigger="cli", slot=dt.datetime(2026, 11, 2, 3,
                                                                      tzinfo=dt.UTC))
    assert weekly.status == RunStatus.SUCCESS, weekly.message
    assert weekly.details["iso_week"] == "2026-W44", weekly.message  # the week before 2 Nov
    assert weekly.message.startswith("stored 2026-W44:")
    today = runner.run("analytics", trigger="cli", dry_run=True)
    assert today.details["iso_week"] == "2026-W47", today.message  # the week before 23 Nov
    monthly = runner.run("subscription-report", trigger="cli", dry_run=True,
                         slot=dt.datetime(2026, 9, 1, 4, tzinfo=dt.UTC))
    assert "2026-08" in monthly.message, monthly.message


def test_slot_checks_are_pure_functions_of_the_schedule_and_now() -> None:
    spec = registry.JOBS[TASK]
    slot = dt.datetime(2026, 11, 25, 8, tzinfo=dt.UTC)
    assert registry.check_slot(spec, slot, NOW) == slot
    assert registry.parse_slot("2026-11-25T08:00:00Z") == slot
    assert registry.parse_slot("2026-11-25T09:00:00+01:00") == slot
    assert registry.parse_slot("2026-11-25T08:00") == slot  # no offset: UTC
    with pytest.raises(registry.BadSlot, match="has no slot at"):
        registry.check_slot(spec, slot + dt.timedelta(seconds=1), NOW)
    with pytest.raises(registry.BadSlot, match="in the future"):
        registry.check_slot(spec, dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC), NOW)
    # The slot of this very moment is not in the future.
    assert registry.check_slot(spec, slot, slot) == slot


# --- the CLI ------------------------------------------------------------------------------
def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_run_with_a_slot_in_the_cli(db_url: str, tmp_path: Path) -> None:
    slot = _three_days_ago()
    first = _cli(db_url, tmp_path, "run", TASK, "--slot", slot.isoformat())
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    # No trip starts a week after that slot: done, as skipped, for that slot.
    assert (body["status"], body["slot"], body["trigger"]) == (
        "skipped", slot.isoformat(), "cli")
    assert (slot.date() + dt.timedelta(days=7)).isoformat() in body["message"]
    second = _cli(db_url, tmp_path, "run", TASK, "--slot", slot.isoformat())
    assert second.returncode == 0 and json.loads(second.stdout)["status"] == "duplicate"
    wrong = _cli(db_url, tmp_path, "run", TASK, "--slot",
                 (slot + dt.timedelta(hours=1)).isoformat())
    assert wrong.returncode == 2 and "has no slot at" in wrong.stderr
