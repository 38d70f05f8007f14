"""The dense overview and the job page in headless Chromium, at a phone's width and a desktop's."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.registry import JOBS
from app.db import make_engine, table_of
from app.models import CronJobLog
from tests.conftest import SECRET, copy_sqlite_database
from tests.http.test_dashboard_overview import seed_states
from tests.support.browser import launch, require_chromium
from tests.support.servers import ROOT, UvicornProcess

USER, PASSWORD = "ops", "dashboard-password-123"
OUTPUT = ROOT / "test-output"
WIDTHS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1440, "height": 900}}
COSTED_RUNS = 6

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
           ) -> Iterator[tuple[UvicornProcess, dict[str, int]]]:
    require_chromium()
    tmp_path = tmp_path_factory.mktemp("widths")
    db = tmp_path / "browser.db"
    copy_sqlite_database(sqlite_template, db)
    engine = make_engine(f"sqlite:///{db}")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:  # older promo-cleanup runs that recorded what they cost
        conn.execute(table_of(CronJobLog).insert(), [
            {"run_id": uuid.uuid4(), "job_name": "promo-cleanup", "trigger": "vercel",
             "started_at": now - dt.timedelta(days=40 - i),
             "ended_at": now - dt.timedelta(days=40 - i, seconds=-3 - i),
             "status": "success", "message": "costed", "records_processed": 10,
             "attempts": 1, "dry_run": False,
             "resource_usage": {"cpu_seconds": 0.2 * (i + 1), "db_seconds": 0.05 * (i + 1),
                                "db_queries": 10 + i, "peak_memory_bytes": (80 + i) * 2**20,
                                "memory_growth_bytes": 0,
                                "calls": {"stripe": 0, "smtp": i, "storage": 2}}}
            for i in range(COSTED_RUNS)])
    expected = seed_states(engine, now)
    engine.dispose()
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": f"sqlite:///{db}", "CRON_SECRET": SECRET,
        "DASHBOARD_USER": USER, "DASHBOARD_PASSWORD": PASSWORD,
        "DATA_DIR": str(tmp_path / "data"), "SENTRY_DSN": "", "LOG_LEVEL": "WARNING",
    }).start()
    yield proc, expected
    proc.stop()


OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


@pytest.mark.parametrize("width", list(WIDTHS))
def test_overview_counts_sparklines_and_job_charts_fit_the_screen(
        server: tuple[UvicornProcess, dict[str, int]], width: str) -> None:
    from playwright.sync_api import sync_playwright

    proc, expected = server
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

            response = page.goto(proc.url + "/dashboard/")
            assert response is not None and response.status == 200
            for key, count in expected.items():
                item = page.locator(f'#summary li[data-count="{key}"]')
                assert item.is_visible(), key
                assert item.locator("strong").inner_text() == str(count), key
            for name in JOBS:
                spark = page.locator(f'#job-{name} svg.spark[data-task="{name}"]')
                assert spark.count() == 1 and spark.is_visible(), name
                box = spark.bounding_box()
                assert box is not None and box["width"] >= 60 and box["height"] >= 15, name
            assert page.locator("#job-promo-cleanup svg.spark rect.tick").count() == 20
            assert page.locator("svg.chart").count() == 0
            assert page.evaluate(OVERFLOW) == 0, "the overview scrolls sideways"
            page.screenshot(path=str(OUTPUT / f"dashboard-{width}.png"), full_page=True)

            page.locator("#job-promo-cleanup a.spark-link").click()
            page.wait_for_url("**/dashboard/jobs/promo-cleanup")
            duration = page.locator('svg.chart[data-measure="duration"][data-task="promo-cleanup"]')
            assert duration.is_visible()
            assert duration.locator("rect.bar").count() == 25 + COSTED_RUNS
            usage = page.locator("svg.chart.usage")
            assert usage.count() == 4
            for index in range(4):
                chart = usage.nth(index)
                assert chart.is_visible()
                assert chart.locator("rect.bar").count() == COSTED_RUNS
                box = chart.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 75
            assert page.locator("#chart-peak_memory").inner_text().count("85.0 MB") == 1
            assert page.evaluate(OVERFLOW) == 0, "the job page scrolls sideways"
            page.screenshot(path=str(OUTPUT / f"dashboard-job-{width}.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
