"""user-engagement: the exact inactive set, one email per inactivity period, monthly metrics.

Activity is Supabase's `auth.users.last_sign_in_at`; `users.last_login` stays at sign-up,
as the app leaves it (tests/support/notification_data.py).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.core.runner import Runner
from app.models import AuthUser, Expense, TripMedia, TripParticipant, User
from tests.conftest import FixedClock, JobRun, make_settings, rows
from tests.support.notification_data import add_people, recipients, trip, user
from tests.support.servers import SmtpSink

# The 1 December 05:00 slot; 90 days of inactivity means last seen before 2 September.
SLOT = dt.datetime(2026, 12, 1, 5, 0, 0, tzinfo=dt.UTC)
NOW = SLOT + dt.timedelta(seconds=40)


def ago(days: float) -> dt.datetime:
    return SLOT - dt.timedelta(days=days)


def _seed(engine: Engine) -> dict[str, User]:
    people = {
        "active": user("active@example.com", last_login=ago(10), created=ago(400)),
        "sleeper": user("sleeper@example.com", name="Sam Sleeper", last_login=ago(120),
                        created=ago(400)),
        "sleeper_it": user("dormiglione@example.com", name="Dora", last_login=ago(200),
                           prefs={"language": "it"}, created=ago(400)),
        "never_old": user("never-old@example.com", created=ago(150)),
        "never_new": user("never-new@example.com", created=ago(20)),
        "trip_owner": user("owner@example.com", last_login=ago(120), created=ago(400)),
        "joined": user("joined@example.com", last_login=ago(120), created=ago(400)),
        "spender": user("spender@example.com", last_login=ago(120), created=ago(400)),
        "photographer": user("photo@example.com", last_login=ago(100), created=ago(400)),
        "old_activity": user("old-activity@example.com", last_login=ago(300),
                             created=ago(400)),
        "opted_out": user("optout@example.com", last_login=ago(150),
                          prefs={"email_notifications": False}, created=ago(400)),
        "boundary": user("boundary@example.com", last_login=ago(89.9), created=ago(400)),
    }
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, list(people.values()))
        s.flush()
        recent = trip("Recent", people["trip_owner"], dt.date(2027, 3, 1), created=ago(200))
        recent.updated_at = ago(5)
        ancient = trip("Ancient", people["old_activity"], dt.date(2026, 5, 1),
                       created=ago(250))
        s.add_all([recent, ancient])
        s.flush()
        s.add_all([
            TripParticipant(trip_id=recent.id, user_id=people["joined"].id,
                            invitation_status="accepted", created_at=ago(30)),
            Expense(trip_id=ancient.id, amount=Decimal("12.00"), currency="EUR",
                    paid_by=people["spender"].id, created_at=ago(10), updated_at=ago(10)),
            TripMedia(trip_id=ancient.id, user_id=people["photographer"].id, type="image",
                      url="https://x.example/storage/v1/object/public/trip-media/a.jpg",
                      created_at=ago(3)),
        ])
    return people


INACTIVE = {"sleeper@example.com", "dormiglione@example.com", "never-old@example.com",
            "old-activity@example.com", "optout@example.com"}
EMAILED = INACTIVE - {"optout@example.com"}


@pytest.fixture
def mailing(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    """The settings of every run here: mail goes to the aiosmtpd sink."""
    return make_settings(db_url, tmp_path, **smtp_sink.settings)


def _metrics(engine: Engine) -> list[tuple[object, ...]]:
    return [(str(r[0])[:10], *r[1:]) for r in rows(
        engine, "SELECT month, active_users, inactive_users, emails_sent, emails_failed, "
                "opted_out, returned_users FROM cron_engagement_metrics ORDER BY month")]


def test_exactly_the_inactive_users_get_one_email(engine: Engine, db_url: str,
                                                  tmp_path: Path, smtp_sink: SmtpSink,
                                                  run_job: JobRun, mailing: Settings) -> None:
    _seed(engine)
    outcome = run_job("user-engagement", mailing, at=NOW, trigger="vercel")

    assert outcome.status == "success", outcome.message  # type: ignore[attr-defined]
    got = recipients(smtp_sink)
    assert set(got) == EMAILED and set(got.values()) == {1}
    subjects = {str(m["To"]): str(m["Subject"]) for m in smtp_sink.messages()}
    assert subjects["dormiglione@example.com"] == "Ci manchi su VoyageSmart, Dora"
    assert subjects["sleeper@example.com"] == "We miss you on VoyageSmart, Sam Sleeper"
    assert _metrics(engine) == [("2026-12-01", 7, 5, 4, 0, 1, 0)]


def test_a_second_run_in_the_same_period_sends_nothing(engine: Engine, db_url: str,
                                                       tmp_path: Path,
                                                       smtp_sink: SmtpSink,
                                                       run_job: JobRun, mailing: Settings) -> None:
    _seed(engine)
    run_job("user-engagement", mailing, at=NOW, trigger="vercel")
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    again = Runner(settings, engine, clock=FixedClock(NOW + dt.timedelta(hours=1))).run(
        "user-engagement", trigger="cli")

    assert again.records_processed == 0
    assert "4 already emailed this inactivity period" in again.message
    assert sum(recipients(smtp_sink).values()) == 4
    assert _metrics(engine) == [("2026-12-01", 7, 5, 4, 0, 1, 0)]


def test_sleeping_users_are_not_emailed_every_month_and_returns_are_counted(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun,
        mailing: Settings) -> None:
    people = _seed(engine)
    run_job("user-engagement", mailing, at=NOW, trigger="vercel")
    with Session(engine) as s, s.begin():  # Sam reads the email and signs in again
        s.get(AuthUser, people["sleeper"].id).last_sign_in_at = dt.datetime(  # type: ignore[union-attr]
            2026, 12, 10, tzinfo=dt.UTC)

    january = run_job("user-engagement", mailing,
                      at=dt.datetime(2027, 1, 1, 5, 0, 30, tzinfo=dt.UTC), trigger="vercel")
    # Only the user who crossed 90 days during December; December's sleepers not again.
    assert january.records_processed == 1  # type: ignore[attr-defined]
    got = recipients(smtp_sink)
    assert set(got) == EMAILED | {"boundary@example.com"} and set(got.values()) == {1}
    assert _metrics(engine)[1][0] == "2027-01-01"
    assert _metrics(engine)[1][6] == 1  # Sam came back after the December email

    # Sam falls asleep again: a new inactivity period, a new email (and only to Sam).
    april = run_job("user-engagement", mailing, at=dt.datetime(2027, 4, 1, 5, 0, 30, tzinfo=dt.UTC),
                    trigger="vercel")
    # By April everyone's activity is older than 90 days: the six newly asleep get their
    # first email, Sam a second one, the users still asleep since December nothing.
    assert april.records_processed == 7  # type: ignore[attr-defined]
    got = recipients(smtp_sink)
    assert got["sleeper@example.com"] == 2
    assert {k for k, v in got.items() if v == 2} == {"sleeper@example.com"}


def test_dry_run_counts_without_sending_or_storing(engine: Engine, db_url: str,
                                                   tmp_path: Path,
                                                   smtp_sink: SmtpSink, run_job: JobRun,
                                                   mailing: Settings) -> None:
    _seed(engine)
    outcome = run_job("user-engagement", mailing, at=NOW, trigger="vercel", dry_run=True)

    assert outcome.message.startswith("5 inactive users; would email 4")  # type: ignore[attr-defined]
    assert smtp_sink.messages() == []
    assert _metrics(engine) == []
    assert rows(engine, "SELECT count(*) FROM cron_notification") == [(0,)]


def test_unknown_language_falls_back_to_english(engine: Engine, db_url: str, tmp_path: Path,
                                                smtp_sink: SmtpSink, run_job: JobRun,
                                                mailing: Settings) -> None:
    with Session(engine) as s, s.begin():
        add_people(s, [user("kim@example.com", name="Kim", prefs={"language": "ko"},
                            created=ago(300), last_login=ago(200))])
    run_job("user-engagement", mailing, at=NOW, trigger="vercel")
    [message] = smtp_sink.messages()
    assert message["Subject"] == "We miss you on VoyageSmart, Kim"
    assert message["List-Unsubscribe"] is not None


def test_activity_is_the_last_sign_in_not_the_last_login_column(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun,
        mailing: Settings) -> None:
    """The app never updates users.last_login: a user who signed in yesterday is active,
    whatever that column says."""
    with Session(engine) as s, s.begin():
        add_people(s, [user("regular@example.com", created=ago(400), last_login=ago(1)),
                       user("gone@example.com", created=ago(400), last_login=ago(200))])
    outcome = run_job("user-engagement", mailing, at=NOW, trigger="vercel")
    assert outcome.status == "success", outcome.message  # type: ignore[attr-defined]
    assert outcome.details["activity_source"] == "auth.users.last_sign_in_at"  # type: ignore[attr-defined]
    assert set(recipients(smtp_sink)) == {"gone@example.com"}
    assert rows(engine, "SELECT count(*) FROM users WHERE last_login < :t", t=ago(300)) == [
        (2,)]


def test_without_auth_users_it_falls_back_to_last_login_with_a_warning(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun,
        mailing: Settings) -> None:
    with Session(engine) as s, s.begin():
        add_people(s, [user("regular@example.com", created=ago(400), last_login=ago(1))])
        s.get(User, s.query(User.id).scalar()).last_login = ago(1)  # type: ignore[union-attr]
    with engine.begin() as conn:  # a database where auth.users is not there to read
        conn.exec_driver_sql("ALTER TABLE auth.users RENAME COLUMN last_sign_in_at "
                             "TO signed_in")
    try:
        outcome = run_job("user-engagement", mailing, at=NOW, trigger="vercel")
    finally:  # the PostgreSQL database is shared by the session
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE auth.users RENAME COLUMN signed_in "
                                 "TO last_sign_in_at")
    assert outcome.status == "warning"  # type: ignore[attr-defined]
    assert "users.last_login" in outcome.message  # type: ignore[attr-defined]
    assert outcome.details["activity_source"] == "users.last_login"  # type: ignore[attr-defined]
    assert recipients(smtp_sink) == {}
