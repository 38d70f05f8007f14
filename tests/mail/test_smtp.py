"""The SMTP rule, written once in app/mail/smtp.py: a real aiosmtpd server answers, and what
leaves the mailer is the project's error (retried by the runner or not), never smtplib's."""

from __future__ import annotations

import datetime as dt
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

import app.core.runner
from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.errors import TransientError
from app.core.registry import JobSpec, RetryPolicy
from app.core.runner import Runner, is_transient
from app.mail.smtp import Delivery, Mailer, MailRefused, MailUnavailable
from tests.conftest import FixedClock, make_settings
from tests.support.servers import free_port

NOW = dt.datetime(2026, 11, 28, 8, 0, 20, tzinfo=dt.UTC)


@dataclass
class Replies:
    """What the server answers; `None` accepts.  `drop_on` cuts the connection instead."""

    mail: str | None = None
    rcpt: str | None = None
    data: str | None = None
    drop_on: str = ""
    mails: int = 0
    stored: int = 0


class _Handler:
    def __init__(self, replies: Replies) -> None:
        self.replies = replies

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.replies.mails += 1
        if self.replies.drop_on == "MAIL":
            server.transport.abort()
        if self.replies.mail is not None:
            return self.replies.mail
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.replies.rcpt is not None:
            return self.replies.rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.replies.data is not None:
            return self.replies.data
        self.replies.stored += 1
        return "250 OK"


@dataclass
class Server:
    replies: Replies
    port: int


@pytest.fixture
def server() -> Iterator[Server]:
    replies = Replies()
    port = free_port()
    controller = Controller(_Handler(replies), hostname="127.0.0.1", port=port)
    controller.start()
    yield Server(replies, port)
    controller.stop()


def _settings(tmp_path: Path, port: int, db_url: str = "sqlite://", **overrides: Any
              ) -> Settings:
    return make_settings(db_url, tmp_path, **{
        "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
        "smtp_timeout": 5.0, "mail_max_attempts": 3, "mail_retry_wait": 0.0, **overrides})


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ("cron@example.com",
                                                          "ops@example.com", "x")
    message.set_content("x")
    return message


def _send(settings: Settings) -> BaseException | None:
    try:
        Mailer(settings, sleep=lambda _s: None).send(_message())
    except Exception as exc:
        return exc
    return None


class _Won:
    """A hand-over claim the run always wins."""

    def result(self) -> bool:
        return True


_PAYLOAD = {"recipient_name": "Ada", "days_ahead": 7,
            "trip": {"name": "Lisbon", "destination": "Lisbon", "start_date": "2026-12-05",
                     "end_date": "2026-12-11", "participants": 2,
                     "url": "https://app.example.com/trips/t1"}}


def _deliver(settings: Settings) -> Delivery:
    """One user email through the once-only path (`deliver`), its claim won."""
    mailer = Mailer(settings, sleep=lambda _s: None)
    outgoing = mailer.compose("trip_reminder", "a@example.com", "en", _PAYLOAD,
                              unsubscribe_url="https://cron.example.com/u?token=t", key="k")
    with mailer.connection() as transport:
        return transport.deliver(outgoing, _Won)


@pytest.mark.parametrize("reply", ["451 4.3.0 try again later", "421 4.7.0 too busy"])
def test_a_4xx_reply_is_retried_then_leaves_as_transient(server: Server, tmp_path: Path,
                                                         reply: str) -> None:
    server.replies.mail = reply
    error = _send(_settings(tmp_path, server.port))

    assert isinstance(error, MailUnavailable) and isinstance(error, TransientError)
    assert isinstance(error.__cause__, smtplib.SMTPResponseException)
    assert error.__cause__.smtp_code == int(reply[:3])
    assert reply[:3] in str(error)
    assert server.replies.mails == 3  # MAIL_MAX_ATTEMPTS, each on a fresh connection


def test_a_5xx_reply_is_permanent_and_not_retried(server: Server, tmp_path: Path) -> None:
    server.replies.mail = "550 5.7.1 sender not allowed"
    error = _send(_settings(tmp_path, server.port))

    assert isinstance(error, MailRefused) and not isinstance(error, TransientError)
    assert isinstance(error.__cause__, smtplib.SMTPSenderRefused)
    assert "sender not allowed" in str(error)
    assert server.replies.mails == 1


def test_a_5xx_to_the_message_is_permanent(server: Server, tmp_path: Path) -> None:
    server.replies.data = "554 5.6.0 message refused"
    error = _send(_settings(tmp_path, server.port))

    assert isinstance(error, MailRefused), error
    assert isinstance(error.__cause__, smtplib.SMTPDataError)


def test_a_dropped_connection_is_transient(server: Server, tmp_path: Path) -> None:
    server.replies.drop_on = "MAIL"
    error = _send(_settings(tmp_path, server.port))

    assert isinstance(error, MailUnavailable), error
    assert isinstance(error.__cause__, smtplib.SMTPServerDisconnected)
    assert server.replies.mails == 3


def test_a_refused_connection_is_retried_and_left_as_python_s_own_error(
        tmp_path: Path) -> None:
    """A socket error is no library's: the runner retries a ConnectionError itself, and the
    alerts name it as it is."""
    port = free_port()  # nothing listens there
    attempts: list[float] = []
    mailer = Mailer(_settings(tmp_path, port), sleep=attempts.append)
    with pytest.raises(ConnectionRefusedError) as refused:
        mailer.send(_message())

    assert len(attempts) == 2  # slept between MAIL_MAX_ATTEMPTS (3) connections
    assert is_transient(refused.value)


def test_a_refused_recipient_is_an_answer_not_an_error(server: Server,
                                                       tmp_path: Path) -> None:
    """Delivery to one user: a 5xx for that recipient is returned, for the caller to record."""
    server.replies.rcpt = "550 5.1.1 no such user"
    result = _deliver(_settings(tmp_path, server.port))

    assert result == Delivery("rejected", "550 5.1.1 no such user")
    assert server.replies.stored == 0


def test_a_sender_refused_during_delivery_leaves_as_permanent(server: Server,
                                                              tmp_path: Path) -> None:
    server.replies.mail = "553 5.7.1 sender address rejected"
    with pytest.raises(MailRefused):
        _deliver(_settings(tmp_path, server.port))
    assert server.replies.mails == 1




def test_the_runner_knows_no_mail_library() -> None:
    assert "smtplib" not in vars(app.core.runner)
    assert is_transient(MailUnavailable("451 try again"))
    assert not is_transient(MailRefused("550 refused"))


@pytest.mark.parametrize(("reply", "attempts"), [
    ("451 4.3.0 try again later", 3),
    ("550 5.7.1 sender not allowed", 1),
])
def test_the_runner_retries_a_job_only_when_the_mail_server_may_take_it_later(
        engine: Engine, db_url: str, tmp_path: Path, server: Server, reply: str,
        attempts: int) -> None:
    server.replies.mail = reply
    settings = _settings(tmp_path, server.port, db_url, mail_max_attempts=1,
                         admin_emails=[])

    def job(ctx: JobContext) -> JobResult:
        Mailer(ctx.settings, sleep=lambda _s: None).send(_message())
        return JobResult(records_processed=1, message="sent")

    spec = JobSpec("mail-probe", "0 3 * * *", job, "sends one email",
                   retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05))
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None,
                    jobs={spec.name: spec})
    outcome = runner.run("mail-probe", trigger="manual")

    assert outcome.status == "error"
    assert outcome.attempts == attempts
    assert server.replies.mails == attempts
    assert reply[:3] in outcome.message
