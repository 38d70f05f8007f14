"""A run bigger than one invocation (FUNCTION_MAX_DURATION): it answers 202 `partial` with
its progress, and the next calls continue the same run under the same log row until the
last answers 200; every traveller gets one reminder.  Real HTTP (uvicorn), real SMTP sink,
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import catch_up
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, CronRunChunk
from tests.conftest import SECRET, FixedClock, auth
from tests.support.chunk_cuts import cut_everywhere
from tests.support.notification_data import recipients, scheduled_reminder_day, seed_travellers
from tests.support.servers import SmtpSink, UvicornProcess

pytestmark = pytest.mark.slow

TRAVELLERS = 2500  # three chunks of 1000 and the closing sweep


@pytest.fixture
def server(db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[UvicornProcess]:
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "SMTP_HOST": smtp_sink.host,
        "SMTP_PORT": str(smtp_sink.port), "SMTP_SECURITY": "none",
        "FUNCTION_MAX_DURATION": "5", "CRON_CATCH_UP": "false",
        "TRIP_REMINDERS_SEND_BRAKE_COUNT": "100000",
    }, cwd=tmp_path).start()
    yield proc
    proc.stop()


def test_a_run_bigger_than_its_budget_finishes_over_calls_once_each(
        server: UvicornProcess, engine: Engine, smtp_sink: SmtpSink) -> None:
    now = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(now),
                               now - dt.timedelta(days=30), TRAVELLERS)
    answers = []
    with httpx.Client(timeout=60) as http:
        for _ in range(20):
            answer = http.post(f"{server.url}/api/cron/trip-reminders",
                               headers={**auth(), "X-Cron-Source": "crontab"})
            answers.append(answer)
            if answer.status_code != 202:
                break

    codes = [a.status_code for a in answers]
    assert len(codes) >= 2 and codes[-1] == 200 and set(codes[:-1]) == {202}, answers[-1].text
    partial = answers[0].json()
    assert partial["status"] == "partial"
    # Chunks are planned stage by stage (count, plan, send), so the total grows.
    assert partial["details"]["chunks_left"] == (partial["details"]["chunks_total"]
                                                 - partial["details"]["chunks_done"])
    # Progress only grows, and a chunk finished is never done again (the totals below).
    done = [a.json()["details"]["chunks_done"] for a in answers[:-1]]
    assert done == sorted(done) and done[-1] >= 1
    assert "continues" in partial["message"]
    # One run: every answer names it, and the run log holds one row for the slot.
    assert {a.json()["run_id"] for a in answers} == {partial["run_id"]}
    final = answers[-1].json()
    assert (final["status"], final["records_processed"]) == ("success", TRAVELLERS)
    got = recipients(smtp_sink)
    assert set(got) == expected and set(got.values()) == {1}

    log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)
    with engine.connect() as conn:
        logged = conn.execute(sa.select(log_t.c.status, log_t.c.chunks_done,
                                        log_t.c.chunks_total, log_t.c.records_processed)
                              .where(log_t.c.job_name == "trip-reminders")).all()
        chunk_states = conn.execute(sa.select(chunk_t.c.status, sa.func.count())
                                    .group_by(chunk_t.c.status)).all()
    # A count chunk, a plan chunk, three id ranges of sends and the closing sweep.
    assert [tuple(row) for row in logged] == [("success", 6, 6, TRAVELLERS)]
    assert [tuple(row) for row in chunk_states] == [("done", 6)]


def test_a_delivery_of_a_finished_slot_is_a_duplicate_not_a_new_run(
        server: UvicornProcess, engine: Engine, smtp_sink: SmtpSink) -> None:
    now = dt.datetime.now(dt.UTC)
    seed_travellers(engine, scheduled_reminder_day(now), now - dt.timedelta(days=30),
                    1200)
    with httpx.Client(timeout=60) as http:
        codes = []
        for _ in range(10):
            answer = http.get(f"{server.url}/api/cron/trip-reminders",
                              headers={**auth(), "User-Agent": "vercel-cron/1.0"})
            codes.append((answer.status_code, answer.json()["status"]))
            if answer.json()["status"] == "duplicate":
                break
    assert codes[-1] == (200, "duplicate") and (200, "success") in codes, codes
    assert all(code == (202, "partial") for code in codes[:codes.index((200, "success"))])
    assert sum(recipients(smtp_sink).values()) == 1200


def test_a_partial_run_left_alone_is_finished_by_the_next_cron_call_of_any_task(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On Vercel alone nothing calls trip-reminders again that day: the next cron call of
    another task continues its paused run, once per call, until it is done."""
    at = dt.datetime.combine(dt.date.today(), dt.time(8, 30), dt.UTC)
    expected = seed_travellers(engine, at.date() + dt.timedelta(days=7),
                               at - dt.timedelta(days=30), 1500)
    settings = settings.model_copy(update={
        "smtp_host": smtp_sink.host, "smtp_port": smtp_sink.port, "smtp_security": "none",
        "trip_reminders_send_brake_count": 100_000})
    runner = Runner(settings, engine, clock=FixedClock(at))
    cut_everywhere(monkeypatch)
    first = runner.run("trip-reminders", trigger="vercel")
    assert first.status == RunStatus.PARTIAL

    caught = []
    for _ in range(10):
        outcome = catch_up.catch_up_one(runner)
        if outcome is None:
            break
        caught.append(outcome)
    assert [o.run_id for o in caught] == [first.run_id] * len(caught)
    assert [o.status for o in caught][-1] == RunStatus.SUCCESS
    assert set(o.status for o in caught[:-1]) <= {RunStatus.PARTIAL}
    got = recipients(smtp_sink)
    assert set(got) == expected and set(got.values()) == {1}
    # Finished: a late delivery of the slot is a duplicate, and nothing is left to catch up.
    assert runner.run("trip-reminders", trigger="vercel").status == RunStatus.DUPLICATE
    assert catch_up.unfinished_slots(engine, runner.jobs, at) == []
