"""The volume trend and the incident marker in headless Chromium, at a phone's width and a
desktop's: drawn, readable, and nothing scrolls sideways."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.registry import JOBS
from app.db import make_engine, table_of
from app.models import CronJobLog
from tests.conftest import SECRET, auth, copy_sqlite_database
from tests.http.test_dashboard_widths_browser import OVERFLOW, WIDTHS
from tests.support.browser import launch, require_chromium
from tests.support.servers import ROOT, UvicornProcess

USER, PASSWORD = "ops", "dashboard-password-123"
OUTPUT = ROOT / "test-output"
RUNS = 12

pytestmark = pytest.mark.slow


def _run(name: str, started: dt.datetime, seconds: float, status: str = "success",
         details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"run_id": uuid.uuid4(), "job_name": name, "trigger": "vercel",
            "started_at": started, "ended_at": started + dt.timedelta(seconds=seconds),
            "status": status, "message": "promo table is upside down" if status == "error"
            else "seeded", "records_processed": 1, "attempts": 1, "dry_run": False,
            "details": details}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
           ) -> Iterator[UvicornProcess]:
    require_chromium()
    tmp_path = tmp_path_factory.mktemp("foresight")
    db = tmp_path / "browser.db"
    copy_sqlite_database(sqlite_template, db)
    now = dt.datetime.now(dt.UTC)
    first = now - dt.timedelta(days=1) - (RUNS - 1) * dt.timedelta(weeks=1)
    runs = [_run("storage-cleanup", first + i * dt.timedelta(weeks=1), 600 + 30 * i,
                 details={"volume": {"measure": "objects_scanned",
                                     "value": round(200_000 * 1.05**i)}})
            for i in range(RUNS)]
    runs += [_run(name, now - dt.timedelta(minutes=30), 0.5) for name in JOBS
             if name != "storage-cleanup"]
    runs.append(_run("promo-cleanup", now - dt.timedelta(minutes=10), 0.5, "error"))
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert(), runs)
    engine.dispose()
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": f"sqlite:///{db}", "CRON_SECRET": SECRET,
        "DASHBOARD_USER": USER, "DASHBOARD_PASSWORD": PASSWORD,
        "DATA_DIR": str(tmp_path / "data"), "SENTRY_DSN": "", "LOG_LEVEL": "WARNING",
    }).start()
    # The probe an uptime monitor makes opens promo-cleanup's incident.
    assert httpx.get(f"{proc.url}/health", headers=auth(), timeout=30).status_code == 503
    yield proc
    proc.stop()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_volume_trend_and_incident_marker_fit_the_screen(server: UvicornProcess,
                                                         width: str) -> None:
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport=WIDTHS[width])  # type: ignore[arg-type]
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(server.url + "/dashboard/")
            marker = page.locator('#job-promo-cleanup a.badge.incident[data-incident="failing"]')
            assert marker.is_visible() and marker.inner_text() == "⚑ failing"
            assert page.locator("a.badge.incident").count() == 1
            assert page.evaluate(OVERFLOW) == 0, "the overview scrolls sideways"

            marker.click()
            page.wait_for_url("**/dashboard/jobs/promo-cleanup#incident")
            assert page.locator("#incident").inner_text().startswith("⚑ failing open since ")
            assert page.evaluate(OVERFLOW) == 0, "the job page scrolls sideways"

            page.goto(server.url + "/dashboard/jobs/storage-cleanup")
            chart = page.locator('#volume svg.trend[data-task="storage-cleanup"]')
            assert chart.is_visible()
            assert chart.locator("circle.dot").count() == RUNS
            assert chart.locator("polyline.ahead").count() == 1
            box = chart.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 75
            sentence = page.locator("#volume-sentence").inner_text()
            assert sentence.startswith("at this growth (+0.7% a day), storage-cleanup's scan")
            assert page.evaluate(OVERFLOW) == 0, "the job page scrolls sideways"
            page.screenshot(path=str(OUTPUT / f"dashboard-volume-{width}.png"),
                            full_page=True)
        finally:
            browser.close()
    assert problems == []
