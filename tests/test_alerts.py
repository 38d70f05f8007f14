"""A job that starts failing alerts the admins once by email and webhook (per incident:
tests/observe/); retries show in the run log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.errors import TransientError
from app.core.registry import JobSpec, RetryPolicy
from app.core.runner import Runner, RunOutcome
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, auth
from tests.servers import HttpCapture, SmtpSink, free_port

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def _job(name: str, func: Callable[[JobContext], JobResult], **kw: Any) -> dict[str, JobSpec]:
    return {name: JobSpec(name, "0 3 * * *", func, "test job", retry=FAST, **kw)}


def _broken(_ctx: JobContext) -> JobResult:
    raise ValueError("promo table is upside down")


def _flaky(failures: int) -> Callable[[JobContext], JobResult]:
    def run(ctx: JobContext) -> JobResult:
        if ctx.attempt <= failures:
            raise TransientError(f"connection reset (attempt {ctx.attempt})")
        return JobResult(records_processed=7, message="done at last")
    return run


def _log_rows(engine: Engine) -> list[Any]:
    log_t = table_of(CronJobLog)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(log_t).order_by(log_t.c.id)))


def test_failed_job_sends_one_email_and_one_webhook(
    make_client: Callable[..., TestClient], settings: Settings, smtp_sink: SmtpSink,
    http_capture: HttpCapture, engine: Engine,
) -> None:
    alerting = settings.model_copy(update={
        **smtp_sink.settings, "admin_emails": ["ops@example.com", "cto@example.com"],
        "webhook_url": f"{http_capture.url}/alerts",
    })
    client = make_client(settings=alerting, jobs=_job("broken", _broken))
    response = client.post("/api/cron/broken", headers=auth())

    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "error"
    assert body["message"] == "failed after 1 attempt(s): ValueError: promo table is upside down"
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert body["details"]["alerts"] == {"event": "incident_opened", "email": "sent",
                                         "webhook": "sent"}

    mails = smtp_sink.received
    assert len(mails) == 1
    assert sorted(mails[0].rcpt_tos) == ["cto@example.com", "ops@example.com"]
    assert mails[0].message["Subject"] == "[voyagesmart-cron] broken is failing"
    assert body["run_id"] in mails[0].message.get_content()

    assert len(http_capture.requests) == 1
    hook = http_capture.requests[0]
    assert (hook.method, hook.path) == ("POST", "/alerts")
    assert hook.json()["event"] == "incident_opened"
    assert hook.json()["task"] == "broken"
    assert hook.json()["run_id"] == body["run_id"]

    [row] = _log_rows(engine)
    assert (row.status, row.attempts) == ("error", 1)
    assert "upside down" in row.error_details["error"]


def test_unreachable_alert_channels_do_not_change_the_status(
    make_client: Callable[..., TestClient], settings: Settings, engine: Engine,
) -> None:
    dead_port = free_port()
    unreachable = settings.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": dead_port, "smtp_security": "none",
        "smtp_timeout": 2.0, "admin_emails": ["ops@example.com"],
        "webhook_url": f"http://127.0.0.1:{dead_port}/alerts", "webhook_timeout": 2.0,
    })
    jobs = {**_job("broken", _broken), **_job("fine", lambda _ctx: JobResult(3, "ok"))}
    client = make_client(settings=unreachable, jobs=jobs)

    failed = client.post("/api/cron/broken", headers=auth())
    fine = client.post("/api/cron/fine", headers=auth())

    assert failed.status_code == 500
    assert failed.json()["status"] == "error"
    assert failed.json()["details"]["alerts"] == {
        "event": "incident_opened",
        "email": "failed: ConnectionRefusedError", "webhook": "failed: ConnectError"}
    assert fine.status_code == 200
    assert fine.json()["status"] == "success"
    assert [(r.job_name, r.status) for r in _log_rows(engine)] == [
        ("broken", "error"), ("fine", "success")]


def test_webhook_answering_500_is_reported_not_raised(
    make_client: Callable[..., TestClient], settings: Settings, http_capture: HttpCapture,
) -> None:
    http_capture.status = 500
    client = make_client(settings=settings.model_copy(update={
        "webhook_url": http_capture.url}), jobs=_job("broken", _broken))
    response = client.post("/api/cron/broken", headers=auth())
    assert response.status_code == 500
    assert response.json()["details"]["alerts"]["webhook"] == "failed: HTTPStatusError"
    assert len(http_capture.requests) == 1


def _run_flaky(settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
               failures: int) -> tuple[RunOutcome, list[float]]:
    """Run a job failing transiently `failures` times, alerting by mail to `smtp_sink`."""
    sleeps: list[float] = []
    alerting = settings.model_copy(update={**smtp_sink.settings,
                                           "admin_emails": ["ops@example.com"]})
    runner = Runner(alerting, engine, clock=clock, sleep=sleeps.append,
                    jobs=_job("flaky", _flaky(failures)))
    return runner.run("flaky", trigger="cli"), sleeps


def test_transient_error_then_success_ends_success_with_attempts_logged(
    settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
) -> None:
    outcome, sleeps = _run_flaky(settings, engine, clock, smtp_sink, failures=2)

    assert outcome.status == "success"
    assert (outcome.attempts, outcome.records_processed) == (3, 7)
    assert len(sleeps) == 2 and all(0 <= s <= FAST.max_delay for s in sleeps)
    [row] = _log_rows(engine)
    assert (row.status, row.attempts, row.message) == ("success", 3, "done at last")
    assert [a["attempt"] for a in row.error_details["attempts"]] == [1, 2]
    assert all(a["transient"] for a in row.error_details["attempts"])
    assert row.error_details["attempts"][0]["error"] == (
        "TransientError: connection reset (attempt 1)")
    assert smtp_sink.received == []  # a run that recovered is not a failure


def test_transient_error_that_persists_fails_after_every_attempt(
    settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
) -> None:
    outcome, _ = _run_flaky(settings, engine, clock, smtp_sink, failures=99)

    assert outcome.status == "error"
    assert outcome.http_status == 500
    assert outcome.message.startswith("failed after 3 attempt(s): TransientError")
    [row] = _log_rows(engine)
    assert (row.status, row.attempts) == ("error", 3)
    assert len(row.error_details["attempts"]) == 3
    assert len(smtp_sink.received) == 1


def test_permanent_error_is_not_retried(settings: Settings, engine: Engine,
                                       clock: FixedClock) -> None:
    sleeps: list[float] = []
    runner = Runner(settings, engine, clock=clock, sleep=sleeps.append,
                    jobs=_job("broken", _broken))
    assert runner.run("broken").attempts == 1
    assert sleeps == []


def test_retries_stop_inside_the_time_budget(settings: Settings, engine: Engine,
                                             clock: FixedClock) -> None:
    # A budget shorter than the first backoff: tenacity gives up instead of sleeping past it.
    slow = RetryPolicy(attempts=10, base_delay=60, max_delay=60)
    jobs = {"flaky": JobSpec("flaky", "0 3 * * *", _flaky(99), "test", retry=slow,
                             max_runtime=dt.timedelta(seconds=1))}
    sleeps: list[float] = []
    outcome = Runner(settings, engine, clock=clock, sleep=sleeps.append, jobs=jobs).run("flaky")
    assert outcome.status == "error"
    assert outcome.attempts < 10


def test_failure_message_never_carries_secrets_or_addresses(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    from tests.conftest import SECRET

    def leaky(_ctx: JobContext) -> JobResult:
        raise RuntimeError(f"login failed for ops@example.com with {SECRET} via "
                           "postgresql://admin:hunter2@db.internal/app")

    client = make_client(jobs=_job("leaky", leaky))
    response = client.post("/api/cron/leaky?force=true", headers=auth())
    assert response.status_code == 500
    stored = _log_rows(engine)[0]
    for text in (response.text, str(stored.message), str(stored.error_details)):
        assert SECRET not in text
        assert "ops@example.com" not in text
        assert "hunter2" not in text
    assert "login failed" in response.json()["message"]


def test_unconfigured_alert_channels_are_reported_skipped_not_sent(
    make_client: Callable[..., TestClient], settings: Settings, engine: Engine,
    http_capture: HttpCapture,
) -> None:
    assert not settings.admin_emails and settings.webhook_url is None
    client = make_client(jobs=_job("broken", _broken))
    response = client.post("/api/cron/broken", headers=auth())
    assert response.status_code == 500
    assert response.json()["details"]["alerts"] == {"event": "incident_opened",
                                                    "email": "skipped", "webhook": "skipped"}
    # The run log says the same, not only the HTTP answer.
    [row] = _log_rows(engine)
    assert row.details["alerts"] == {"event": "incident_opened", "email": "skipped",
                                     "webhook": "skipped"}

    # One channel set: that one is sent, the other still skipped.  (Another job: broken's
    # incident is open already, and a second failure of it alerts nobody.)
    hooked = make_client(settings=settings.model_copy(update={
        "webhook_url": f"{http_capture.url}/alerts"}), jobs=_job("broken-too", _broken))
    again = hooked.post("/api/cron/broken-too?force=1", headers=auth())
    assert again.json()["details"]["alerts"] == {"event": "incident_opened",
                                                 "email": "skipped", "webhook": "sent"}
    assert len(http_capture.requests) == 1
    assert _log_rows(engine)[-1].details["alerts"] == {"event": "incident_opened",
                                                       "email": "skipped", "webhook": "sent"}
