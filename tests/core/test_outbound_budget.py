"""A dead-but-listening upstream (a socket that accepts and never answers) cannot hold a run
past its budget: every outbound call (Stripe, SMTP, S3, webhook, alert email) ends in time,
and the alerts have their own short budget."""

from __future__ import annotations

import datetime as dt
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
import stripe
from sqlalchemy.engine import Engine

from app.adapters.storage import S3Storage
from app.adapters.stripe_gateway import StripeGateway, StripeUnavailable
from app.core import budget
from app.core.registry import JOBS
from app.core.runner import Runner, RunOutcome
from app.mail.smtp import Mailer, MailRefused, MailUnavailable
from app.observe.alerts import send
from app.observe.incidents import Alert, AlertKind, Condition
from tests.conftest import FixedClock, make_settings
from tests.support.notification_data import seed_travellers

# Each test is bounded: without the budget these calls took minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
SLACK = 3.0  # seconds past the budget a test tolerates (one SDK back-off sleep, scheduling)


class DeadServer:
    """Accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def dead() -> Iterator[DeadServer]:
    server = DeadServer()
    yield server
    server.close()


def _timed(func: object, *args: object) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result = func(*args)  # type: ignore[operator]
    except Exception as exc:
        result = exc
    return time.monotonic() - started, result


def test_a_stripe_request_ends_with_the_budget(dead: DeadServer, tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path, stripe_secret_key="sk_test_dead",
                             stripe_api_base=dead.url, stripe_timeout=15.0,
                             stripe_max_network_retries=2)
    with budget.limited(2.0), StripeGateway(settings) as gateway:
        elapsed, result = _timed(gateway.retrieve_subscription, "sub_123")
    # The gateway hands the runner the project's TransientError, chained to Stripe's error.
    assert isinstance(result, StripeUnavailable), result
    assert isinstance(result.__cause__, stripe.APIConnectionError), result.__cause__
    assert elapsed < 2.0 + SLACK, elapsed


def test_an_smtp_send_ends_with_the_budget(dead: DeadServer, tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path, smtp_host="127.0.0.1", smtp_port=dead.port,
                             smtp_security="none", smtp_timeout=15.0, mail_max_attempts=4,
                             mail_retry_wait=0.1)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "x"
    message.set_content("x")
    with budget.limited(2.0):
        mailer = Mailer(settings)
        elapsed, result = _timed(mailer.send, message)
    # An SMTP failure leaves the mailer as the project's error, the library's as its cause.
    cause = result.__cause__ if isinstance(result, MailUnavailable | MailRefused) else result
    assert isinstance(cause, TimeoutError | smtplib.SMTPException), result
    assert elapsed < 2.0 + SLACK, elapsed


def test_an_s3_listing_ends_with_the_budget(dead: DeadServer, tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path, storage_backend="s3",
                             s3_endpoint_url=dead.url, s3_access_key_id="key",
                             s3_secret_access_key="secret-key")
    with budget.limited(2.0):
        storage = S3Storage.from_settings(settings)
        elapsed, result = _timed(lambda: list(storage.list("trip-media")))
    assert isinstance(result, Exception), result
    assert elapsed < 2.0 + SLACK, elapsed


def test_alerts_to_dead_servers_take_no_longer_than_their_budget(
        dead: DeadServer, tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path, smtp_host="127.0.0.1", smtp_port=dead.port,
                             smtp_security="none", smtp_timeout=15.0,
                             admin_emails="ops@example.com", webhook_url=f"{dead.url}/hook",
                             webhook_timeout=15.0)
    now = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
    alert = Alert(AlertKind.OPENED, "promo-cleanup", Condition.FAILING, Condition.HEALTHY,
                  now, now, None, "boom")
    with budget.limited(2.0):
        elapsed, results = _timed(send, settings, alert)
    assert isinstance(results, dict), results
    assert results["email"].startswith("failed: ") and results["webhook"].startswith("failed: ")
    assert elapsed < 2.0 + SLACK, elapsed


def test_a_run_against_a_dead_mail_server_answers_within_its_budget(
        dead: DeadServer, engine: Engine, db_url: str, tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 28, 8, 0, 20, tzinfo=dt.UTC)
    seed_travellers(engine, dt.date(2026, 12, 5), now, 5)
    max_runtime, alert_timeout = 6.0, 2.0
    settings = make_settings(db_url, tmp_path, smtp_host="127.0.0.1", smtp_port=dead.port,
                             smtp_security="none", smtp_timeout=30.0, mail_max_attempts=4,
                             admin_emails="ops@example.com", alert_timeout=alert_timeout)
    spec = replace(JOBS["trip-reminders"], max_runtime=dt.timedelta(seconds=max_runtime))
    runner = Runner(settings, engine, clock=FixedClock(now), jobs={spec.name: spec})
    elapsed, outcome = _timed(runner.run, "trip-reminders")
    assert isinstance(outcome, RunOutcome), outcome
    assert outcome.status in ("error", "warning"), outcome.message
    assert elapsed < max_runtime + alert_timeout + SLACK, (elapsed, outcome.message)
    if outcome.status == "error":
        assert outcome.details["alerts"]["email"].startswith("failed: ")
