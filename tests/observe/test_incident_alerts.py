"""Alerts per incident through the service: a real SMTP sink and a local webhook receiver.

A job failing three times then succeeding alerts once and recovers once; a job overdue with
no run at all, or stuck, is alerted once however often /health and the cron calls look;
one reminder after ALERT_REMINDER_HOURS; two app instances racing on one database send each
alert once; the Slack and Discord forms are accepted by receivers checking their shape.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec, RetryPolicy
from app.db import table_of
from app.main import create_app
from app.models import CronJobIncident, CronJobLog
from tests.conftest import FixedClock, auth
from tests.support.servers import HttpCapture, SmtpSink

BASE = "https://cron.example.com"
ONCE = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01)


class Switch:
    """A job that fails while `failing` is set, with the message a user would read."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, _ctx: JobContext) -> JobResult:
        if self.failing:
            raise ValueError("promo table is upside down")
        return JobResult(records_processed=3, message="done")


def _spec(name: str, func: Callable[[JobContext], JobResult], **kw: Any) -> JobSpec:
    return JobSpec(name, "0 3 * * *", func, "test job", retry=ONCE, critical=True,
                   grace=dt.timedelta(hours=2), **kw)


@pytest.fixture
def alerting(settings: Settings, smtp_sink: SmtpSink, http_capture: HttpCapture) -> Settings:
    return settings.model_copy(update={
        **smtp_sink.settings, "admin_emails": ["ops@example.com"],
        "webhook_url": f"{http_capture.url}/hook", "service_base_url": BASE,
        "alert_reminder_hours": 0.0,
    })


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _subjects(sink: SmtpSink) -> list[str]:
    return [str(message["Subject"]) for message in sink.messages()]


def _events(capture: HttpCapture) -> list[tuple[str, str]]:
    return [(r.json()["event"], r.json()["task"]) for r in capture.requests]


def test_three_failures_then_a_success_alert_once_and_recover_once(
    make_client: Callable[..., TestClient], alerting: Settings, smtp_sink: SmtpSink,
    http_capture: HttpCapture, clock: FixedClock, engine: Engine,
) -> None:
    job = Switch()
    client = make_client(settings=alerting, jobs={"promo": _spec("promo", job)})
    started = clock.now
    answers = []
    for _ in range(3):
        answers.append(client.post("/api/cron/promo?force=1", headers=auth()))
        assert client.get("/health").status_code == 503
        clock.advance(minutes=10)
    assert [a.json()["status"] for a in answers] == ["error"] * 3
    first_run = answers[0].json()["run_id"]
    # Only the run that opened the incident says it alerted; the next two add nothing.
    assert answers[0].json()["details"]["alerts"] == {
        "event": "incident_opened", "email": "sent", "webhook": "sent"}
    assert "alerts" not in answers[1].json()["details"]
    assert "alerts" not in answers[2].json()["details"]

    job.failing = False
    ok = client.post("/api/cron/promo?force=1", headers=auth())
    assert ok.json()["status"] == "success"
    assert ok.json()["details"]["alerts"]["event"] == "incident_recovered"
    assert client.get("/health").status_code == 200
    for _ in range(3):  # healthy again: nothing more
        client.post("/api/cron/promo?force=1", headers=auth())
        client.get("/health")

    assert _subjects(smtp_sink) == ["[voyagesmart-cron] promo is failing",
                                    "[voyagesmart-cron] promo recovered"]
    opened_mail, recovered_mail = (m.get_content() for m in smtp_sink.messages())
    assert ("promo is failing since 2026-11-28 03:00 UTC: failed after 1 attempt(s): "
            "ValueError: promo table is upside down.") in opened_mail
    assert f"On the dashboard: {BASE}/dashboard/jobs/promo#run-{first_run}" in opened_mail
    assert "promo recovered after 30 min failing (since 2026-11-28 03:00 UTC)" in recovered_mail

    assert _events(http_capture) == [("incident_opened", "promo"),
                                     ("incident_recovered", "promo")]
    opened, recovered = (r.json() for r in http_capture.requests)
    assert opened["status"] == "failing" and opened["previous_status"] == "healthy"
    assert opened["since"] == _iso(started)
    assert opened["run_id"] == first_run
    assert opened["url"] == f"{BASE}/dashboard/jobs/promo#run-{first_run}"
    assert "promo table is upside down" in opened["detail"]
    assert recovered["status"] == "healthy" and recovered["previous_status"] == "failing"
    assert recovered["run_id"] == ok.json()["run_id"]
    assert recovered["down_seconds"] == 30 * 60

    with engine.connect() as conn:
        [state] = conn.execute(sa.select(table_of(CronJobIncident))).all()
    # Four writes: opened, the two later failed runs noted silently, recovered.
    assert (state.task, state.condition, state.version) == ("promo", "healthy", 4)
    assert state.last_alert["event"] == "incident_recovered"
    assert state.last_alert["channels"] == {"email": "sent", "webhook": "sent"}


def _seed_run(engine: Engine, job: str, started: dt.datetime, status: str) -> uuid.UUID:
    run_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert().values(
            run_id=run_id, job_name=job, trigger="test", started_at=started,
            ended_at=started if status != "running" else None, status=status,
            records_processed=0, attempts=1, dry_run=False, message=status))
    return run_id


def test_a_job_overdue_with_no_run_at_all_is_alerted_once(
    make_client: Callable[..., TestClient], alerting: Settings, smtp_sink: SmtpSink,
    http_capture: HttpCapture, clock: FixedClock, engine: Engine,
) -> None:
    fine = _spec("fine", lambda _ctx: JobResult(1, "ok"))
    never = _spec("never-ran", lambda _ctx: JobResult(1, "ok"))
    # The service's first recorded run, two days ago: never-ran was due at 03:00 the next
    # day plus its 2 h grace, and has no run at all.
    _seed_run(engine, "fine", clock.now - dt.timedelta(days=2), "success")
    client = make_client(settings=alerting, jobs={"fine": fine, "never-ran": never})
    for _ in range(30):  # every cron call and every probe checks
        client.post("/api/cron/fine?force=1", headers=auth())
        assert client.get("/health").status_code == 503
        clock.advance(minutes=1)

    assert _events(http_capture) == [("incident_opened", "never-ran")]
    [hook] = http_capture.requests
    due_by = "2026-11-27T05:00:00Z"
    assert hook.json()["status"] == "overdue" and hook.json()["since"] == due_by
    assert hook.json()["run_id"] is None
    assert hook.json()["url"] == f"{BASE}/dashboard/jobs/never-ran"
    assert hook.json()["detail"] == f"no successful run since never; was due by {due_by}"
    assert _subjects(smtp_sink) == ["[voyagesmart-cron] never-ran is overdue"]

    # Its first success recovers it, once.
    client.post("/api/cron/never-ran?force=1", headers=auth())
    client.get("/health")
    assert _events(http_capture)[1:] == [("incident_recovered", "never-ran")]


def test_a_stuck_run_is_alerted_once(
    make_client: Callable[..., TestClient], alerting: Settings, http_capture: HttpCapture,
    clock: FixedClock, engine: Engine,
) -> None:
    spec = _spec("slow", lambda _ctx: JobResult(1, "ok"), max_runtime=dt.timedelta(minutes=5))
    _seed_run(engine, "slow", clock.now - dt.timedelta(minutes=20), "running")
    client = make_client(settings=alerting, jobs={"slow": spec})
    for _ in range(5):
        client.get("/health")
        clock.advance(minutes=1)
    [hook] = http_capture.requests
    assert hook.json()["event"] == "incident_opened" and hook.json()["status"] == "stuck"
    assert hook.json()["since"] == "2026-11-28T02:45:30Z"
    assert "past its max runtime of 5 min" in hook.json()["detail"]


def test_one_reminder_after_the_interval_and_no_more(
    make_client: Callable[..., TestClient], alerting: Settings, smtp_sink: SmtpSink,
    http_capture: HttpCapture, clock: FixedClock,
) -> None:
    reminding = alerting.model_copy(update={"alert_reminder_hours": 4.0})
    client = make_client(settings=reminding, jobs={"promo": _spec("promo", Switch())})
    opened_at = clock.now
    client.post("/api/cron/promo?force=1", headers=auth())
    for _ in range(3 * 24):  # every twenty minutes for a day, still failing
        clock.advance(minutes=20)
        client.get("/health")
    assert [e for e, _ in _events(http_capture)] == ["incident_opened", "incident_reminder"]
    reminder = http_capture.requests[1].json()
    assert reminder["at"] == _iso(opened_at + dt.timedelta(hours=4))
    assert reminder["summary"].startswith("Reminder: promo is still failing, since "
                                          "2026-11-28 03:00 UTC (4 h 0 min)")
    assert _subjects(smtp_sink)[1] == "[voyagesmart-cron] Reminder: promo is still failing"


def test_two_instances_racing_send_each_alert_once(
    alerting: Settings, engine: Engine, clock: FixedClock, http_capture: HttpCapture,
    smtp_sink: SmtpSink,
) -> None:
    # The runs are written by another process (seeded here), so every change is first seen
    # by sixteen simultaneous /health requests to two app instances: the first incident is
    # claimed by an INSERT, the recovery and the second incident by a conditional UPDATE.
    jobs = {"promo": _spec("promo", Switch())}
    instances = [create_app(alerting, engine=engine, clock=clock, jobs=jobs) for _ in range(2)]
    probes = 16
    barrier = threading.Barrier(probes)

    def probe(i: int) -> int:
        with TestClient(instances[i % 2], raise_server_exceptions=False) as client:
            barrier.wait()
            return client.get("/health").status_code

    for status in ("error", "error", "error", "success", "error", "success"):
        _seed_run(engine, "promo", clock.now, status)
        with ThreadPoolExecutor(probes) as pool:
            codes = set(pool.map(probe, range(probes)))
        assert codes == ({503} if status == "error" else {200})
        clock.advance(minutes=5)
    assert [e for e, _ in _events(http_capture)] == [
        "incident_opened", "incident_recovered", "incident_opened", "incident_recovered"]
    assert _subjects(smtp_sink) == ["[voyagesmart-cron] promo is failing",
                                    "[voyagesmart-cron] promo recovered"] * 2


def _slack_problem(body: dict[str, Any]) -> str | None:
    # Slack: `text` is the notification (required beside blocks); blocks are layout blocks
    # whose text objects are mrkdwn or plain_text of at most 3000 characters.
    if not isinstance(body.get("text"), str) or not body["text"]:
        return "no_text"
    for block in body.get("blocks", []):
        texts = [block["text"]] if block["type"] == "section" else block.get("elements", [])
        if block["type"] not in {"section", "context"} or not texts:
            return "invalid_blocks"
        for text in texts:
            if text.get("type") not in {"mrkdwn", "plain_text"} or not 0 < len(
                    text.get("text", "")) <= 3000:
                return "invalid_blocks"
    return None


def _discord_problem(body: dict[str, Any]) -> str | None:
    # Discord: a non-empty `content` of at most 2000 characters (or embeds); mentions off.
    content = body.get("content")
    if not isinstance(content, str) or not 0 < len(content) <= 2000:
        return "content"
    if body.get("allowed_mentions") != {"parse": []}:
        return "mentions"
    return None


@pytest.fixture
def receiver(request: pytest.FixtureRequest, http_capture: HttpCapture) -> HttpCapture:
    """A local incoming webhook answering 400, as Slack and Discord do, to a body their
    incoming webhooks would refuse."""
    check = _slack_problem if request.param == "slack" else _discord_problem
    http_capture.answer = lambda sent: 400 if check(sent.json()) else 200
    return http_capture


@pytest.mark.parametrize("receiver", ["slack", "discord"], indirect=True)
def test_slack_and_discord_forms_are_accepted(
    make_client: Callable[..., TestClient], settings: Settings,
    receiver: HttpCapture, request: pytest.FixtureRequest,
) -> None:
    fmt = request.node.callspec.params["receiver"]
    job = Switch()
    client = make_client(settings=settings.model_copy(update={
        "webhook_url": f"{receiver.url}/hook", "webhook_format": fmt,
        "service_base_url": BASE}), jobs={"promo": _spec("promo", job)})
    failed = client.post("/api/cron/promo?force=1", headers=auth())
    job.failing = False
    ok = client.post("/api/cron/promo?force=1", headers=auth())
    assert failed.json()["details"]["alerts"]["webhook"] == "sent"
    assert ok.json()["details"]["alerts"]["webhook"] == "sent"
    check = _slack_problem if fmt == "slack" else _discord_problem
    assert [check(r.json()) for r in receiver.requests] == [None, None]
    assert check({"summary": "the json form"}) is not None  # which it would refuse
    opened, recovered = (r.json() for r in receiver.requests)
    run = failed.json()["run_id"]
    if fmt == "slack":
        assert opened["text"].startswith("promo is failing since 2026-11-28 03:00 UTC: ")
        assert opened["text"].endswith(f"<{BASE}/dashboard/jobs/promo#run-{run}>")
        assert recovered["text"].startswith("promo recovered after 0 s failing")
    else:
        assert opened["content"].startswith("promo is failing since 2026-11-28 03:00 UTC: ")
        assert opened["content"].endswith(f"\n<{BASE}/dashboard/jobs/promo#run-{run}>")
        assert recovered["content"].startswith("promo recovered after 0 s failing")

