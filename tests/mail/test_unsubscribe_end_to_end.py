"""An unsubscribed user gets no further email: sent by a real run to the aiosmtpd sink,
clicked over real HTTP (the service under uvicorn, the link's one-click POST), run again."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core.context import JobContext
from app.core.runner import Runner
from app.jobs import trip_reminders
from app.mail import delivery as notify
from app.mail.recipients import Screen
from app.mail.unsubscribe import Links
from app.models import TripParticipant
from tests.conftest import SECRET, FixedClock, make_settings, rows
from tests.support.notification_data import add_people, recipients, trip, user
from tests.support.servers import SmtpSink, UvicornProcess, free_port

pytestmark = pytest.mark.slow

KEY = "unsubscribe-key-0123456789-abcdefghijklmnopqrstuv"
DAY_ONE = dt.datetime(2026, 11, 28, 8, 0, 30, tzinfo=dt.UTC)  # reminds trips of 5 Dec
LONG_AGO = DAY_ONE - dt.timedelta(days=400)


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[UvicornProcess]:
    port = free_port()
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "UNSUBSCRIBE_SECRET": KEY,
        "SERVICE_BASE_URL": f"http://127.0.0.1:{port}",
    }, port=port, cwd=tmp_path).start()
    yield proc
    proc.stop()


def _two_trips(engine: Engine) -> None:
    """Olivia and Paolo travel together twice: to Lisbon on 5 Dec, to Kyoto on 6 Dec."""
    olivia = user("olivia@example.com", name="Olivia", created=LONG_AGO)
    paolo = user("paolo@example.com", name="Paolo", created=LONG_AGO)
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, [olivia, paolo])
        s.flush()
        for name, start in (("Lisbon", dt.date(2026, 12, 5)), ("Kyoto", dt.date(2026, 12, 6))):
            t = trip(name, olivia, start, destination=name, created=LONG_AGO)
            s.add(t)
            s.flush()
            s.add_all([TripParticipant(trip_id=t.id, user_id=olivia.id, role="admin",
                                       invitation_status="accepted", created_at=LONG_AGO),
                       TripParticipant(trip_id=t.id, user_id=paolo.id, role="member",
                                       invitation_status="accepted", created_at=LONG_AGO)])


def _message_to(sink: SmtpSink, address: str) -> EmailMessage:
    [message] = [m for m in sink.messages() if m["To"] == address]
    return message


def _one_click(message: EmailMessage) -> httpx.Response:
    """What a mail client's unsubscribe button does (RFC 8058 section 3.2)."""
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(message["List-Unsubscribe"]).strip("<>")
    return httpx.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=30)


def test_an_unsubscribed_traveller_gets_no_further_reminder(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        service: UvicornProcess) -> None:
    _two_trips(engine)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, unsubscribe_secret=KEY,
                             service_base_url=service.url)
    clock = FixedClock(DAY_ONE)
    first = Runner(settings, engine, clock=clock).run("trip-reminders", trigger="cli")
    assert first.records_processed == 2
    message = _message_to(smtp_sink, "paolo@example.com")
    link = str(message["List-Unsubscribe"]).strip("<>")
    assert link.startswith(f"{service.url}/unsubscribe?token=")

    # A mail scanner opening the link changes nothing...
    scanned = httpx.get(link, timeout=30)
    assert scanned.status_code == 200 and "Stop receiving trip reminders?" in scanned.text
    assert rows(engine, "SELECT count(*) FROM cron_email_opt_out") == [(0,)]
    # ...Paolo's mail client's one-click button does.
    clicked = _one_click(message)
    assert clicked.status_code == 200, clicked.text
    assert "You are unsubscribed from trip reminders" in clicked.text

    clock.advance(days=1)  # the Kyoto trip's reminders
    second = Runner(settings, engine, clock=clock).run("trip-reminders", trigger="cli")
    assert second.status == "success", second.message
    assert "1 sent" in second.message and "1 opted out" in second.message
    assert recipients(smtp_sink) == {"olivia@example.com": 2, "paolo@example.com": 1}
    assert second.details["skipped"] == {"unsubscribed": 1}


def test_a_reminder_planned_before_the_click_is_withdrawn_not_sent(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        service: UvicornProcess) -> None:
    """A run that stopped after planning left Paolo's reminder pending; he unsubscribes
    (from every list) before the next run sends it."""
    _two_trips(engine)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, unsubscribe_secret=KEY,
                             service_base_url=service.url)
    stopped = JobContext(settings=settings, engine=engine, now=DAY_ONE, run_id=uuid.uuid4(),
                         task="trip-reminders")
    notify.plan(stopped, trip_reminders.KIND,
                trip_reminders._planned(stopped, trip_reminders.target_date(stopped),
                                        Screen(trip_reminders.KIND), []), notify.Tally())
    paolo = rows(engine, "SELECT user_id FROM cron_notification WHERE recipient = :r",
                 r="paolo@example.com")[0][0]
    page_link = Links(settings).url("trip_reminder", uuid.UUID(str(paolo)))
    everything = httpx.post(page_link, data={"List-Unsubscribe": "One-Click", "scope": "all",
                                             "via": "page"}, timeout=30)
    assert everything.status_code == 200, everything.text

    outcome = Runner(settings, engine, clock=FixedClock(DAY_ONE + dt.timedelta(minutes=10))
                     ).run("trip-reminders", trigger="cli")
    assert outcome.status == "success", outcome.message
    assert outcome.details["withdrawn"] == 1
    assert recipients(smtp_sink) == {"olivia@example.com": 1}
    assert rows(engine, "SELECT status FROM cron_notification WHERE recipient = :r",
                r="paolo@example.com") == [("expired",)]

    # Unsubscribed from everything: no "we miss you" email either, a month on.
    month = Runner(settings, engine, clock=FixedClock(dt.datetime(2027, 3, 1, 5, 1,
                                                                   tzinfo=dt.UTC)))
    engagement = month.run("user-engagement", trigger="cli")
    assert engagement.details["skipped"] == {"unsubscribed": 1}
    assert recipients(smtp_sink)["paolo@example.com"] == 0
