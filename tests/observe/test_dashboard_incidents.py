"""The dashboard shows each job's incident: a marker in its overview row, and on its page
what kind, since when and the last alert; after the recovery, none open."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec, RetryPolicy
from tests.conftest import FixedClock, auth, make_settings
from tests.observe.sized_job import PASSWORD, USER, ClientFactory, basic
from tests.support.servers import SmtpSink


class Switch:
    def __init__(self) -> None:
        self.failing = True

    def __call__(self, _ctx: JobContext) -> JobResult:
        if self.failing:
            raise ValueError("promo table is upside down")
        return JobResult(records_processed=1, message="done")


def _row(page: str, task: str) -> str:
    found = re.search(rf'<tr id="job-{task}" class="job-row">(.*?)</tr>', page, re.S)
    assert found is not None
    return found.group(1)


def test_an_open_incident_is_marked_in_the_overview_and_described_on_the_job_page(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path,
        smtp_sink: SmtpSink) -> None:
    switch = Switch()
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             admin_emails=["ops@example.com"], dashboard_user=USER,
                             dashboard_password=PASSWORD)
    once = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01)
    jobs = {name: JobSpec(name, "0 3 * * *", switch, name, retry=once, critical=True,
                          grace=dt.timedelta(hours=2)) for name in ("flaky", "calm")}
    client = make_client(settings=settings, jobs=jobs)
    opened = clock.now
    assert client.post("/api/cron/flaky?force=1", headers=auth()).status_code == 500
    clock.advance(minutes=90)
    assert client.post("/api/cron/flaky?force=1", headers=auth()).status_code == 500
    assert len(smtp_sink.messages()) == 1  # one alert for the incident

    overview = html.unescape(client.get("/dashboard/", headers=basic()).text)
    marker = _row(overview, "flaky")
    assert 'class="badge incident" data-incident="failing"' in marker
    assert f"incident: failing since {opened:%Y-%m-%d %H:%M} UTC, last alert 1 h ago" in (
        marker)
    assert "badge incident" not in _row(overview, "calm")

    page = html.unescape(client.get("/dashboard/jobs/flaky", headers=basic()).text)
    incident = page[page.index('<dd id="incident">'):]
    incident = incident[:incident.index("</dd>")]
    assert 'data-incident="failing">⚑ failing</span>' in incident
    assert f"open since {opened:%Y-%m-%d %H:%M} UTC (1 h ago)" in incident
    assert f"last alert {opened:%Y-%m-%d %H:%M} UTC (1 h ago)" in incident
    calm = client.get("/dashboard/jobs/calm", headers=basic()).text
    assert '<dd id="incident"><span class="muted">none</span></dd>' in calm

    switch.failing = False
    clock.advance(minutes=10)
    assert client.post("/api/cron/flaky?force=1", headers=auth()).status_code == 200
    assert len(smtp_sink.messages()) == 2  # the recovery
    recovered = html.unescape(client.get("/dashboard/jobs/flaky", headers=basic()).text)
    assert (f"none open; last alert {clock.now:%Y-%m-%d %H:%M} UTC" in recovered)
    assert "badge incident" not in _row(html.unescape(
        client.get("/dashboard/", headers=basic()).text), "flaky")
