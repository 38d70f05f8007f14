"""`/api/cron/daily-maintenance` and `/api/cron/weekly-cleanup` over HTTP, on the demo data:
every member's outcome, the worst as the group's, members in parallel (their log rows'
intervals overlap), and the grouped schedule (SCHEDULE_MODE=groups)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.core.context import JobContext, JobResult
from app.core.registry import JOBS, JobFunc, JobSpec
from app.ops.demo import seed
from tests.conftest import SECRET, auth, make_settings, rows

# Monday 2026-11-30 02:00 and Sunday 2026-11-29 01:00, UTC.
DAILY_AT = dt.datetime(2026, 11, 30, 2, 0, 20, tzinfo=dt.UTC)
WEEKLY_AT = dt.datetime(2026, 11, 29, 1, 0, 20, tzinfo=dt.UTC)
HOLD = 0.6  # seconds each member keeps running, so that overlap (or none) is plain
VERCEL = {**auth(), "User-Agent": "vercel-cron/1.0"}

# Members that do their work: a member with nothing to do would answer `skipped`.
pytestmark = pytest.mark.usefixtures("without_preconditions")


class RunningClock:
    """A clock that starts at `start` and moves with real time: slots are fixed, and the
    run intervals in the log are real."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.origin = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.origin)


def _held(func: JobFunc) -> JobFunc:
    def run(ctx: JobContext) -> JobResult:
        time.sleep(HOLD)
        return func(ctx)

    return run


def _jobs_held() -> dict[str, JobSpec]:
    """The registry's jobs, each taking at least HOLD seconds (the real job after it)."""
    return {name: replace(spec, func=_held(spec.func)) for name, spec in JOBS.items()}


@pytest.fixture
def grouped(engine: Engine, db_url: str, tmp_path: Path,
            make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """A client for a deployment scheduled through groups, on the demo data."""
    settings = make_settings(db_url, tmp_path, schedule_mode="groups")
    seeded: list[dt.datetime] = []

    def client(start: dt.datetime, **overrides: Any) -> TestClient:
        if not seeded:  # the demo data as of the first call's day
            seed(engine, now=start, storage_root=settings.storage_root)
            seeded.append(start)
        chosen = make_settings(db_url, tmp_path, schedule_mode="groups", **overrides)
        return make_client(settings=chosen, clock=RunningClock(start), jobs=_jobs_held())

    return client


def _intervals(engine: Engine) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    found = rows(engine, "SELECT job_name, started_at, ended_at FROM cron_job_log "
                         "WHERE dry_run = :no", no=False)
    return {r.job_name: (_utc(r.started_at), _utc(r.ended_at)) for r in found}


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _overlap(a: tuple[dt.datetime, dt.datetime], b: tuple[dt.datetime, dt.datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _members(body: dict[str, Any]) -> dict[str, str]:
    return {m["task"]: m["status"] for m in body["members"]}


def test_daily_maintenance_answers_each_member_and_the_failure(
        grouped: Callable[..., TestClient], engine: Engine) -> None:
    """No Stripe key here: subscription-sync refuses, the other two still run, at once."""
    response = grouped(DAILY_AT).get("/api/cron/daily-maintenance", headers=VERCEL)
    assert response.status_code == 500, response.text
    body = response.json()
    assert (body["task"], body["group"], body["status"], body["trigger"]) == (
        "daily-maintenance", True, "error", "vercel")
    assert _members(body) == {"subscription-sync": "error", "promo-cleanup": "success",
                              "trip-reminders": "success"}
    sync, _promo, trips = body["members"]
    assert "STRIPE_SECRET_KEY is not set" in sync["message"]
    assert trips["records_processed"] > 0  # the demo's trips starting in a week
    # Grouped: every member's slot is the group's 02:00, not its own 03:00 or 08:00.
    assert {m["slot"] for m in body["members"]} == {"2026-11-30T02:00:00+00:00"}
    spans = _intervals(engine)
    assert set(spans) == {"subscription-sync", "promo-cleanup", "trip-reminders"}
    # trip-reminders shares no table with the other two: it ran alongside them.
    assert _overlap(spans["trip-reminders"], spans["promo-cleanup"])
    # sync and promo-cleanup share subscription_history: one after the other.
    assert not _overlap(spans["subscription-sync"], spans["promo-cleanup"])
    audit = rows(engine, "SELECT task, outcome, status_code FROM cron_audit_log")
    assert [tuple(r) for r in audit] == [("daily-maintenance", "error", 500)]


def test_daily_maintenance_all_members_succeed_and_a_redelivery_is_a_duplicate(
        grouped: Callable[..., TestClient], engine: Engine) -> None:
    # A Stripe key and no Stripe-paid row: subscription-sync has nothing to ask Stripe.
    client = grouped(DAILY_AT, stripe_secret_key="sk_test_groups",
                     stripe_api_base="http://127.0.0.1:9")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE user_subscriptions SET stripe_subscription_id = NULL")
    first = client.post("/api/cron/daily-maintenance", headers=auth())
    assert first.status_code == 200, first.text
    assert _members(first.json()) == dict.fromkeys(
        ("subscription-sync", "promo-cleanup", "trip-reminders"), "success")
    assert first.json()["status"] == "success"
    again = client.get("/api/cron/daily-maintenance", headers=VERCEL)
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert set(_members(again.json()).values()) == {"duplicate"}
    run_ids = {m["task"]: m["run_id"] for m in first.json()["members"]}
    assert {m["task"]: m["run_id"] for m in again.json()["members"]} == run_ids
    assert len(rows(engine, "SELECT run_id FROM cron_job_log")) == 3
    # /health: nothing overdue or failing among the members at 23:00 that day.
    late = grouped(DAILY_AT.replace(hour=23))
    jobs = late.get("/health", headers=auth()).json()["jobs"]
    for name in run_ids:
        assert not (jobs[name]["overdue"] or jobs[name]["failing"]), jobs[name]
        assert jobs[name]["next_fire"] == "2026-12-01T02:00:00+00:00"


def test_weekly_cleanup_over_http(grouped: Callable[..., TestClient], engine: Engine
                                  ) -> None:
    response = grouped(WEEKLY_AT).post("/api/cron/weekly-cleanup", headers={
        **auth(), "X-Cron-Source": "github-actions"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trigger"] == "github-actions"
    assert _members(body) == {"db-maintenance": body["members"][0]["status"],
                              "storage-cleanup": "success"}
    assert body["members"][0]["status"] in ("success", "warning")
    assert body["members"][1]["details"]["buckets"][0]["orphans_deleted"] == 1
    assert {m["slot"] for m in body["members"]} == {"2026-11-29T01:00:00+00:00"}
    spans = _intervals(engine)
    # db-maintenance touches every table: storage-cleanup starts after it ends.
    assert spans["db-maintenance"][1] <= spans["storage-cleanup"][0]


def test_dry_run_reaches_every_member(grouped: Callable[..., TestClient],
                                      engine: Engine) -> None:
    response = grouped(WEEKLY_AT).get("/api/cron/weekly-cleanup?dry_run=true",
                                      headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["dry_run"] is True
    assert all(m["dry_run"] and m["slot"] is None for m in response.json()["members"])
    logged = rows(engine, "SELECT dry_run FROM cron_job_log")
    assert len(logged) == 2 and all(r.dry_run for r in logged)


def test_a_group_call_is_authenticated_and_disabled_like_any_task(
        grouped: Callable[..., TestClient], engine: Engine) -> None:
    client = grouped(DAILY_AT)
    assert client.get("/api/cron/daily-maintenance").status_code == 401
    assert client.get("/api/cron/daily-maintenance", headers=auth("x" * len(SECRET))
                      ).status_code == 401
    assert client.get("/api/cron/weekly-cleanup?verbose=1", headers=auth()).status_code == 400
    assert rows(engine, "SELECT count(*) FROM cron_job_log") == [(0,)]
    off = grouped(DAILY_AT, enable_cron_jobs=False)
    response = off.get("/api/cron/daily-maintenance", headers=auth())
    assert response.status_code == 503
    assert set(_members(response.json()).values()) == {"disabled"}


def test_unknown_task_lists_the_groups(client: TestClient) -> None:
    response = client.get("/api/cron/monthly-everything", headers=auth())
    assert response.status_code == 404
    assert "daily-maintenance" in response.json()["error"]
    assert "weekly-cleanup" in response.json()["error"]


def test_a_database_without_schema_answers_503_with_retry_after(tmp_path: Path) -> None:
    """Nothing ran, so a scheduler may retry: 503 with Retry-After, each member says why."""
    from app.db import make_engine
    from app.main import create_app

    bare = make_engine(f"sqlite:///{tmp_path}/bare.db")
    settings = make_settings(f"sqlite:///{tmp_path}/bare.db", tmp_path,
                             schedule_mode="groups")
    with TestClient(create_app(settings, engine=bare), raise_server_exceptions=False) as client:
        response = client.get("/api/cron/weekly-cleanup", headers=auth())
    bare.dispose()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "60"
    assert set(_members(response.json()).values()) == {"unavailable"}
    assert all("nothing was run" in m["message"] for m in response.json()["members"])
