"""Jobs whose volume heads for what one run can handle: a fit over the volumes their runs
measured, through the real runner, /health, /metrics and the job's dashboard page
(app/observe/volumes.py)."""

from __future__ import annotations

import datetime as dt
import html
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

HOUR = dt.timedelta(hours=1)


def scanned(objects: float) -> dict[str, object]:
    return {"volume": {"measure": "objects_scanned", "value": round(objects)}}


def test_objects_growing_five_percent_a_run_cross_what_the_budget_can_scan(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "scanner", max_runtime=HOUR)
    first = clock.now
    for i in range(12):  # daily, from 60,000 objects, 5% more each, scanned at 50 a second
        objects = 60_000 * 1.05**i
        run(client, job, "scanner", objects / 50, 3, scanned(objects))
    # Analytic: 50 objects/s x 3600 s = 180,000 objects, reached when 1.05^k = 3.
    analytic = first + dt.timedelta(days=math.log(3) / math.log(1.05))

    body = client.get("/health", headers=auth())
    assert body.status_code == 200 and body.json()["status"] == "healthy"
    volume = body.json()["jobs"]["scanner"]["volume"]
    crosses = dt.datetime.fromisoformat(volume["crosses_at"])
    assert abs(crosses - analytic) < dt.timedelta(hours=2), (crosses, analytic)
    assert volume["measure"] == "objects_scanned" and volume["outlook"] == "soon"
    assert volume["limit_by"] == "capacity"
    assert volume["limit"] == pytest.approx(180_000, rel=1e-4)
    assert volume["latest"] == round(60_000 * 1.05**11)
    assert volume["growth_per_run"] == pytest.approx(0.05, abs=1e-3)
    days = round((crosses - clock.now).total_seconds() / 86400)
    sentence = (f"at this growth (+5.0% a day), scanner's scan exceeds the 180,000 objects "
                f"it can scan in its 60 min budget in about {days} days")
    assert volume["sentence"] == sentence
    assert sentence in client.get("/health").json()["warnings"]

    found = metrics(client)
    key = label("scanner", measure="objects_scanned")
    assert found[("cron_job_volume_warning", key)] == 1
    assert found[("cron_job_volume", key)] == round(60_000 * 1.05**11)
    assert found[("cron_job_volume_limit", key)] == pytest.approx(180_000, rel=1e-4)
    assert found[("cron_job_volume_growth_per_day", key)] == pytest.approx(0.05, abs=1e-3)
    assert found[("cron_job_volume_crossing_timestamp_seconds", key)] == pytest.approx(
        analytic.timestamp(), abs=7200)

    page = html.unescape(client.get("/dashboard/jobs/scanner", headers=basic()).text)
    volume_section = page[page.index('<section class="projection" id="volume">'):]
    assert (f'id="volume-sentence" data-outlook="soon"><span class="badge anomalous">limit'
            f'</span> {sentence}.') in volume_section
    assert volume_section.count('<circle class="dot"') == 12
    assert '<polyline class="fitted"' in volume_section
    assert '<polyline class="ahead"' in volume_section
    assert "limit 180,000 objects" in volume_section
    assert f"crosses {crosses:%Y-%m-%d}" in volume_section


def test_a_ceiling_the_job_reports_is_the_limit_when_it_is_lower(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "mailer")
    first = clock.now
    for i in range(12):  # 100 messages planned, 5% more a day; a brake lets 250 through
        planned = round(100 * 1.05**i)
        run(client, job, "mailer", 2.0, planned, {"volume": {
            "measure": "planned_messages", "value": 100 * 1.05**i, "ceiling": 250,
            "ceiling_label": "its send brake"}})
    analytic = first + dt.timedelta(days=math.log(2.5) / math.log(1.05))

    volume = client.get("/health", headers=auth()).json()["jobs"]["mailer"]["volume"]
    assert volume["limit_by"] == "ceiling" and volume["limit"] == 250
    crosses = dt.datetime.fromisoformat(volume["crosses_at"])
    assert abs(crosses - analytic) < dt.timedelta(hours=2), (crosses, analytic)
    days = round((crosses - clock.now).total_seconds() / 86400)
    sentence = (f"at this growth (+5.0% a day), mailer's send list exceeds its send brake "
                f"of 250 messages in about {days} days")
    assert volume["sentence"] == sentence
    assert client.get("/health").json()["warnings"] == [sentence]  # durations stay flat
    key = label("mailer", measure="planned_messages")
    assert metrics(client)[("cron_job_volume_limit", key)] == 250


def test_a_flat_volume_projects_no_crossing(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "steady", max_runtime=HOUR)
    for i in range(12):
        run(client, job, "steady", 100, 3, scanned(50_000 + (i % 2)))
    body = client.get("/health", headers=auth()).json()
    volume = body["jobs"]["steady"]["volume"]
    assert volume["outlook"] == "none" and volume["crosses_at"] is None
    assert volume["sentence"].startswith("steady's scan shows no growth toward the ")
    assert "warnings" not in body
    found = metrics(client)
    key = label("steady", measure="objects_scanned")
    assert found[("cron_job_volume_warning", key)] == 0
    assert ("cron_job_volume_crossing_timestamp_seconds", key) not in found
    page = html.unescape(client.get("/dashboard/jobs/steady", headers=basic()).text)
    assert 'id="volume-sentence" data-outlook="none">steady\'s scan shows no growth' in page


def test_too_little_history_or_no_measure_projects_nothing(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "young", "silent",
                        max_runtime=HOUR)
    for i in range(4):
        run(client, job, "young", 100, 3, scanned(10_000 * 1.5**i))
    for i in range(12):
        run(client, job, "silent", 100 * 1.05**i, 3)
    jobs = client.get("/health", headers=auth()).json()["jobs"]
    assert jobs["young"]["volume"]["outlook"] is None
    assert jobs["young"]["volume"]["runs"] == 4
    assert jobs["silent"]["volume"] is None
    assert ("cron_job_volume_warning", label("silent", measure="objects_scanned")) not in (
        metrics(client))
    page = client.get("/dashboard/jobs/young", headers=basic()).text
    assert "No volume trend yet: it needs at least 6 successful runs that measured " \
           "objects scanned." in page
    assert 'id="volume"' not in client.get("/dashboard/jobs/silent", headers=basic()).text
