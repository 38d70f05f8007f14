"""The two groups through a real uvicorn process, on the demo data, scheduled through
groups (SCHEDULE_MODE=groups): members' outcomes, their group's slot, then a redelivery
answered `duplicate` member by member."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from app.core.registry import GROUPS, previous_fire
from app.ops.demo import seed
from tests.conftest import SECRET, auth, make_settings, rows
from tests.support.servers import UvicornProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def server(db_url: str, engine: Engine, tmp_path: Path) -> Iterator[UvicornProcess]:
    settings = make_settings(db_url, tmp_path)
    # The demo's trips start a week after the daily group's slot (yesterday's before 02:00).
    slot = previous_fire(GROUPS["daily-maintenance"].schedule, dt.datetime.now(dt.UTC))
    seed(engine, now=slot, storage_root=settings.storage_root)
    process = UvicornProcess({"APP_ENV": "development", "DATABASE_URL": db_url,
                              "CRON_SECRET": SECRET, "DATA_DIR": str(tmp_path / "data"),
                              "SCHEDULE_MODE": "groups"}).start()
    yield process
    process.stop()


def test_both_groups_over_real_http(server: UvicornProcess, engine: Engine) -> None:
    with httpx.Client(base_url=server.url, headers=auth(), timeout=120) as http:
        weekly = http.post("/api/cron/weekly-cleanup", headers={"X-Cron-Source": "crontab"})
        daily = http.get("/api/cron/daily-maintenance",
                         headers={"User-Agent": "vercel-cron/1.0"})
        again = http.get("/api/cron/weekly-cleanup", headers={"User-Agent": "vercel-cron/1.0"})
    now = dt.datetime.now(dt.UTC)
    assert weekly.status_code == 200, weekly.text
    members = {m["task"]: m for m in weekly.json()["members"]}
    assert list(members) == ["db-maintenance", "storage-cleanup"]
    assert {m["status"] for m in members.values()} <= {"success", "warning"}
    slot = previous_fire(GROUPS["weekly-cleanup"].schedule, now).isoformat()
    assert {m["slot"] for m in members.values()} == {slot}
    # No Stripe key in this deployment: the group's status is subscription-sync's error.
    assert daily.status_code == 500, daily.text
    assert {m["task"]: m["status"] for m in daily.json()["members"]} == {
        "subscription-sync": "error", "promo-cleanup": "success", "trip-reminders": "success"}
    # Vercel delivering the slot the crontab already ran: nothing runs twice.
    assert again.status_code == 200
    assert [m["status"] for m in again.json()["members"]] == ["duplicate", "duplicate"]
    assert [m["run_id"] for m in again.json()["members"]] == [
        m["run_id"] for m in members.values()]
    logged = rows(engine, "SELECT job_name, trigger FROM cron_job_log ORDER BY job_name")
    assert [tuple(r) for r in logged] == [
        ("db-maintenance", "crontab"), ("promo-cleanup", "vercel"),
        ("storage-cleanup", "crontab"), ("subscription-sync", "vercel"),
        ("trip-reminders", "vercel")]
    audit = rows(engine, "SELECT task, outcome, status_code FROM cron_audit_log ORDER BY id")
    assert [tuple(r) for r in audit] == [("weekly-cleanup", weekly.json()["status"], 200),
                                         ("daily-maintenance", "error", 500),
                                         ("weekly-cleanup", "duplicate", 200)]
