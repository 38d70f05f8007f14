"""The hand-over cursor: what a dead run left is read off it, and a closed run cannot send.

These set the database to the exact state a crash leaves (a fault at a precise moment no
local server can produce on demand), then let the real job and a real SMTP server finish.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.context import JobContext
from app.core.runner import Runner
from app.db import table_of
from app.jobs import trip_reminders
from app.mail.handover import handover_log
from app.mail.recipients import Screen
from app.models import CronJobLog, CronNotification
from tests.conftest import FixedClock, make_settings, rows
from tests.support.notification_data import ScriptedSmtp, recipients, seed_travellers
from tests.support.servers import SmtpSink

NOW = dt.datetime(2026, 11, 28, 8, 0, 20, tzinfo=dt.UTC)
START = dt.date(2026, 12, 5)
log_t = table_of(CronJobLog)
notes = table_of(CronNotification)


def _log_row(engine: Engine, run_id: uuid.UUID, status: str, cursor: int | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(log_t.insert().values(
            run_id=run_id, job_name="trip-reminders", trigger="test", started_at=NOW,
            status=status, records_processed=0, attempts=1, dry_run=False,
            mail_cursor=cursor))


def _plan_only(engine: Engine, db_url: str, tmp_path: Path, run_id: uuid.UUID) -> list[int]:
    """Plan the reminders as `run_id` would (rows claimed by it), send nothing."""
    settings = make_settings(db_url, tmp_path)
    ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=run_id,
                     task="trip-reminders", slot=NOW.replace(second=0))
    from app.mail import delivery as notifications

    notifications.plan(ctx, trip_reminders.KIND,
                       trip_reminders._planned(ctx, trip_reminders.target_date(ctx),
                                                  Screen(trip_reminders.KIND), []),
                       notifications.Tally())
    return [r[0] for r in rows(engine, "SELECT id FROM cron_notification ORDER BY id")]


def test_a_dead_runs_batch_is_read_off_its_cursor(engine: Engine, db_url: str,
                                                  tmp_path: Path, smtp_sink: SmtpSink) -> None:
    people = seed_travellers(engine, START, NOW, 10)
    dead = uuid.uuid4()
    ids = _plan_only(engine, db_url, tmp_path, dead)
    by_id = dict(rows(engine, "SELECT id, recipient FROM cron_notification"))
    # The dead run had its 250 for ids[0..3], was handing over ids[4] when it died.
    _log_row(engine, dead, "abandoned", cursor=ids[4])
    already = {by_id[i] for i in ids[:5]}  # what the server holds (ids[4] maybe, say yes)

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, mail_retry_wait=0.0)
    outcome = Runner(settings, engine, clock=FixedClock(NOW)).run("trip-reminders")

    assert outcome.status == "warning", outcome.message  # the in-flight one is reported
    assert "5 sent" in outcome.message and "1 unconfirmed" in outcome.message
    got = recipients(smtp_sink)
    assert set(got) == people - already and set(got.values()) == {1}
    statuses = dict(rows(engine, "SELECT id, status FROM cron_notification"))
    assert [statuses[i] for i in ids] == ["sent"] * 4 + ["unconfirmed"] + ["sent"] * 5
    assert rows(engine, "SELECT mail_cursor FROM cron_job_log WHERE status = 'abandoned'"
                ) == [(None,)]


def test_a_dead_run_that_handed_nothing_over_leaves_everything_to_send(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    people = seed_travellers(engine, START, NOW, 4)
    dead = uuid.uuid4()
    _plan_only(engine, db_url, tmp_path, dead)
    _log_row(engine, dead, "abandoned", cursor=None)

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    outcome = Runner(settings, engine, clock=FixedClock(NOW)).run("trip-reminders")

    assert outcome.status == "success", outcome.message
    assert set(recipients(smtp_sink)) == people


def test_rows_of_a_run_still_running_elsewhere_are_left_alone(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    seed_travellers(engine, START, NOW, 3)
    other = uuid.uuid4()
    _plan_only(engine, db_url, tmp_path, other)
    _log_row(engine, other, "running")

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=uuid.uuid4(),
                     task="trip-reminders", slot=NOW.replace(second=0))
    result = trip_reminders.run(ctx)

    assert recipients(smtp_sink) == {}
    assert result.details["resumed"] == 3  # known, owned by the live run
    assert rows(engine, "SELECT DISTINCT status FROM cron_notification") == [("pending",)]


def test_the_cursor_write_is_refused_once_the_run_is_no_longer_running(
        engine: Engine) -> None:
    run_id = uuid.uuid4()
    _log_row(engine, run_id, "running")
    with handover_log(engine, run_id) as log:
        assert log.claim(41).result() is True
        assert rows(engine, "SELECT mail_cursor FROM cron_job_log") == [(41,)]
        with engine.begin() as conn:
            conn.execute(log_t.update().values(status="abandoned"))
        assert log.claim(42).result() is False
    assert rows(engine, "SELECT mail_cursor FROM cron_job_log") == [(41,)]


def test_a_run_closed_as_abandoned_under_it_stops_and_the_next_run_finishes(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """A hung run whose lease expired is closed by the runner; it must not send more."""
    server = ScriptedSmtp(delay=0.05).start()
    try:
        people = seed_travellers(engine, START, NOW, 20)
        slow = uuid.uuid4()
        _log_row(engine, slow, "running")
        settings = make_settings(db_url, tmp_path, **server.settings, mail_retry_wait=0.0)
        ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=slow,
                         task="trip-reminders", slot=NOW.replace(second=0))
        results = []
        worker = threading.Thread(target=lambda: results.append(trip_reminders.run(ctx)))
        worker.start()
        deadline = time.monotonic() + 30
        while server.datas < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        with engine.begin() as conn:  # what the runner does to a run past its lease
            conn.execute(log_t.update().where(log_t.c.run_id == slow)
                         .values(status="abandoned", ended_at=NOW))
        worker.join(30)
        first = recipients(server)
        assert results and results[0].status == "warning"
        assert results[0].details["taken_by_other_run"] > 0
        assert 5 <= sum(first.values()) < 20

        server.delay = 0.0
        later = Runner(settings, engine, clock=FixedClock(NOW)).run("trip-reminders")
        got = recipients(server)
    finally:
        server.stop()
    assert later.status in ("success", "warning"), later.message
    assert set(got) == people and set(got.values()) == {1}
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status NOT IN ('sent', 'unconfirmed')") == [(0,)]


def test_planned_rows_start_claimed_by_their_run_and_stay_so(engine: Engine, db_url: str,
                                                              tmp_path: Path) -> None:
    """Sending what a run planned costs it no claiming write, even after settling."""
    from app.mail import delivery as notifications

    seed_travellers(engine, START, NOW, 3)
    run_id = uuid.uuid4()
    _log_row(engine, run_id, "running")
    _plan_only(engine, db_url, tmp_path, run_id)
    ctx = JobContext(settings=make_settings(db_url, tmp_path), engine=engine, now=NOW,
                     run_id=run_id, task="trip-reminders")
    notifications.resolve_unknown(ctx, trip_reminders.KIND, notifications.Tally())
    with engine.connect() as conn:
        owners = set(conn.execute(sa.select(notes.c.run_id)).scalars())
    assert owners == {run_id}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_lost_database_connection_mid_batch_is_retried_without_duplicates(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """PostgreSQL drops the hand-over connection mid-batch (a restart, a failover)."""
    server = ScriptedSmtp(delay=0.02).start()
    try:
        people = seed_travellers(engine, START, NOW, 30)
        settings = make_settings(db_url, tmp_path, **server.settings, mail_retry_wait=0.0)
        runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)
        outcomes = []
        worker = threading.Thread(target=lambda: outcomes.append(runner.run("trip-reminders")))
        worker.start()
        deadline = time.monotonic() + 30
        while server.datas < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed = rows(engine, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() "
                              "AND query LIKE '%vsc_mail_handover%' AND pid <> pg_backend_pid()")
        worker.join(60)
        got = recipients(server)
    finally:
        server.stop()
    assert killed == [(True,)]
    outcome = outcomes[0]
    assert outcome.status in ("success", "warning"), outcome.message
    assert outcome.attempts == 2
    assert set(got) == people and set(got.values()) == {1}
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status NOT IN ('sent', 'unconfirmed')") == [(0,)]
