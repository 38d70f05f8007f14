"""Heartbeats: a dead run is found within DEAD_AFTER, a live one never, however long it runs."""

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
import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import health
from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLease, CronJobLog
from tests.conftest import SECRET, auth, make_settings, rows
from tests.support.notification_data import (
    ScriptedSmtp,
    recipients,
    scheduled_reminder_day,
    seed_travellers,
)
from tests.support.servers import UvicornProcess

log_t = table_of(CronJobLog)
lease_t = table_of(CronJobLease)


def _log(engine: Engine) -> list[Any]:
    """The run log in order, typed (UUIDs and aware datetimes on SQLite too)."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(log_t).order_by(log_t.c.id)))


def _holders(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(lease_t.c.holder)).scalars())


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds it took `predicate` to hold."""
    began = time.monotonic()
    while time.monotonic() < began + timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_dead_after_must_leave_room_for_two_renewals(tmp_path: Path) -> None:
    make_settings("sqlite://", tmp_path, heartbeat_interval=0.5, dead_after=1.0)
    with pytest.raises(pydantic.ValidationError, match="DEAD_AFTER must be at least twice"):
        make_settings("sqlite://", tmp_path, heartbeat_interval=15, dead_after=20)


def test_the_defaults_are_a_renewal_every_15_s_and_dead_after_60_s(tmp_path: Path) -> None:
    settings = make_settings("sqlite://", tmp_path)
    assert (settings.heartbeat_interval, settings.dead_after) == (15.0, 60.0)
    assert health.DEAD_AFTER.total_seconds() == settings.dead_after


def _blocking_job(max_runtime: dt.timedelta) -> tuple[JobSpec, threading.Event,
                                                     threading.Event]:
    started, release = threading.Event(), threading.Event()

    def job(ctx: JobContext) -> JobResult:
        started.set()
        assert release.wait(30)
        return JobResult(records_processed=1)

    spec = JobSpec(name="long-job", schedule="0 3 * * *", func=job, description="test",
                   max_runtime=max_runtime)
    return spec, started, release


def test_a_run_renewing_its_heartbeat_past_its_max_runtime_is_not_dead(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    spec, started, release = _blocking_job(dt.timedelta(seconds=1))
    settings = make_settings(db_url, tmp_path, heartbeat_interval=0.2, dead_after=1.0)
    runner = Runner(settings, engine, jobs={spec.name: spec})
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(runner.run(spec.name)))
    worker.start()
    try:
        assert started.wait(10)
        time.sleep(2.5)  # past its max runtime (1 s) and past DEAD_AFTER (1 s), renewing
        live = _log(engine)
        assert [r.status for r in live] == ["running"]
        assert live[0].heartbeat_at > live[0].started_at + dt.timedelta(seconds=1.5)

        # Another call finds the lease held by the live run: it neither takes it over nor
        # closes its row.
        other = Runner(settings, engine, jobs={spec.name: spec}).run(spec.name)
        assert (other.status, other.run_id) == (RunStatus.RUNNING, live[0].run_id)
        facts, baseline = health.read_facts(engine, {spec.name: spec})
        assert facts[spec.name].heartbeat_run == live[0].run_id
        now = dt.datetime.now(dt.UTC)
        item = health.job_health(spec, facts[spec.name], now, baseline,
                                 dt.timedelta(seconds=1))
        assert not item.dead
        assert item.stuck  # past its max runtime: an overrun, not a death
        _, issues = health.evaluate({spec.name: spec}, facts, now, baseline,
                                    dt.timedelta(seconds=1))
        assert [i.split(":")[0] for i in issues] == ["long-job is stuck"]
    finally:
        release.set()
        worker.join(30)
    assert outcomes and outcomes[0].status == RunStatus.SUCCESS, outcomes
    assert rows(engine, "SELECT status FROM cron_job_log") == [("success",)]
    assert _holders(engine) == [None]


def test_the_renewal_does_not_wait_for_the_jobs_own_long_transaction(
        engine: Engine, db_url: str, tmp_path: Path, dialect: str) -> None:
    """The job keeps one transaction open for 2 s (on PostgreSQL a writing one; SQLite has
    a single writer, so there a reading one): its heartbeat goes on meanwhile."""
    seen: list[dt.datetime] = []

    def job(ctx: JobContext) -> JobResult:
        with ctx.engine.begin() as conn:
            if dialect == "postgresql":
                conn.execute(lease_t.insert().values(task="held-by-the-job"))
            conn.execute(sa.select(log_t.c.id)).all()
            time.sleep(2.0)
            with ctx.engine.connect() as other:
                seen.append(other.execute(sa.select(log_t.c.heartbeat_at)
                                          .where(log_t.c.run_id == ctx.run_id)).scalar_one())
        return JobResult()

    spec = JobSpec(name="one-long-transaction", schedule="0 3 * * *", func=job,
                   description="test")
    settings = make_settings(db_url, tmp_path, heartbeat_interval=0.2, dead_after=1.0)
    outcome = Runner(settings, engine, jobs={spec.name: spec}).run(spec.name)
    assert outcome.status == RunStatus.SUCCESS, outcome.message
    started = _log(engine)[0].started_at
    assert seen and seen[0] >= started + dt.timedelta(seconds=1.5), (started, seen)


def _dead_run(engine: Engine, task: str, heartbeat: dt.datetime, dead_after: dt.timedelta,
              slot: dt.datetime | None = None) -> uuid.UUID:
    """What a killed process leaves: its `running` row and its lease, both unrenewed."""
    dead = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(log_t.insert().values(
            run_id=dead, job_name=task, trigger="http", slot=slot,
            started_at=heartbeat - dt.timedelta(minutes=1), heartbeat_at=heartbeat,
            status="running", records_processed=0, attempts=1, dry_run=False))
        conn.execute(lease_t.insert().values(task=task, holder=dead, acquired_at=heartbeat,
                                             expires_at=heartbeat + dead_after))
    return dead


def test_a_run_whose_heartbeat_stopped_is_dead_and_the_next_call_takes_it_up(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    spec, _started, release = _blocking_job(dt.timedelta(hours=1))
    release.set()
    jobs = {spec.name: spec}
    settings = make_settings(db_url, tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dead = _dead_run(engine, spec.name, now - dt.timedelta(seconds=61), dt.timedelta(seconds=60))

    facts, baseline = health.read_facts(engine, jobs)
    item = health.job_health(spec, facts[spec.name], now, baseline)
    assert item.dead and item.stuck and not item.ok  # long before its hour of max runtime
    _, issues = health.evaluate(jobs, facts, now, baseline)
    assert issues == [f"long-job is dead: run {dead} stopped renewing its heartbeat at "
                      f"{(now - dt.timedelta(seconds=61)):%Y-%m-%dT%H:%M:%SZ}, over 60 s ago; "
                      "the next call takes up its work"]
    # One second earlier it was still alive.
    alive = health.job_health(spec, facts[spec.name], now - dt.timedelta(seconds=2), baseline)
    assert not alive.dead and not alive.stuck

    outcome = Runner(settings, engine, jobs=jobs).run(spec.name)
    assert outcome.status == RunStatus.SUCCESS, outcome.message
    logged = _log(engine)
    assert [(r.run_id, r.status) for r in logged] == [(dead, "abandoned"),
                                                      (outcome.run_id, "success")]
    assert "stopped renewing its heartbeat at" in logged[0].message
    assert f"found by run {outcome.run_id}, which takes up its work" in logged[0].message
    facts, baseline = health.read_facts(engine, jobs)
    assert not health.job_health(spec, facts[spec.name], now, baseline).dead


def test_a_lease_renewed_recently_still_holds(engine: Engine, db_url: str,
                                              tmp_path: Path) -> None:
    spec, _started, _release = _blocking_job(dt.timedelta(hours=1))
    settings = make_settings(db_url, tmp_path)
    now = dt.datetime.now(dt.UTC)
    live = _dead_run(engine, spec.name, now - dt.timedelta(seconds=30), dt.timedelta(seconds=60))
    outcome = Runner(settings, engine, jobs={spec.name: spec}).run(spec.name)
    assert (outcome.status, outcome.run_id) == (RunStatus.RUNNING, live)
    assert rows(engine, "SELECT status FROM cron_job_log") == [("running",)]


# --- a real server killed mid-send --------------------------------------------------------

HEARTBEAT = 0.5
DEAD_AFTER = 3.0


@pytest.fixture
def slow_smtp() -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp(delay=0.15).start()
    yield server
    server.stop()


def _server(db_url: str, tmp_path: Path, smtp: ScriptedSmtp) -> UvicornProcess:
    return UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "CRON_TIMEZONE": "UTC",
        "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
        "MAIL_RETRY_WAIT": "0",
        "HEARTBEAT_INTERVAL": str(HEARTBEAT), "DEAD_AFTER": str(DEAD_AFTER),
    }, cwd=tmp_path).start()


def _fire_and_forget(url: str) -> threading.Thread:
    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
            httpx.post(url, headers=auth(), timeout=60)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def _dead_issue(url: str) -> list[str]:
    answer = httpx.get(f"{url}/health", timeout=10)
    return [i for i in answer.json().get("issues", []) if " is dead: " in i]


@pytest.mark.slow
def test_a_server_killed_mid_send_is_reported_dead_and_the_next_call_finishes_the_slot(
        engine: Engine, db_url: str, tmp_path: Path, slow_smtp: ScriptedSmtp) -> None:
    now = dt.datetime.now(dt.UTC)
    people = seed_travellers(engine, scheduled_reminder_day(now), now, 30)
    doomed = _server(db_url, tmp_path, slow_smtp)
    survivor = _server(db_url, tmp_path, slow_smtp)  # a second instance on the same database
    try:
        pending = _fire_and_forget(f"{doomed.url}/api/cron/trip-reminders")
        _wait_for(lambda: slow_smtp.datas >= 8)  # a few beats in, mid-send
        doomed.kill()  # SIGKILL: no cleanup of any kind
        killed = time.monotonic()
        # Within DEAD_AFTER of its last beat the lease still holds: a redelivery is told
        # the slot is being run now.
        early = httpx.post(f"{survivor.url}/api/cron/trip-reminders", headers=auth(),
                           timeout=30).json()
        asked = time.monotonic() - killed
        pending.join(10)

        logged = _log(engine)
        assert [r.status for r in logged] == ["running"]
        dead_run, slot = logged[0].run_id, logged[0].slot
        assert logged[0].heartbeat_at > logged[0].started_at, "it renewed while it lived"
        assert rows(engine, "SELECT count(*) FROM cron_notification "
                            "WHERE status = 'pending'")[0][0] > 0, "killed mid-batch"
        assert asked < DEAD_AFTER - HEARTBEAT, f"the redelivery came {asked:.1f} s late"
        assert (early["status"], early["run_id"]) == ("duplicate", str(dead_run)), early

        # Found dead within DEAD_AFTER (plus slack for the polling), the job and run named.
        waited = _wait_for(lambda: bool(_dead_issue(survivor.url)), timeout=30)
        assert time.monotonic() - killed <= DEAD_AFTER + 2.0, waited
        issue = _dead_issue(survivor.url)
        assert issue[0].startswith(f"trip-reminders is dead: run {dead_run} stopped renewing")
        assert httpx.get(f"{survivor.url}/health", timeout=10).status_code == 503

        # The next call takes the slot up at once and finishes it.
        slow_smtp.delay = 0.0
        answer = httpx.post(f"{survivor.url}/api/cron/trip-reminders", headers=auth(),
                            timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] in ("success", "warning"), body
    finally:
        survivor.stop()
        doomed.stop()

    got = recipients(slow_smtp)
    assert set(got) == people, "every traveller got the reminder"
    assert set(got.values()) == {1}, f"duplicates: {[k for k, v in got.items() if v > 1]}"
    assert rows(engine, "SELECT count(*) FROM cron_notification "
                        "WHERE status NOT IN ('sent', 'unconfirmed')") == [(0,)]
    assert rows(engine, "SELECT count(*) <= 1 FROM cron_notification "
                        "WHERE status = 'unconfirmed'") == [(True,)]
    logged = _log(engine)
    assert [(r.run_id, r.status) for r in logged] == [
        (dead_run, "abandoned"), (uuid.UUID(body["run_id"]), body["status"])]
    assert {r.slot for r in logged} == {slot}, "one slot, taken up by the new run"
    assert "stopped renewing its heartbeat" in logged[0].message
    assert _holders(engine) == [None]
