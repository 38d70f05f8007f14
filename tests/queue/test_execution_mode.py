"""EXECUTION_MODE: inline by default, queue refused on SQLite in one line, and a queued
run whose chunks are all done is closed once however many workers race to close it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import chunks
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, CronRunChunk
from app.queue import chunk_job
from tests.conftest import SECRET, FixedClock, make_settings
from tests.support.notification_data import recipients, scheduled_reminder_day, seed_travellers
from tests.support.queue_workers import empty_queue
from tests.support.servers import SmtpSink

ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)


def test_inline_is_the_default(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path}/x.db", tmp_path)
    assert settings.execution_mode == "inline"


@pytest.mark.parametrize("command", [["worker"], ["serve"], ["run", "promo-cleanup"]])
def test_queue_on_sqlite_is_refused_at_startup_in_one_line(tmp_path: Path,
                                                           command: list[str]) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "CRON_SECRET": SECRET, "DATA_DIR": str(tmp_path / "data"),
           "EXECUTION_MODE": "queue"}
    done = subprocess.run([sys.executable, "-m", "app", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "EXECUTION_MODE=queue needs a PostgreSQL DATABASE_URL" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_worker_on_sqlite_says_it_needs_no_queue(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "CRON_SECRET": SECRET, "DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "app", "worker"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "the queue needs a PostgreSQL DATABASE_URL; with SQLite every run is inline "
        "(EXECUTION_MODE=inline) and needs no worker"]


@ON_POSTGRESQL
def test_a_complete_queued_run_is_closed_once_by_racing_workers(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    empty_queue(engine)
    at = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(at),
                               at - dt.timedelta(days=30), 1200)
    settings = settings.model_copy(update={
        **smtp_sink.settings, "execution_mode": "queue",
        "trip_reminders_send_brake_count": 100_000})
    # The call plans and defers, then finds no room for a chunk: it answers partial.
    with monkeypatch.context() as patch:
        patch.setattr(chunks, "has_room", lambda _ctx, _longest: False)
        first = Runner(settings, engine, clock=FixedClock(at)).run("trip-reminders",
                                                                   trigger="crontab")
    assert first.status == RunStatus.PARTIAL
    run_id = first.run_id
    assert run_id is not None
    with engine.connect() as conn:
        queued = conn.execute(sa.text(
            "SELECT args->>'seq' FROM procrastinate_jobs WHERE args->>'run_id' = :lock"),
            {"lock": str(run_id)}).scalars().all()
    assert queued == ["0"]  # the run's first stage: one trip to count, one chunk

    # Workers elsewhere do every chunk of a stage; four of them then race to close the
    # run: one plans its next stage (count, plan, send), the last time one closes it.
    spec = chunk_job.registry.JOBS["trip-reminders"]
    job = chunk_job.chunked_job(spec)
    rounds: list[list[bool]] = []
    while not any(rounds[-1:][0] if rounds else []) and len(rounds) < 5:
        with engine.connect() as conn:
            row = conn.execute(sa.select(log_t).where(log_t.c.run_id == run_id)).one()
            pending = conn.execute(sa.select(chunk_t.c.seq, chunk_t.c.args)
                                   .where(chunk_t.c.run_id == run_id,
                                          chunk_t.c.status != "done")
                                   .order_by(chunk_t.c.seq)).all()
        assert row.status == RunStatus.PARTIAL
        ctx = chunk_job.context(settings, engine, row, spec, until=None)
        for seq, args in pending:
            job.run_chunk(ctx, seq, dict(args))
        barrier = threading.Barrier(4)
        closed: list[bool] = []

        def close(barrier: threading.Barrier = barrier, closed: list[bool] = closed) -> None:
            barrier.wait()
            closed.append(chunk_job.finish_run(settings, engine, run_id))

        racers = [threading.Thread(target=close) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        rounds.append(sorted(closed))

    assert rounds == [[False] * 4, [False] * 4, [False, False, False, True]]
    with engine.connect() as conn:
        steps = conn.execute(sa.select(chunk_t.c.args["step"].as_string())
                             .where(chunk_t.c.run_id == run_id)
                             .order_by(chunk_t.c.seq)).scalars().all()
    # Each stage was planned once, whoever saw the last chunk of the one before done.
    assert steps[:2] == ["count", "plan"]
    assert steps[2:] == ["send"] * (len(steps) - 3) + ["sweep"]
    with engine.connect() as conn:
        final = conn.execute(sa.select(log_t).where(log_t.c.run_id == run_id)).one()
        holder = conn.execute(sa.text(
            "SELECT holder FROM cron_job_lease WHERE task = 'trip-reminders'")).scalar()
    assert (final.status, final.records_processed) == (RunStatus.SUCCESS, 1200)
    assert final.chunks_done == final.chunks_total == len(steps)
    assert final.details["closed_by"] == "queue worker"
    assert holder is None  # the lease is free for the next slot
    got = recipients(smtp_sink)
    assert set(got) == expected and set(got.values()) == {1}


@ON_POSTGRESQL
def test_a_chunk_that_keeps_failing_ends_the_waiting_run_as_error(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call with no time limit (the CLI) waiting on a chunk whose job gave up does not
    wait for ever: the run ends `error`, saying which chunk."""
    from app.queue import broker

    empty_queue(engine)
    at = dt.datetime.now(dt.UTC)
    seed_travellers(engine, at.date() + dt.timedelta(days=7), at - dt.timedelta(days=30), 300)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, execution_mode="queue",
                             trip_reminders_send_brake_count=100_000)

    def broken(*_args: object, **_kwargs: object) -> chunk_job.Outcome:
        raise RuntimeError("the chunk broke")

    monkeypatch.setattr(broker, "CHUNK_ATTEMPTS", 1)  # no retry: it fails for good at once
    monkeypatch.setattr(chunk_job, "run", broken)
    outcome = Runner(settings, engine, clock=FixedClock(at)).run("trip-reminders",
                                                                 trigger="cli")
    assert outcome.status == RunStatus.ERROR
    assert "chunk 0 of the run failed after 1 attempts in the queue" in outcome.message
    with engine.connect() as conn:
        failed = conn.execute(sa.text(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'")).scalar()
    assert failed == 1
    assert recipients(smtp_sink) == {}


@ON_POSTGRESQL
def test_a_brake_tripped_in_a_worker_closes_the_run_with_the_brakes_answer(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The brake is decided where the count ends: in queue mode that may be a worker.  It
    closes the run `error` with the brake's own figures, nothing is planned, and the
    operators are alerted of the failure as after a call's run (app/observe/alerts.py)."""
    empty_queue(engine)
    at = dt.datetime.now(dt.UTC)
    seed_travellers(engine, scheduled_reminder_day(at), at - dt.timedelta(days=30), 300)
    settings = settings.model_copy(update={
        **smtp_sink.settings, "execution_mode": "queue",
        "trip_reminders_send_brake_count": 10, "admin_emails": ["ops@example.com"]})
    with monkeypatch.context() as patch:
        patch.setattr(chunks, "has_room", lambda _ctx, _longest: False)
        first = Runner(settings, engine, clock=FixedClock(at)).run("trip-reminders",
                                                                   trigger="crontab")
    assert first.status == RunStatus.PARTIAL and first.run_id is not None
    spec = chunk_job.registry.JOBS["trip-reminders"]
    assert chunk_job.run(settings, engine, first.run_id, 0,
                         worker="w1") == chunk_job.Outcome.DONE

    with engine.connect() as conn:
        final = conn.execute(sa.select(log_t).where(log_t.c.run_id == first.run_id)).one()
        planned = conn.execute(sa.text("SELECT count(*) FROM cron_notification")).scalar()
    assert final.status == RunStatus.ERROR
    assert final.message.startswith("safety brake: would email trip reminders")
    assert "300 of 0" in final.message
    assert final.details["brake"]["tripped"] is True
    assert final.details["closed_by"] == "queue worker"
    # No traveller emailed; one alert, to the operators, naming the job and the brake.
    assert planned == 0 and recipients(smtp_sink) == {"ops@example.com": 1}
    [alert] = smtp_sink.received
    assert spec.name in str(alert.message["Subject"])


@ON_POSTGRESQL
def test_a_run_a_worker_closes_sends_its_own_check_in_to_sentry(
        engine: Engine, settings: Settings, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The call that paused closed its own check-in as ok; how the slot ended (here an
    error: the brake, decided in the worker) reaches the monitor from the worker."""
    import sentry_sdk

    from tests.observe.test_sentry import _items
    from tests.support.servers import HttpCapture

    empty_queue(engine)
    at = dt.datetime.now(dt.UTC)
    seed_travellers(engine, scheduled_reminder_day(at), at - dt.timedelta(days=30), 300)
    sentry_server = HttpCapture().start()
    try:
        dsn = f"http://publickey@127.0.0.1:{sentry_server.server.server_address[1]}/1"
        settings = settings.model_copy(update={
            **smtp_sink.settings, "execution_mode": "queue", "sentry_dsn": dsn,
            "trip_reminders_send_brake_count": 10})
        with monkeypatch.context() as patch:
            patch.setattr(chunks, "has_room", lambda _ctx, _longest: False)
            first = Runner(settings, engine, clock=FixedClock(at)).run("trip-reminders",
                                                                       trigger="crontab")
        assert first.status == RunStatus.PARTIAL and first.run_id is not None
        assert sentry_server.requests == []  # this Runner has no observer: no check-in yet
        assert chunk_job.run(settings, engine, first.run_id, 0,
                             worker="w1") == chunk_job.Outcome.DONE
        sentry_sdk.flush(timeout=5)
        check_ins = [payload for kind, payload, _ in _items(sentry_server)
                     if kind == "check_in"]
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)
        sentry_server.stop()
    assert [(c["monitor_slug"], c["status"]) for c in check_ins] == [
        ("trip-reminders", "error")]
    assert check_ins[0]["duration"] >= 0
