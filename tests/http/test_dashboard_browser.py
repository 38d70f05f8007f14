"""The dashboard in headless Chromium (Debian's), served by a real uvicorn process."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.core.registry import JOBS
from app.db import make_engine, table_of
from app.models import CronJobLog
from tests.conftest import SECRET, copy_sqlite_database
from tests.support.browser import launch, require_chromium
from tests.support.servers import ROOT, UvicornProcess

USER, PASSWORD = "ops", "dashboard-password-123"
OUTPUT = ROOT / "test-output"

pytestmark = pytest.mark.slow


def _seed(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    statuses = ["success"] * 5 + ["error"] + ["success"] * 3 + ["warning"]
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert(), [
            {"run_id": uuid.uuid4(), "job_name": "promo-cleanup", "trigger": "vercel",
             "started_at": now - dt.timedelta(days=40 - i),
             "ended_at": now - dt.timedelta(days=40 - i) + dt.timedelta(
                 seconds=3 + (i * 7) % 23 + (30 if i == 17 else 0)),
             "status": statuses[i % len(statuses)], "message": f"seeded run {i}",
             "records_processed": i * 3, "attempts": 1, "dry_run": False}
            for i in range(40)])


@pytest.fixture
def server(sqlite_template: Path, tmp_path: Path) -> Iterator[UvicornProcess]:
    require_chromium()
    db = tmp_path / "browser.db"
    copy_sqlite_database(sqlite_template, db)
    engine = make_engine(f"sqlite:///{db}")
    _seed(engine)
    engine.dispose()
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": f"sqlite:///{db}", "CRON_SECRET": SECRET,
        "DASHBOARD_USER": USER, "DASHBOARD_PASSWORD": PASSWORD,
        "DATA_DIR": str(tmp_path / "data"), "SENTRY_DSN": "", "LOG_LEVEL": "WARNING",
    }).start()
    yield proc
    proc.stop()


def test_dashboard_in_headless_chromium(server: UvicornProcess) -> None:
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))

            response = page.goto(server.url + "/dashboard/")
            assert response is not None and response.status == 200
            for name in JOBS:
                assert page.locator(f"#job-{name}").count() == 1
            # The full charts are on the job's page; the overview has a sparkline per job.
            page.goto(server.url + "/dashboard/jobs/promo-cleanup")
            chart = page.locator('svg.chart[data-measure="duration"][data-task="promo-cleanup"]')
            assert chart.locator("rect.bar").count() == 40
            box = chart.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100
            assert chart.locator("rect.failed").count() == 4
            assert chart.locator("rect.slowest").count() == 1
            # The stylesheet applied: failed bars are red, not the default black.
            fill = chart.locator("rect.failed").first.evaluate(
                "el => getComputedStyle(el).fill")
            assert fill == "rgb(198, 40, 40)"
            page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)
            page.goto(server.url + "/dashboard/")

            page.locator("#job-promo-cleanup [data-action=run-now]").click()
            page.wait_for_url(re.compile(r".*/dashboard/jobs/promo-cleanup\?ran=.+"))
            assert "finished" in page.locator("#ran").inner_text()
            new_run = page.locator('tr.run-row[data-trigger="dashboard"]')
            assert new_run.count() == 1
            # No promo code changed since the seeded runs: its precondition skips it.
            assert "skipped" in new_run.inner_text()
            assert page.locator("tr.run-row").count() == 25  # first page of 41 runs
            page.screenshot(path=str(OUTPUT / "dashboard-job.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
