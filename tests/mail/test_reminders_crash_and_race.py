"""A killed process, two racing processes, two racing runs: nobody gets two reminders."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.core.context import JobContext, JobResult
from app.core.runner import Runner
from app.db import table_of
from app.jobs import trip_reminders
from app.models import CronJobLog
from tests.conftest import SECRET, FixedClock, make_settings, rows
from tests.support.notification_data import ScriptedSmtp, recipients, seed_travellers
from tests.support.servers import ROOT

pytestmark = pytest.mark.slow


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@pytest.fixture
def slow_smtp() -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp(delay=0.15).start()
    yield server
    server.stop()


def _cli(db_url: str, tmp_path: Path, server: ScriptedSmtp) -> subprocess.Popen[bytes]:
    env = {**os.environ, "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "CRON_TIMEZONE": "UTC",
           "SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_SECURITY": "none",
           "MAIL_RETRY_WAIT": "0"}
    return subprocess.Popen([sys.executable, "-m", "app", "run", "trip-reminders"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _signal_mid_batch(db_url: str, tmp_path: Path, server: ScriptedSmtp, sig: int) -> int:
    """Run the CLI job, send `sig` once 8 messages are stored; its exit status."""
    proc = _cli(db_url, tmp_path, server)
    try:
        _wait_for(lambda: server.datas >= 8)
        proc.send_signal(sig)
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_process_killed_mid_batch_is_finished_by_the_next_run_without_duplicates(
        engine: Engine, db_url: str, tmp_path: Path, slow_smtp: ScriptedSmtp) -> None:
    start = _today() + dt.timedelta(days=7)
    people = seed_travellers(engine, start, dt.datetime.now(dt.UTC), 30)
    _signal_mid_batch(db_url, tmp_path, slow_smtp, signal.SIGKILL)  # no cleanup of any kind
    left = rows(engine, "SELECT count(*) FROM cron_notification WHERE status = 'pending'")
    assert left[0][0] > 0, "the kill must land mid-batch"
    assert rows(engine, "SELECT status FROM cron_job_log") == [("running",)]

    # The dead process holds the lease until its heartbeat is DEAD_AFTER old.
    slow_smtp.delay = 0.0
    later = FixedClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16))
    settings = make_settings(db_url, tmp_path, **slow_smtp.settings, mail_retry_wait=0.0)
    outcome = Runner(settings, engine, clock=later).run("trip-reminders", trigger="cli")

    assert outcome.status in ("success", "warning"), outcome.message
    got = recipients(slow_smtp)
    assert set(got) == people, "every traveller got the reminder"
    assert set(got.values()) == {1}, f"duplicates: {[k for k, v in got.items() if v > 1]}"
    statuses = rows(engine, "SELECT status FROM cron_job_log ORDER BY started_at")
    assert statuses[0] == ("abandoned",)
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status NOT IN ('sent', 'unconfirmed')") == [(0,)]
    # Read off the dead run's cursor: at most the message in flight is unconfirmed.
    assert rows(engine, "SELECT count(*) <= 1 FROM cron_notification "
                        "WHERE status = 'unconfirmed'") == [(True,)]


def test_sigterm_mid_batch_closes_the_run_and_the_next_run_finishes_at_once(
        engine: Engine, db_url: str, tmp_path: Path, slow_smtp: ScriptedSmtp) -> None:
    start = _today() + dt.timedelta(days=7)
    people = seed_travellers(engine, start, dt.datetime.now(dt.UTC), 30)
    assert _signal_mid_batch(db_url, tmp_path, slow_smtp, signal.SIGTERM) != 0
    held = sum(recipients(slow_smtp).values())
    assert held < 30, "the signal must land mid-batch"
    # The run closed its own log row and settled its batch (cursor cleared): exactly what
    # the server holds is recorded as delivered, the rest is still pending.
    log = rows(engine, "SELECT status, message, mail_cursor FROM cron_job_log")
    assert log == [("error", "interrupted: SystemExit", None)]
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status IN ('sent', 'unconfirmed')") == [(held,)]
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status = 'pending'") == [(30 - held,)]

    # The lease was released: the next run starts now, without waiting for it to expire.
    slow_smtp.delay = 0.0
    settings = make_settings(db_url, tmp_path, **slow_smtp.settings, mail_retry_wait=0.0)
    outcome = Runner(settings, engine).run("trip-reminders", trigger="cli")
    assert outcome.status in ("success", "warning"), outcome.message
    got = recipients(slow_smtp)
    assert set(got) == people and set(got.values()) == {1}


def test_two_processes_started_together_send_no_duplicate(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    server = ScriptedSmtp(delay=0.01).start()
    try:
        start = _today() + dt.timedelta(days=7)
        people = seed_travellers(engine, start, dt.datetime.now(dt.UTC), 20)
        procs = [_cli(db_url, tmp_path, server) for _ in range(2)]
        outputs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            outputs.append(out.decode())
        got = recipients(server)
    finally:
        server.stop()
    assert set(got) == people and set(got.values()) == {1}, outputs
    assert any('"status": "success"' in out for out in outputs), outputs


def test_two_live_runs_racing_past_the_lease_send_no_duplicate(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """The lease normally stops this; here both runs are live at once (lease expired)."""
    server = ScriptedSmtp(delay=0.002).start()
    now = dt.datetime(2026, 11, 28, 8, 0, 5, tzinfo=dt.UTC)
    try:
        people = seed_travellers(engine, dt.date(2026, 12, 5), now, 40)
        settings = make_settings(db_url, tmp_path, **server.settings, mail_retry_wait=0.0)
        run_ids = [uuid.uuid4(), uuid.uuid4()]
        with engine.begin() as conn:
            for run_id in run_ids:
                conn.execute(table_of(CronJobLog).insert().values(
                    run_id=run_id, job_name="trip-reminders", trigger="test", started_at=now,
                    status="running", records_processed=0, attempts=1, dry_run=False))
        results: list[JobResult] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def race(run_id: uuid.UUID) -> None:
            ctx = JobContext(settings=settings, engine=engine, now=now, run_id=run_id,
                             task="trip-reminders")
            try:
                barrier.wait()
                results.append(trip_reminders.run(ctx))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(r,)) for r in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        got = recipients(server)
    finally:
        server.stop()
    assert not errors, errors
    assert set(got) == people and set(got.values()) == {1}
    assert sum(r.records_processed for r in results) == 40
