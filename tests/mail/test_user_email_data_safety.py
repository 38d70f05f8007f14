"""User emails whatever the data and the settings (issue 11): one bad row is that row's
problem, mass email has a brake, a dry run predicts the real run exactly.

Every case runs on SQLite and on PostgreSQL, with the aiosmtpd sink as the mail server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import ConfigError, load_settings
from app.core.runner import RunOutcome
from app.db import table_of
from app.models import CronNotification, TripParticipant, User
from tests.conftest import JobRun, make_settings, rows
from tests.support.notification_data import add_people, recipients, trip, user
from tests.support.servers import SmtpSink

# trip-reminders: the 08:00 slot of 28 Nov; trips starting 5 Dec are reminded.
REMINDER_RUN = dt.datetime(2026, 11, 28, 8, 0, 30, tzinfo=dt.UTC)
START = dt.date(2026, 12, 5)
# user-engagement: the 1 December 05:00 slot.
ENGAGEMENT_RUN = dt.datetime(2026, 12, 1, 5, 0, 40, tzinfo=dt.UTC)
LONG_AGO = ENGAGEMENT_RUN - dt.timedelta(days=400)

# What VoyageSmart's users.preferences may hold besides an object.
JSON_STRING = '"{\\"email_notifications\\": false}"'  # an object stored as a JSON string
JSON_ARRAY = '["en"]'


def _set_preferences(engine: Engine, email: str, raw_json: str) -> None:
    """Store `raw_json` as the user's preferences, verbatim (jsonb on PostgreSQL)."""
    cast = "CAST(:v AS jsonb)" if engine.dialect.name == "postgresql" else ":v"
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE users SET preferences = {cast} WHERE email = :e"),
                     {"v": raw_json, "e": email})


def _user_id(engine: Engine, email: str) -> str:
    return str(uuid.UUID(str(rows(engine, "SELECT id FROM users WHERE email = :e",
                                  e=email)[0][0])))


def _pending(engine: Engine) -> int:
    return int(rows(engine, "SELECT count(*) FROM cron_notification "
                            "WHERE status = 'pending'")[0][0])


def _seed_trip(engine: Engine, start: dt.date, emails: list[str], *, name: str = "Lisbon"
               ) -> list[User]:
    """A trip starting `start`: the first address owns it, the others accepted."""
    people = [user(e, name=e.split("@")[0].title(), created=REMINDER_RUN) for e in emails]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, people)
        s.flush()
        t = trip(name, people[0], start, created=REMINDER_RUN)
        s.add(t)
        s.flush()
        s.add_all([TripParticipant(trip_id=t.id, user_id=p.id,
                                   role="admin" if i == 0 else "member",
                                   invitation_status="accepted", created_at=REMINDER_RUN)
                   for i, p in enumerate(people)])
    return people


def _sleepers(engine: Engine, emails: list[str]) -> list[User]:
    """Users who signed up long ago and never signed in since (auth.users says NULL)."""
    people = [user(e, created=LONG_AGO) for e in emails]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, people)
    return people


# --- finding 8: one malformed row ---------------------------------------------------------


def test_malformed_preferences_skip_that_traveller_and_remind_everyone_else(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed_trip(engine, START, ["owner@example.com", "text-prefs@example.com",
                               "array-prefs@example.com", "friend@example.com"])
    _seed_trip(engine, START, ["other-owner@example.com"], name="Kyoto")
    _set_preferences(engine, "text-prefs@example.com", JSON_STRING)
    _set_preferences(engine, "array-prefs@example.com", JSON_ARRAY)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)

    outcome = run_job("trip-reminders", settings, at=REMINDER_RUN)

    assert set(recipients(smtp_sink)) == {"owner@example.com", "friend@example.com",
                                          "other-owner@example.com"}
    # Sent, but someone did not get their reminder: the run says so and names them.
    assert outcome.status == "warning", outcome.message
    assert "3 sent" in outcome.message and "2 skipped" in outcome.message
    assert outcome.details["skipped"] == {"unreadable_preferences": 2}
    assert sorted(outcome.details["skipped_users"]["unreadable_preferences"]) == sorted(
        [_user_id(engine, "text-prefs@example.com"),
         _user_id(engine, "array-prefs@example.com")])
    assert "@" not in str(outcome.details["skipped_users"])
    assert _pending(engine) == 0


def test_malformed_preferences_never_leave_engagement_emails_pending(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _sleepers(engine, [f"sleeper{i}@example.com" for i in range(5)]
              + ["text-prefs@example.com", "array-prefs@example.com"])
    _set_preferences(engine, "text-prefs@example.com", JSON_STRING)
    _set_preferences(engine, "array-prefs@example.com", JSON_ARRAY)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)

    first = run_job("user-engagement", settings, at=ENGAGEMENT_RUN)
    second = run_job("user-engagement", settings, at=ENGAGEMENT_RUN + dt.timedelta(hours=1))

    assert first.status == "warning", first.message
    assert first.records_processed == 5 and second.records_processed == 0
    assert set(recipients(smtp_sink)) == {f"sleeper{i}@example.com" for i in range(5)}
    assert sum(recipients(smtp_sink).values()) == 5
    assert first.details["skipped"] == {"unreadable_preferences": 2}
    assert second.details["skipped"] == {"unreadable_preferences": 2}
    assert _pending(engine) == 0


def test_text_that_is_not_json_is_that_users_problem_on_sqlite(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's jsonb cannot hold text that is not JSON")
    _sleepers(engine, ["fine@example.com", "garbled@example.com"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET preferences = '{email_notifications: no' "
                             "WHERE email = 'garbled@example.com'"))
    outcome = run_job("user-engagement", make_settings(db_url, tmp_path, **smtp_sink.settings),
                      at=ENGAGEMENT_RUN)
    assert set(recipients(smtp_sink)) == {"fine@example.com"}
    assert outcome.details["skipped"] == {"unreadable_preferences": 1}


def test_an_address_that_cannot_be_mailed_is_skipped_and_named(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed_trip(engine, START, ["owner@example.com", "no-at-sign.example.com",
                               "zoë@exämple.com", "friend@example.com"])
    outcome = run_job("trip-reminders", make_settings(db_url, tmp_path, **smtp_sink.settings),
                      at=REMINDER_RUN)
    assert set(recipients(smtp_sink)) == {"owner@example.com", "friend@example.com"}
    assert outcome.details["skipped"] == {"invalid_email": 2}
    assert len(outcome.details["skipped_users"]["invalid_email"]) == 2
    assert _pending(engine) == 0


def test_a_pending_email_no_server_can_take_fails_alone(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    """Reminders an earlier run planned and could not send, one to an address SMTP cannot
    carry: that one fails, the others go, and nothing is left pending for ever."""
    people = _seed_trip(engine, START + dt.timedelta(days=3), [
        "a@example.com", "b@example.com", "c@example.com"])
    notes = table_of(CronNotification)
    earlier = REMINDER_RUN - dt.timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [
            {"kind": "trip_reminder", "dedupe_key": f"trip_reminder:7d:t:{p.id}:{START}",
             "user_id": p.id, "recipient": address, "status": "pending", "attempts": 0,
             "created_at": earlier, "updated_at": earlier, "reference_date": START,
             "payload": {"recipient_name": "You", "days_ahead": 7, "language": "en",
                         "trip": {"name": "Lisbon", "destination": "Lisbon",
                                  "start_date": str(START), "end_date": None,
                                  "participants": 3, "url": "https://voyagesmart.app/t"}}}
            for p, address in zip(people, ["a@example.com", "zoë@exämple.com",
                                           "c@example.com"], strict=True)])
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    outcome = run_job("trip-reminders", settings, at=REMINDER_RUN)

    assert outcome.status == "warning", outcome.message
    assert recipients(smtp_sink) == {"a@example.com": 1, "c@example.com": 1}
    assert rows(engine, "SELECT status, error FROM cron_notification WHERE recipient = :r",
                r="zoë@exämple.com") == [("failed", "not an address this service can send to")]
    assert _pending(engine) == 0


# --- finding 6 and the reminders' brake: no mass email without an operator ---------------


def test_engagement_has_a_brake_on_mass_email(engine: Engine, db_url: str, tmp_path: Path,
                                             smtp_sink: SmtpSink, run_job: JobRun) -> None:
    """An app that records no sign-ins: every user looks asleep.  Nobody is emailed until
    an operator forces the run."""
    _sleepers(engine, [f"user{i:03d}@example.com" for i in range(150)])
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)

    dry = run_job("user-engagement", settings, at=ENGAGEMENT_RUN, dry_run=True)
    real = run_job("user-engagement", settings, at=ENGAGEMENT_RUN)

    assert real.status == "error" and real.attempts == 1
    assert real.message.startswith("safety brake: would email inactive users")
    assert "150 of 150" in real.message and "USER_ENGAGEMENT_SEND_BRAKE_SHARE" in real.message
    brake = real.details["brake"]
    assert (brake["affected"], brake["population"], brake["tripped"]) == (150, 150, True)
    assert len(brake["samples"]) == 5 and all(uuid.UUID(s) for s in brake["samples"])
    assert recipients(smtp_sink) == {}
    assert rows(engine, "SELECT count(*) FROM cron_notification") == [(0,)]
    assert rows(engine, "SELECT count(*) FROM cron_engagement_metrics") == [(0,)]
    # The dry run said exactly that.
    assert (dry.status, dry.message) == (real.status, real.message)
    assert dry.details["brake"] == real.details["brake"]

    forced = run_job("user-engagement", settings, at=ENGAGEMENT_RUN, force=True)
    assert forced.status == "success", forced.message
    assert forced.details["brake"]["forced"] is True
    assert sum(recipients(smtp_sink).values()) == 150


def test_engagement_below_its_brake_runs(engine: Engine, db_url: str, tmp_path: Path,
                                         smtp_sink: SmtpSink, run_job: JobRun) -> None:
    """A handful of sleepers among active users: below the share, even above the count."""
    _sleepers(engine, [f"sleeper{i}@example.com" for i in range(3)])
    active = [user(f"active{i}@example.com", created=LONG_AGO,
                   last_login=ENGAGEMENT_RUN - dt.timedelta(days=2)) for i in range(9)]
    with Session(engine) as s, s.begin():
        add_people(s, active)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             user_engagement_send_brake_count=1)
    outcome = run_job("user-engagement", settings, at=ENGAGEMENT_RUN)
    assert outcome.status == "success", outcome.message
    assert outcome.details["brake"] == {
        "step": "email inactive users (re-engagement), of all users", "affected": 3,
        "population": 12, "share_limit": 0.25, "count_limit": 1, "tripped": False,
        "forced": False}
    assert sum(recipients(smtp_sink).values()) == 3


@pytest.mark.parametrize("days", ["3", "29", "0"])
def test_an_absurd_inactivity_period_is_refused_at_startup(
        monkeypatch: pytest.MonkeyPatch, days: str) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("INACTIVITY_DAYS", days)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "INACTIVITY_DAYS:" in message and "30" in message and "\n" not in message


def _history(engine: Engine, day: dt.date, per_day: list[int]) -> None:
    """Reminders earlier runs planned for the days before `day` (oldest first)."""
    notes = table_of(CronNotification)
    first = day - dt.timedelta(days=len(per_day))
    values = []
    for offset, count in enumerate(per_day):
        ref = first + dt.timedelta(days=offset)
        values += [{"kind": "trip_reminder", "dedupe_key": f"trip_reminder:old:{ref}:{k}",
                    "user_id": uuid.uuid4(), "recipient": f"old{k}@example.com",
                    "status": "sent", "attempts": 1, "reference_date": ref,
                    "created_at": REMINDER_RUN, "updated_at": REMINDER_RUN}
                   for k in range(count)]
    if values:
        with engine.begin() as conn:
            conn.execute(notes.insert(), values)


def test_reminders_without_history_brake_on_the_count(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed_trip(engine, START, [f"t{i}@example.com" for i in range(8)])
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             trip_reminders_send_brake_count=5)

    dry = run_job("trip-reminders", settings, at=REMINDER_RUN, dry_run=True)
    real = run_job("trip-reminders", settings, at=REMINDER_RUN)

    assert real.status == "error"
    assert real.message.startswith("safety brake: would email trip reminders for trips "
                                   "starting 2026-12-05 (usual volume 0")
    assert "TRIP_REMINDERS_SEND_BRAKE_COUNT" in real.message
    assert real.details["brake"]["affected"] == 8
    assert all(s.startswith("trip_reminder:7d:") for s in real.details["brake"]["samples"])
    assert (dry.status, dry.message) == (real.status, real.message)
    assert dry.details["brake"] == real.details["brake"]
    assert recipients(smtp_sink) == {}
    assert rows(engine, "SELECT count(*) FROM cron_notification") == [(0,)]


def test_reminders_brake_against_the_days_usual_volume(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    """Four a day as a rule (a quiet day now and then): twelve is fine, twenty is not."""
    _history(engine, START, [4, 5, 0, 4, 3, 4] * 4 + [4, 4, 6, 4])
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             trip_reminders_send_brake_count=10,
                             trip_reminders_send_brake_share=3)
    _seed_trip(engine, START, [f"big{i:02d}@example.com" for i in range(20)])

    braked = run_job("trip-reminders", settings, at=REMINDER_RUN)
    assert braked.status == "error"
    assert "(usual volume 4: the median per day of the last 28 days)" in braked.message
    assert "20 of 4" in braked.message
    assert recipients(smtp_sink) == {}

    with engine.begin() as conn:  # eight travellers cancel: twelve left, three times usual
        conn.execute(sa.text("DELETE FROM trip_participants WHERE user_id IN (SELECT id "
                             "FROM users WHERE email >= 'big12@example.com')"))
    fine = run_job("trip-reminders", settings, at=REMINDER_RUN + dt.timedelta(minutes=5))
    assert fine.status == "success", fine.message
    assert fine.details["brake"]["usual_volume"] == 4
    assert sum(recipients(smtp_sink).values()) == 12


# --- the dry run predicts the real run ---------------------------------------------------


def _comparable(outcome: RunOutcome) -> dict[str, Any]:
    details = outcome.details
    return {"records": outcome.records_processed, "status": outcome.status,
            "skipped": details["skipped"], "skipped_users": details["skipped_users"],
            "brake": details["brake"], "opted_out": details.get("opted_out",
                                                                details.get("metrics", {})
                                                                .get("opted_out"))}


def test_a_dry_run_of_trip_reminders_predicts_the_real_run(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _seed_trip(engine, START, ["owner@example.com", "friend@example.com",
                               "text-prefs@example.com", "quiet@example.com",
                               "bad-address", "ok@example.com"])
    _set_preferences(engine, "text-prefs@example.com", JSON_STRING)
    _set_preferences(engine, "quiet@example.com", '{"email_notifications": false}')
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)

    dry = run_job("trip-reminders", settings, at=REMINDER_RUN, dry_run=True)
    real = run_job("trip-reminders", settings, at=REMINDER_RUN)

    assert _comparable(dry) == _comparable(real)
    assert real.records_processed == 3 == sum(recipients(smtp_sink).values())
    assert real.details["skipped"] == {"unreadable_preferences": 1, "opted_out": 1,
                                       "invalid_email": 1}


def test_a_dry_run_of_user_engagement_predicts_the_real_run(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun) -> None:
    _sleepers(engine, ["a@example.com", "b@example.com", "array-prefs@example.com",
                       "quiet@example.com", "not-an-address@"])
    _set_preferences(engine, "array-prefs@example.com", JSON_ARRAY)
    _set_preferences(engine, "quiet@example.com", '{"email_notifications": "no"}')
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)

    dry = run_job("user-engagement", settings, at=ENGAGEMENT_RUN, dry_run=True)
    real = run_job("user-engagement", settings, at=ENGAGEMENT_RUN)

    assert _comparable(dry) == _comparable(real)
    assert dry.details["metrics"] == real.details["metrics"]
    assert real.records_processed == 2 == sum(recipients(smtp_sink).values())
    assert real.details["skipped"] == {"unreadable_preferences": 1, "opted_out": 1,
                                       "invalid_email": 1}


def test_a_row_without_an_address_is_skipped_and_named() -> None:
    """VoyageSmart's `users.email` is NOT NULL, but a database that is not quite that shape
    (or a participant row joined to nothing) must not stop the run either."""
    from types import SimpleNamespace

    from app.mail.recipients import Screen

    screen = Screen("trip_reminder")
    base = {"unsubscribed": False, "preferences_readable": True, "preferences": None}
    verdicts = [screen.admit(SimpleNamespace(**base, user_id=f"u{i}", email=email))
                for i, email in enumerate([None, "  ", "ok@example.com"])]
    assert verdicts == [False, False, True]
    assert screen.as_dict() == {"skipped": {"no_email": 2},
                                "skipped_users": {"no_email": ["u0", "u1"]}}
