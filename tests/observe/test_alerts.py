"""A job that starts failing alerts the admins once by email and webhook (per incident:
tests/observe/test_incident_alerts.py; the runner's retries are in tests/core/test_runner.py)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from tests.conftest import auth
from tests.support.jobs import broken, fake_job, log_rows
from tests.support.servers import HttpCapture, SmtpSink, free_port


def test_failed_job_sends_one_email_and_one_webhook(
    make_client: Callable[..., TestClient], settings: Settings, smtp_sink: SmtpSink,
    http_capture: HttpCapture, engine: Engine,
) -> None:
    alerting = settings.model_copy(update={
        **smtp_sink.settings, "admin_emails": ["ops@example.com", "cto@example.com"],
        "webhook_url": f"{http_capture.url}/alerts",
    })
    client = make_client(settings=alerting, jobs=fake_job("broken", broken))
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

    [row] = log_rows(engine)
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
    jobs = {**fake_job("broken", broken), **fake_job("fine", lambda _ctx: JobResult(3, "ok"))}
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
    assert [(r.job_name, r.status) for r in log_rows(engine)] == [
        ("broken", "error"), ("fine", "success")]


def test_webhook_answering_500_is_reported_not_raised(
    make_client: Callable[..., TestClient], settings: Settings, http_capture: HttpCapture,
) -> None:
    http_capture.status = 500
    client = make_client(settings=settings.model_copy(update={
        "webhook_url": http_capture.url}), jobs=fake_job("broken", broken))
    response = client.post("/api/cron/broken", headers=auth())
    assert response.status_code == 500
    assert response.json()["details"]["alerts"]["webhook"] == "failed: HTTPStatusError"
    assert len(http_capture.requests) == 1


def test_failure_message_never_carries_secrets_or_addresses(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    from tests.conftest import SECRET

    def leaky(_ctx: JobContext) -> JobResult:
        raise RuntimeError(f"login failed for ops@example.com with {SECRET} via "
                           "postgresql://admin:hunter2@db.internal/app")

    client = make_client(jobs=fake_job("leaky", leaky))
    response = client.post("/api/cron/leaky?force=true", headers=auth())
    assert response.status_code == 500
    stored = log_rows(engine)[0]
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
    client = make_client(jobs=fake_job("broken", broken))
    response = client.post("/api/cron/broken", headers=auth())
    assert response.status_code == 500
    assert response.json()["details"]["alerts"] == {"event": "incident_opened",
                                                    "email": "skipped", "webhook": "skipped"}
    # The run log says the same, not only the HTTP answer.
    [row] = log_rows(engine)
    assert row.details["alerts"] == {"event": "incident_opened", "email": "skipped",
                                     "webhook": "skipped"}

    # One channel set: that one is sent, the other still skipped.  (Another job: broken's
    # incident is open already, and a second failure of it alerts nobody.)
    hooked = make_client(settings=settings.model_copy(update={
        "webhook_url": f"{http_capture.url}/alerts"}), jobs=fake_job("broken-too", broken))
    again = hooked.post("/api/cron/broken-too?force=1", headers=auth())
    assert again.json()["details"]["alerts"] == {"event": "incident_opened",
                                                 "email": "skipped", "webhook": "sent"}
    assert len(http_capture.requests) == 1
    assert log_rows(engine)[-1].details["alerts"] == {"event": "incident_opened",
                                                       "email": "skipped", "webhook": "sent"}
