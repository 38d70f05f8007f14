"""Jobs heading for their time budget: a fit over the run log, projected, through the real
runner, /health, /metrics and the job's dashboard page (app/observe/trends.py)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from tests.conftest import FixedClock, auth
from tests.observe.sized_job import (
    ClientFactory,
    SizedJob,
    basic,
    client_for,
    label,
    metrics,
    run,
)

BUDGET = dt.timedelta(seconds=300)


def test_five_percent_a_run_projects_the_analytic_crossing(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "growing",
                        max_runtime=BUDGET)
    first = clock.now
    for i in range(12):  # daily runs from 100 s, 5% longer each: 171 s by the last
        run(client, job, "growing", 100 * 1.05**i, 500)
    # Analytic: 100 s x 1.05^k reaches 300 s at k = ln 3 / ln 1.05 = 22.5 days after the first.
    analytic = first + dt.timedelta(days=math.log(3) / math.log(1.05))

    body = client.get("/health", headers=auth())
    assert body.status_code == 200 and body.json()["status"] == "healthy"
    trend = body.json()["jobs"]["growing"]["trend"]
    crosses = dt.datetime.fromisoformat(trend["crosses_at"])
    assert abs(crosses - analytic) < dt.timedelta(hours=2), (crosses, analytic)
    assert trend["outlook"] == "soon" and trend["budget_seconds"] == 300
    assert trend["growth_per_run"] == pytest.approx(0.05, abs=1e-3)
    days = round((crosses - clock.now).total_seconds() / 86400)
    sentence = (f"at this growth (+5.0% a day), growing exceeds its 300 s budget in about "
                f"{days} days")
    assert trend["sentence"] == sentence
    assert client.get("/health").json()["warnings"] == [sentence]

    found = metrics(client)
    assert found[("cron_job_budget_warning", label("growing"))] == 1
    assert found[("cron_job_duration_growth_per_day", label("growing"))] == pytest.approx(
        0.05, abs=1e-3)
    assert found[("cron_job_budget_crossing_timestamp_seconds", label("growing"))] == (
        pytest.approx(analytic.timestamp(), abs=7200))

    page = client.get("/dashboard/jobs/growing", headers=basic())
    assert page.status_code == 200
    assert f'data-outlook="soon"><span class="badge anomalous">budget</span> {sentence}.' in (
        page.text)
    assert '<polyline class="fitted"' in page.text and '<polyline class="ahead"' in page.text
    assert page.text.count('<circle class="dot"') == 12
    assert f"crosses {crosses:%Y-%m-%d}" in page.text


def test_a_flat_series_projects_no_crossing(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "steady",
                        max_runtime=BUDGET)
    for i in range(12):
        run(client, job, "steady", 100 + (i % 2), 500)
    body = client.get("/health", headers=auth()).json()
    trend = body["jobs"]["steady"]["trend"]
    assert trend["outlook"] == "none" and trend["crosses_at"] is None
    assert trend["sentence"] == "steady shows no growth toward its 300 s budget"
    assert "warnings" not in body
    found = metrics(client)
    assert found[("cron_job_budget_warning", label("steady"))] == 0
    assert ("cron_job_budget_crossing_timestamp_seconds", label("steady")) not in found
    page = client.get("/dashboard/jobs/steady", headers=basic())
    assert 'data-outlook="none">steady shows no growth' in page.text


def test_too_little_history_or_subsecond_runs_project_nothing(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "young", "quick",
                        max_runtime=BUDGET)
    for i in range(4):
        run(client, job, "young", 100 * 1.5**i, 10)
    for i in range(12):  # growing fast, but at a few milliseconds: scheduler noise
        run(client, job, "quick", 0.002 * 1.5**i, 10)
    jobs = client.get("/health", headers=auth()).json()["jobs"]
    assert jobs["young"]["trend"]["outlook"] is None
    assert jobs["quick"]["trend"]["outlook"] is None
    page = client.get("/dashboard/jobs/young", headers=basic())
    assert "No trend yet" in page.text

