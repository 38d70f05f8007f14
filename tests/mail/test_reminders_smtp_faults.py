"""An unreliable SMTP server never makes trip-reminders send twice or drop silently."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.core.runner import Runner
from tests.conftest import FixedClock, make_settings, rows
from tests.support.notification_data import ScriptedSmtp, recipients, seed_travellers

NOW = dt.datetime(2026, 11, 28, 8, 0, 20, tzinfo=dt.UTC)
START = dt.date(2026, 12, 5)

ScriptedFactory = Callable[..., ScriptedSmtp]


@pytest.fixture
def scripted_smtp() -> Iterator[ScriptedFactory]:
    servers: list[ScriptedSmtp] = []

    def factory(**script: Any) -> ScriptedSmtp:
        server = ScriptedSmtp(**script).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def _runner(engine: Engine, db_url: str, tmp_path: Path, server: ScriptedSmtp,
            **overrides: Any) -> Runner:
    settings = make_settings(db_url, tmp_path, **server.settings, mail_retry_wait=0.0,
                             **overrides)
    return Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)


def test_a_connection_dropped_mid_batch_is_retried_without_duplicates(
        engine: Engine, db_url: str, tmp_path: Path, scripted_smtp: ScriptedFactory) -> None:
    people = seed_travellers(engine, START, NOW, 10)
    server = scripted_smtp(drop_on_mail={4, 8})
    outcome = _runner(engine, db_url, tmp_path, server).run("trip-reminders")

    assert outcome.status == "success", outcome.message
    got = recipients(server)
    assert set(got) == people and set(got.values()) == {1}
    assert server.connections == 3  # reconnected after each drop
    assert rows(engine, "SELECT status, count(*) FROM cron_notification GROUP BY status") == [
        ("sent", 10)]


def test_a_temporary_refusal_is_retried(engine: Engine, db_url: str, tmp_path: Path,
                                        scripted_smtp: ScriptedFactory) -> None:
    people = seed_travellers(engine, START, NOW, 4)
    server = scripted_smtp(tempfail_rcpt={"traveller0002@example.com"})
    outcome = _runner(engine, db_url, tmp_path, server).run("trip-reminders")

    assert outcome.status == "success", outcome.message
    got = recipients(server)
    assert set(got) == people and set(got.values()) == {1}


def test_a_permanently_refused_recipient_is_recorded_and_skipped(
        engine: Engine, db_url: str, tmp_path: Path, scripted_smtp: ScriptedFactory) -> None:
    people = seed_travellers(engine, START, NOW, 5)
    server = scripted_smtp(reject_rcpt={"traveller0001@example.com"})
    runner = _runner(engine, db_url, tmp_path, server)
    outcome = runner.run("trip-reminders")
    again = runner.run("trip-reminders")

    assert outcome.status == "warning"
    assert "4 sent, 1 failed" in outcome.message
    assert set(recipients(server)) == people - {"traveller0001@example.com"}
    failed = rows(engine, "SELECT recipient, error FROM cron_notification "
                          "WHERE status = 'failed'")
    assert [r[0] for r in failed] == ["traveller0001@example.com"]
    assert "550" in failed[0][1]
    assert again.records_processed == 0 and sum(recipients(server).values()) == 4


def test_a_lost_reply_after_the_message_is_unconfirmed_and_never_resent(
        engine: Engine, db_url: str, tmp_path: Path, scripted_smtp: ScriptedFactory) -> None:
    people = seed_travellers(engine, START, NOW, 6)
    server = scripted_smtp(drop_after_data={3})
    runner = _runner(engine, db_url, tmp_path, server)
    outcome = runner.run("trip-reminders")
    again = runner.run("trip-reminders")

    assert outcome.status == "warning"
    assert "5 sent, 0 failed, 1 unconfirmed" in outcome.message
    got = recipients(server)
    assert set(got) == people and set(got.values()) == {1}
    assert again.records_processed == 0
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status = 'unconfirmed'") == [(1,)]


def test_when_mail_retries_run_out_the_runner_retry_finishes_the_batch(
        engine: Engine, db_url: str, tmp_path: Path, scripted_smtp: ScriptedFactory) -> None:
    people = seed_travellers(engine, START, NOW, 8)
    server = scripted_smtp(drop_on_mail={3, 4})  # message 3 fails twice in a row
    outcome = _runner(engine, db_url, tmp_path, server, mail_max_attempts=2).run(
        "trip-reminders")

    assert outcome.status == "success", outcome.message
    assert outcome.attempts == 2
    got = recipients(server)
    assert set(got) == people and set(got.values()) == {1}
    log = rows(engine, "SELECT attempts, records_processed FROM cron_job_log")
    assert log == [(2, 8)]  # two attempts, one run, eight emails
