"""A server SIGKILLed in the middle of a chunk of a big trip-reminders run: a second server
on the same database reports the run dead within a minute, and the next call takes the
slot up as a new run that inherits the dead run's chunks (app/core/chunks.py `inherit`):
the chunk finished before the kill is not sent again, the one cut is finished, no one gets
two reminders and at most the message in flight ends `unconfirmed`.  Real uvicorn
processes, a real (slow-ish) SMTP server, SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db import table_of
from app.mail.ledger import notifications
from app.models import CronJobLog, CronRunChunk
from tests.conftest import SECRET, auth, rows
from tests.support.notification_data import (
    ScriptedSmtp,
    recipients,
    scheduled_reminder_day,
    seed_travellers,
)
from tests.support.servers import UvicornProcess

pytestmark = pytest.mark.slow

TRAVELLERS = 2500  # chunks of 1000, 1000, 500 and the closing sweep
KILL_AT = 1300  # messages the server took: mid-way through the second chunk
HEARTBEAT = 1.0
DEAD_AFTER = 3.0
REPORTED_WITHIN = 60.0  # the promise: a dead run is on /health within a minute

log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)
CRON = {**auth(), "X-Cron-Source": "crontab"}


@pytest.fixture
def slow_smtp() -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp(delay=0.004).start()
    yield server
    server.stop()


def _server(db_url: str, tmp_path: Path, smtp: ScriptedSmtp) -> UvicornProcess:
    return UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "CRON_TIMEZONE": "UTC",
        "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
        "MAIL_RETRY_WAIT": "0", "CRON_CATCH_UP": "false",
        "TRIP_REMINDERS_SEND_BRAKE_COUNT": "100000",
        "HEARTBEAT_INTERVAL": str(HEARTBEAT), "DEAD_AFTER": str(DEAD_AFTER),
    }, cwd=tmp_path).start()


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout:g} s")


def _dead_issues(url: str) -> list[str]:
    answer = httpx.get(f"{url}/health", timeout=10)
    return [i for i in answer.json().get("issues", []) if " is dead: " in i]


def _chunks(engine: Engine, run_id: uuid.UUID) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(chunk_t.c.seq, chunk_t.c.status, chunk_t.c.records, chunk_t.c.ended_at)
            .where(chunk_t.c.run_id == run_id).order_by(chunk_t.c.seq)))


def _runs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(log_t.c.run_id, log_t.c.status, log_t.c.message, log_t.c.slot,
                      log_t.c.chunks_done, log_t.c.chunks_total, log_t.c.started_at)
            .where(log_t.c.job_name == "trip-reminders").order_by(log_t.c.started_at)))


def test_a_run_killed_mid_chunk_is_reported_dead_and_its_heir_finishes_it_once_each(
        engine: Engine, db_url: str, tmp_path: Path, slow_smtp: ScriptedSmtp) -> None:
    now = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(now),
                               now - dt.timedelta(days=30), TRAVELLERS)
    doomed = _server(db_url, tmp_path, slow_smtp)
    survivor = _server(db_url, tmp_path, slow_smtp)  # another instance, same database
    answers: list[httpx.Response] = []
    try:
        def call() -> None:
            with contextlib.suppress(httpx.HTTPError):  # killed under this request
                httpx.post(f"{doomed.url}/api/cron/trip-reminders", headers=CRON,
                           timeout=120)

        request = threading.Thread(target=call, daemon=True)
        request.start()
        _wait_for(lambda: slow_smtp.datas >= KILL_AT, timeout=120)
        doomed.kill()  # SIGKILL: no cleanup of any kind
        killed = time.monotonic()
        request.join(10)

        [dying] = _runs(engine)
        assert dying.status == "running"
        # Killed mid-chunk: the count and plan chunks and the first send chunk done and
        # counted, the second send chunk cut.
        assert (dying.chunks_done, dying.chunks_total) == (3, 6)
        before = _chunks(engine, dying.run_id)
        assert [(c.seq, c.status) for c in before] == [
            (0, "done"), (1, "done"), (2, "done"), (3, "pending"), (4, "pending"),
            (5, "pending")]
        assert rows(engine, "SELECT count(*) FROM cron_notification "
                            "WHERE status = 'pending'")[0][0] > 0

        # The other instance reports it dead, naming the run, well within a minute.
        _wait_for(lambda: bool(_dead_issues(survivor.url)), timeout=REPORTED_WITHIN)
        assert time.monotonic() - killed <= REPORTED_WITHIN
        [issue] = _dead_issues(survivor.url)
        assert issue.startswith(f"trip-reminders is dead: run {dying.run_id} stopped "
                                "renewing")

        # The next calls (as the crontab loop makes them) take the slot up and finish it.
        slow_smtp.delay = 0.0
        with httpx.Client(timeout=120) as http:
            for _ in range(20):
                answers.append(http.post(f"{survivor.url}/api/cron/trip-reminders",
                                         headers=CRON))
                if answers[-1].status_code != 202:
                    break
    finally:
        survivor.stop()
        doomed.stop()

    final = answers[-1]
    assert final.status_code == 200, final.text
    body = final.json()
    assert body["status"] in ("success", "warning"), body
    heir = uuid.UUID(body["run_id"])
    assert heir != dying.run_id

    # At the SMTP server: nobody twice; nobody missing but, at most, the one message in
    # flight when the process died (recorded `unconfirmed`, never sent again).
    got = recipients(slow_smtp)
    assert set(got.values()) == {1}, f"duplicates: {[k for k, v in got.items() if v > 1]}"
    assert set(got) <= expected
    unconfirmed = rows(engine, "SELECT recipient FROM cron_notification "
                               "WHERE status = 'unconfirmed'")
    assert len(unconfirmed) <= 1
    assert expected - set(got) <= {r.recipient for r in unconfirmed}
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status NOT IN ('sent', 'unconfirmed')") == [(0,)]

    # The log: the dead run abandoned with its reason, then its heir, one slot, all done.
    logged = _runs(engine)
    assert [(r.run_id, r.status) for r in logged] == [
        (dying.run_id, "abandoned"), (heir, body["status"])]
    assert "stopped renewing its heartbeat" in logged[0].message
    assert f"found by run {heir}" in logged[0].message
    assert {r.slot for r in logged} == {dying.slot}
    assert (logged[1].chunks_done, logged[1].chunks_total) == (6, 6)
    # The heir inherited the chunks finished before the kill (same rows, same ends) and did
    # not send it again; it did the others itself.
    after = _chunks(engine, heir)
    assert [c.status for c in after] == ["done"] * 6
    assert [(c.records, c.ended_at) for c in after[:3]] == [
        (c.records, c.ended_at) for c in before[:3]]
    assert all(c.ended_at >= logged[1].started_at for c in after[3:])
    # What the heir sent itself: everything but the dead run's share.
    with engine.connect() as conn:
        own = conn.execute(sa.select(sa.func.count()).where(
            notifications.c.run_id == heir, notifications.c.status == "sent")).scalar()
    assert own == body["records_processed"]
    assert 0 < body["records_processed"] <= TRAVELLERS - KILL_AT
