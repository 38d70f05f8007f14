"""The dense overview: counts above the jobs table, a sparkline per job, charts on the job page."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.core.registry import JOBS
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, make_settings

USER, PASSWORD = "ops", "dashboard-password-123"
CREDS = (USER, PASSWORD)
log_t = table_of(CronJobLog)
# Present once the anomaly marks are on the run log (app/observe/anomalies.py).
HAS_ANOMALIES = "anomalies" in log_t.c


@pytest.fixture
def dash(make_client: Callable[..., TestClient], db_url: str, tmp_path: Path) -> TestClient:
    settings = make_settings(db_url, tmp_path, dashboard_user=USER, dashboard_password=PASSWORD)
    return make_client(settings=settings)


def _run(task: str, started: dt.datetime, status: str = "success", seconds: float | None = 2.0,
         **extra: Any) -> dict[str, Any]:
    return {"run_id": uuid.uuid4(), "job_name": task, "trigger": "vercel",
            "started_at": started, "status": status, "message": status,
            "ended_at": None if seconds is None else started + dt.timedelta(seconds=seconds),
            "records_processed": 1, "attempts": 1, "dry_run": False, **extra}


def seed_states(engine: Engine, now: dt.datetime) -> dict[str, int]:
    """Every job ok, except: promo-cleanup failing (25 runs, the last an error),
    subscription-sync running, trip-reminders overdue, analytics' last run anomalous (when
    the run log has marks).  Returns the counts the header must show."""
    minute = dt.timedelta(minutes=1)
    runs = [_run(name, now - 30 * minute) for name in JOBS
            if name not in ("promo-cleanup", "trip-reminders")]
    runs += [_run("promo-cleanup", now - dt.timedelta(days=23 - i), seconds=1.0 + i)
             for i in range(23)]
    runs += [_run("promo-cleanup", now - 20 * minute),
             _run("promo-cleanup", now - 10 * minute, "error", 0.5)]
    runs.append(_run("subscription-sync", now - minute, "running", None))
    runs.append(_run("trip-reminders", now - dt.timedelta(days=5)))
    if HAS_ANOMALIES:
        runs.append(_run("analytics", now - 5 * minute,
                         anomalies=[{"kind": "slow", "factor": 10.0}]))
    with engine.begin() as conn:
        for run in runs:
            conn.execute(log_t.insert().values(**run))
    return {"total": len(JOBS), "ok": len(JOBS) - 2, "failing": 1, "overdue": 1,
            "running": 1, "anomalous": 1 if HAS_ANOMALIES else 0}


def header_counts(html: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(
        r'<li data-count="(\w+)"[^>]*><strong>(\d+)</strong>', html)}


def test_header_counts_jobs_ok_failing_overdue_running_and_anomalous(
        dash: TestClient, engine: Engine, clock: FixedClock) -> None:
    expected = seed_states(engine, clock.now)
    html = dash.get("/dashboard/", auth=CREDS).text
    assert header_counts(html) == expected


def test_every_job_row_has_a_sparkline_of_its_last_runs_and_no_full_chart(
        dash: TestClient, engine: Engine, clock: FixedClock) -> None:
    seed_states(engine, clock.now)
    html = dash.get("/dashboard/", auth=CREDS).text
    assert '<svg class="chart' not in html  # the full charts are on each job's page
    for name in JOBS:
        row = re.search(rf'<tr id="job-{name}".*?</tr>', html, re.DOTALL)
        assert row is not None
        assert row.group(0).count('<svg class="spark"') == 1
        assert f'data-task="{name}"' in row.group(0)
    promo = re.search(r'<tr id="job-promo-cleanup".*?</tr>', html, re.DOTALL)
    assert promo is not None
    ticks = re.findall(r'<rect class="tick status-(\w+)[^"]*"\s+x="([\d.]+)" y="([\d.]+)" '
                       r'width="[\d.]+" height="([\d.]+)"', promo.group(0))
    assert len(ticks) == 20  # the last 20 of its 25 runs
    # Newest at the right, the failed one at full height; older ones grow with duration.
    assert ticks[-1][0] == "error" and float(ticks[-1][3]) == 26.0
    assert float(ticks[-1][1]) > float(ticks[0][1])
    heights = [float(t[3]) for t in ticks[:-2]]
    assert heights == sorted(heights) and heights[0] < heights[-1]


def test_job_page_charts_duration_and_what_each_run_cost(
        dash: TestClient, engine: Engine, clock: FixedClock) -> None:
    cost = {"cpu_seconds": 0.5, "db_seconds": 0.25, "db_queries": 12,
            "peak_memory_bytes": 150 * 1024 * 1024, "memory_growth_bytes": 0,
            "calls": {"stripe": 7, "smtp": 0, "storage": 2}}
    with engine.begin() as conn:
        for i in range(6):
            conn.execute(log_t.insert().values(**_run(
                "subscription-sync", clock.now - dt.timedelta(days=6 - i),
                resource_usage=cost if i >= 2 else None)))
    html = dash.get("/dashboard/jobs/subscription-sync", auth=CREDS).text
    duration = re.search(r'<svg class="chart" .*?</svg>', html, re.DOTALL)
    assert duration is not None and duration.group(0).count("<rect") == 6
    for measure, label in (("peak_memory", "150.0 MB"), ("cpu", "0.50 s"), ("db", "0.25 s"),
                           ("calls", "9")):
        svg = re.search(rf'<svg class="chart usage"[^>]*data-measure="{measure}".*?</svg>',
                        html, re.DOTALL)
        assert svg is not None, measure
        assert svg.group(0).count("<rect") == 4  # the runs logged before usage leave gaps
        assert f">{label}</text>" in svg.group(0)
    assert "cpu 0.50 s · db 0.25 s (12 queries) · peak 150.0 MB · calls: storage 2, " \
           "stripe 7" in html
