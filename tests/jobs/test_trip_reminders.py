"""trip-reminders against a real SMTP server: who gets what, once, on both databases."""

from __future__ import annotations

import datetime as dt
import uuid
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.engine import Engine

from app.core.context import JobContext
from app.core.runner import Runner
from app.jobs.trip_reminders import target_date
from app.mail.unsubscribe import Links
from tests.conftest import FixedClock, make_settings, rows
from tests.support.notification_data import recipients, seed_reminders
from tests.support.servers import SmtpSink

# The 08:00 slot of 28 Nov, fired two hours late (GitHub Actions can be that late).
LATE = dt.datetime(2026, 11, 28, 10, 5, tzinfo=dt.UTC)
START = dt.date(2026, 12, 5)


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def test_the_right_people_get_exactly_one_reminder(engine: Engine, db_url: str,
                                                   tmp_path: Path, smtp_sink: SmtpSink) -> None:
    world = seed_reminders(engine, START, LATE)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             app_base_url="https://app.example.com",
                             service_base_url="https://cron.example.com")
    outcome = Runner(settings, engine, clock=FixedClock(LATE)).run(
        "trip-reminders", trigger="github-actions")

    assert outcome.status == "success", outcome.message
    got = recipients(smtp_sink)
    assert set(got) == world.expected
    assert all(n == 1 for n in got.values())
    assert "3 sent" in outcome.message and "1 opted out" in outcome.message

    by_rcpt = {str(m["To"]): m for m in smtp_sink.messages()}
    english = by_rcpt["owner@example.com"]
    assert english["Subject"] == "Lisbon with friends starts in 7 days"
    # The owner's own one-click link (RFC 8058), also in the footer.
    link = Links(settings).url("trip_reminder", world.owner_id)
    assert link.startswith("https://cron.example.com/unsubscribe?token=")
    assert english["List-Unsubscribe"] == f"<{link}>"
    assert english["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = _body(english, "plain"), _body(english, "html")
    assert link in text and link in html
    for needle in ("Lisbon with friends", "Lisbon", "2026-12-05", "2026-12-11",
                   f"https://app.example.com/trips/{world.trip_id}"):
        assert needle in text and needle in html
    # Owner, friend, both and the opted-out traveller (who travels, just without email).
    assert "Travellers:   4" in text
    italian = by_rcpt["friend@example.com"]
    assert italian["Subject"] == "Lisbon with friends inizia tra 7 giorni"
    assert "Ciao Franco Amico" in _body(italian, "plain")


def test_running_twice_sends_nothing_more(engine: Engine, db_url: str, tmp_path: Path,
                                          smtp_sink: SmtpSink) -> None:
    seed_reminders(engine, START, LATE)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    clock = FixedClock(LATE)
    first = Runner(settings, engine, clock=clock).run("trip-reminders", trigger="cli")
    clock.advance(minutes=5)
    second = Runner(settings, engine, clock=clock).run("trip-reminders", trigger="cli")
    duplicate_slot = Runner(settings, engine, clock=clock).run(
        "trip-reminders", trigger="vercel")
    again = Runner(settings, engine, clock=clock).run("trip-reminders", trigger="vercel")

    assert first.records_processed == 3
    assert second.records_processed == 0 and "3 already sent" in second.message
    assert duplicate_slot.records_processed == 0
    assert again.status == "duplicate"
    assert sum(recipients(smtp_sink).values()) == 3
    assert rows(engine, "SELECT status, count(*) FROM cron_notification GROUP BY status") == [
        ("sent", 3)]


def test_dry_run_reports_and_sends_nothing(engine: Engine, db_url: str, tmp_path: Path,
                                           smtp_sink: SmtpSink) -> None:
    seed_reminders(engine, START, LATE)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    outcome = Runner(settings, engine, clock=FixedClock(LATE)).run(
        "trip-reminders", trigger="cli", dry_run=True)

    assert outcome.records_processed == 3
    assert outcome.message.startswith("would send 3 reminder(s) for trips starting 2026-12-05")
    assert smtp_sink.messages() == []
    assert rows(engine, "SELECT count(*) FROM cron_notification") == [(0,)]


def test_without_smtp_host_reminders_land_in_the_outbox(engine: Engine, db_url: str,
                                                        tmp_path: Path) -> None:
    seed_reminders(engine, START, LATE)
    settings = make_settings(db_url, tmp_path)
    runner = Runner(settings, engine, clock=FixedClock(LATE))
    runner.run("trip-reminders", trigger="cli")
    runner.run("trip-reminders", trigger="cli")

    files = sorted((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(files) == 3
    assert all(b"Lisbon with friends" in f.read_bytes() for f in files)


def test_the_target_day_is_the_slot_day_in_the_cron_time_zone(tmp_path: Path) -> None:
    def day(slot: dt.datetime | None, now: dt.datetime, tz: str) -> dt.date:
        settings = make_settings("sqlite://", tmp_path, cron_timezone=tz)
        ctx = JobContext(settings=settings, engine=None, now=now,  # type: ignore[arg-type]
                         run_id=uuid.uuid4(), task="trip-reminders", slot=slot)
        return target_date(ctx)

    slot = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
    next_day = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
    assert day(slot, next_day, "UTC") == dt.date(2026, 12, 5)  # hours late: slot's day
    assert day(None, next_day, "UTC") == dt.date(2026, 12, 6)  # manual run: today
    assert day(slot, slot, "Pacific/Kiritimati") == dt.date(2026, 12, 5)  # 22:00 local
    late_evening = dt.datetime(2026, 11, 28, 11, 0, tzinfo=dt.UTC)
    assert day(late_evening, late_evening, "Pacific/Kiritimati") == dt.date(2026, 12, 6)
