"""The operators' dashboard through the ASGI app (the browser test is test_dashboard_browser)."""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.core.registry import JOBS
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, make_settings, rows

USER, PASSWORD = "ops", "dashboard-password-123"
CREDS = (USER, PASSWORD)


@pytest.fixture
def dash(make_client: Callable[..., TestClient], db_url: str, tmp_path: Path) -> TestClient:
    settings = make_settings(db_url, tmp_path, dashboard_user=USER, dashboard_password=PASSWORD)
    return make_client(settings=settings)


def _seed(engine: Engine, now: dt.datetime, count: int) -> None:
    statuses = ["success", "success", "error", "warning"]
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert(), [
            {"run_id": uuid.uuid4(), "job_name": "promo-cleanup", "trigger": "vercel",
             "started_at": now - dt.timedelta(days=count - i),
             "ended_at": now - dt.timedelta(days=count - i) + dt.timedelta(seconds=1 + i),
             "status": statuses[i % 4], "message": f"run number {i}",
             "records_processed": i, "attempts": 1, "dry_run": False,
             "error_details": {"error": f"boom {i}"} if statuses[i % 4] == "error" else None}
            for i in range(count)])


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_dashboard_absent_without_credentials_configured(client: TestClient) -> None:
    assert client.get("/dashboard").status_code == 404
    assert client.get("/dashboard/", auth=CREDS).status_code == 404


@pytest.mark.parametrize("header", [
    None, _basic(USER, "wrong"), _basic("someone", PASSWORD), _basic("", ""),
    "Basic !!!not-base64", "Basic " + base64.b64encode(b"no-colon").decode(),
    _basic(USER, PASSWORD).replace("Basic", "Bearer"),
])
def test_wrong_credentials_are_refused(dash: TestClient, engine: Engine,
                                       header: str | None) -> None:
    response = dash.get("/dashboard/", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert "promo-cleanup" not in response.text
    [row] = rows(engine, "SELECT path, outcome FROM cron_audit_log")
    assert (row.path, row.outcome) == ("/dashboard/", "auth_failed")


def test_overview_lists_every_job(dash: TestClient, engine: Engine, clock: FixedClock) -> None:
    _seed(engine, clock.now, 6)
    response = dash.get("/dashboard/", auth=CREDS)
    assert response.status_code == 200
    html = response.text
    for spec in JOBS.values():
        assert f'id="job-{spec.name}"' in html
        assert spec.explain() in html
        assert f'data-task="{spec.name}"' in html  # its chart
    assert "At 03:00" in html
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in html
    assert dash.get("/dashboard/style.css", auth=CREDS).headers["content-type"].startswith(
        "text/css")


def test_chart_marks_failed_and_slowest_runs(dash: TestClient, engine: Engine,
                                             clock: FixedClock) -> None:
    _seed(engine, clock.now, 60)
    html = dash.get("/dashboard/jobs/promo-cleanup", auth=CREDS).text
    chart = html[html.index('<svg class="chart"'):html.index("</svg>")]
    assert chart.count("<rect") == 50  # the last 50 runs only
    assert chart.count("failed-marker") == 13  # i % 4 == 2 for i in 10..59
    assert len(re.findall(r'<rect class="[^"]*\bslowest\b', chart)) == 1
    assert chart.count("slowest-marker") == 1
    # The slowest is the newest (durations grow with i): 60 s.
    assert "60 s" in chart


def test_history_is_paginated_and_filtered(dash: TestClient, engine: Engine,
                                           clock: FixedClock) -> None:
    _seed(engine, clock.now, 60)
    first = dash.get("/dashboard/jobs/promo-cleanup", auth=CREDS).text
    assert "page 1 of 3" in first
    assert first.count('class="run-row"') == 25
    assert "run number 59" in first and "run number 34" not in first
    third = dash.get("/dashboard/jobs/promo-cleanup?page=3", auth=CREDS).text
    assert third.count('class="run-row"') == 10
    errors = dash.get("/dashboard/jobs/promo-cleanup?status=error", auth=CREDS).text
    assert errors.count('class="run-row" data-status="error"') == 15
    assert 'class="run-row" data-status="success"' not in errors
    assert "boom 2" in errors  # error details shown
    assert dash.get("/dashboard/jobs/nope", auth=CREDS).status_code == 404


def test_run_now_and_dry_run_go_through_the_runner(dash: TestClient, engine: Engine) -> None:
    token = _csrf(dash.get("/dashboard/", auth=CREDS).text)
    response = dash.post("/dashboard/jobs/promo-cleanup/run", auth=CREDS,
                         data={"csrf_token": token, "mode": "run"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dashboard/jobs/promo-cleanup?ran=")
    page = dash.get(response.headers["location"], auth=CREDS).text
    for mode in ("dry_run", "force"):
        dash.post("/dashboard/jobs/promo-cleanup/run", auth=CREDS,
                  data={"csrf_token": token, "mode": mode})
    logged = rows(engine, "SELECT run_id, trigger, status, dry_run FROM cron_job_log ORDER BY id")
    assert [(r.trigger, r.status, bool(r.dry_run)) for r in logged] == [
        ("dashboard", "success", False), ("dashboard", "success", True),
        ("dashboard", "success", False)]
    audited = rows(engine, "SELECT path, outcome, status_code FROM cron_audit_log ORDER BY id")
    assert [(a.path, a.outcome) for a in audited] == [
        ("/dashboard/jobs/promo-cleanup/run", "success")] * 3
    assert f'id="run-{uuid.UUID(str(logged[0].run_id))}"' in page
    assert "finished" in page


@pytest.mark.parametrize("token", [None, "", "123.abc", "9999999999.deadbeef"])
def test_post_without_valid_csrf_token_is_refused(dash: TestClient, engine: Engine,
                                                  token: str | None) -> None:
    data = {"mode": "run"} if token is None else {"mode": "run", "csrf_token": token}
    response = dash.post("/dashboard/jobs/promo-cleanup/run", auth=CREDS, data=data)
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 0


def test_post_from_another_origin_is_refused(dash: TestClient, engine: Engine) -> None:
    token = _csrf(dash.get("/dashboard/", auth=CREDS).text)
    response = dash.post("/dashboard/jobs/promo-cleanup/run", auth=CREDS,
                         data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 0


def test_csrf_token_expires_and_is_bound_to_user() -> None:
    from app.observe.dashboard_view import csrf_token, csrf_valid

    token = csrf_token(PASSWORD, USER, now=1_000_000)
    assert csrf_valid(PASSWORD, USER, token, now=1_000_100)
    assert not csrf_valid(PASSWORD, "other", token, now=1_000_100)
    assert not csrf_valid("other-password", USER, token, now=1_000_100)
    assert not csrf_valid(PASSWORD, USER, token, now=1_000_000 + 9 * 3600)


def test_a_failed_critical_job_is_red_not_ok(dash: TestClient, engine: Engine,
                                             clock: FixedClock) -> None:
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert(), [
            {"run_id": uuid.uuid4(), "job_name": "promo-cleanup", "trigger": "vercel",
             "started_at": clock.now - dt.timedelta(minutes=m), "ended_at": clock.now,
             "status": status, "message": status, "records_processed": 0, "attempts": 1,
             "dry_run": False}
            for m, status in ((20, "success"), (10, "error"))])
    html = dash.get("/dashboard/", auth=CREDS).text
    row = re.search(r'<tr id="job-promo-cleanup".*?</tr>', html, re.DOTALL)
    assert row is not None
    assert 'class="badge failing"' in row.group(0)
    assert 'class="badge ok"' not in row.group(0)
