"""The runner: one run per slot, duplicates that name the run holding the lease, retries
inside the time budget, and a run abandoned by a killed server."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import registry
from app.core.context import JobContext, JobResult
from app.core.errors import TransientError
from app.core.registry import JobSpec, RetryPolicy
from app.core.runner import Runner, RunOutcome
from tests.conftest import SECRET, FixedClock, auth, rows
from tests.support.jobs import FAST, broken, fake_job, log_rows
from tests.support.servers import SmtpSink, UvicornProcess


# --- one run per slot: duplicates name the run holding the lease -------------------------
def _quick(_ctx: JobContext) -> JobResult:
    return JobResult(records_processed=1, message="done")


JOBS = {"quick": JobSpec("quick", "0 3 * * *", _quick, "test job")}


def _runner(settings: Settings, engine: Engine, clock: FixedClock) -> Runner:
    return Runner(settings, engine, clock=clock, jobs=JOBS)


@pytest.fixture
def paused_after_claim(monkeypatch: pytest.MonkeyPatch
                       ) -> tuple[threading.Event, threading.Event]:
    """The first run to reach the job waits there until the test lets it go: the precise
    moment a second delivery used to find the lease taken and no run to name."""
    reached, release = threading.Event(), threading.Event()
    original: Callable[..., RunOutcome] = Runner._execute

    def execute(self: Runner, *args: Any, **kwargs: Any) -> RunOutcome:
        if not reached.is_set():
            reached.set()
            assert release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "_execute", execute)
    return reached, release


@pytest.mark.parametrize("trigger", ["vercel", "crontab", "github-actions"])
def test_a_delivery_arriving_while_the_first_starts_is_a_named_duplicate(
    settings: Settings, engine: Engine, clock: FixedClock, trigger: str,
    paused_after_claim: tuple[threading.Event, threading.Event],
) -> None:
    reached, release = paused_after_claim
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_runner(settings, engine, clock).run, "quick", trigger=trigger)
        assert reached.wait(30)
        second = _runner(settings, engine, clock).run("quick", trigger=trigger)
        release.set()
        winner = first.result(30)
    assert winner.status == "success"
    assert second.status == "duplicate", second
    assert second.http_status == 200
    assert second.run_id == winner.run_id
    assert second.slot == winner.slot


def test_a_manual_run_colliding_with_a_live_run_is_409_naming_it(
    settings: Settings, engine: Engine, clock: FixedClock,
    paused_after_claim: tuple[threading.Event, threading.Event],
) -> None:
    reached, release = paused_after_claim
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_runner(settings, engine, clock).run, "quick", trigger="vercel")
        assert reached.wait(30)
        manual = _runner(settings, engine, clock).run("quick", trigger="cli")
        forced = _runner(settings, engine, clock).run("quick", trigger="crontab", force=True)
        release.set()
        winner = first.result(30)
    for outcome in (manual, forced):
        assert (outcome.status, outcome.http_status) == ("running", 409)
        assert outcome.run_id == winner.run_id


def test_many_concurrent_deliveries_are_one_run_and_named_duplicates(
    settings: Settings, engine: Engine, clock: FixedClock,
) -> None:
    deliveries = 24
    barrier = threading.Barrier(deliveries)

    def deliver(_i: int) -> RunOutcome:
        runner = _runner(settings, engine, clock)
        barrier.wait()
        return runner.run("quick", trigger="vercel")

    for _round in range(3):
        clock.advance(days=1)
        with ThreadPoolExecutor(deliveries) as pool:
            outcomes = list(pool.map(deliver, range(deliveries)))
        statuses = sorted(o.status for o in outcomes)
        assert statuses == ["duplicate"] * (deliveries - 1) + ["success"], statuses
        [winner] = [o for o in outcomes if o.status == "success"]
        assert {o.run_id for o in outcomes} == {winner.run_id}
    assert rows(engine, "SELECT count(*) AS n FROM cron_job_log")[0].n == 3


# --- retries ------------------------------------------------------------------------------
def _flaky(failures: int) -> Callable[[JobContext], JobResult]:
    def run(ctx: JobContext) -> JobResult:
        if ctx.attempt <= failures:
            raise TransientError(f"connection reset (attempt {ctx.attempt})")
        return JobResult(records_processed=7, message="done at last")
    return run


def _run_flaky(settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
               failures: int) -> tuple[RunOutcome, list[float]]:
    """Run a job failing transiently `failures` times, alerting by mail to `smtp_sink`."""
    sleeps: list[float] = []
    alerting = settings.model_copy(update={**smtp_sink.settings,
                                           "admin_emails": ["ops@example.com"]})
    runner = Runner(alerting, engine, clock=clock, sleep=sleeps.append,
                    jobs=fake_job("flaky", _flaky(failures)))
    return runner.run("flaky", trigger="cli"), sleeps


def test_transient_error_then_success_ends_success_with_attempts_logged(
    settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
) -> None:
    outcome, sleeps = _run_flaky(settings, engine, clock, smtp_sink, failures=2)

    assert outcome.status == "success"
    assert (outcome.attempts, outcome.records_processed) == (3, 7)
    assert len(sleeps) == 2 and all(0 <= s <= FAST.max_delay for s in sleeps)
    [row] = log_rows(engine)
    assert (row.status, row.attempts, row.message) == ("success", 3, "done at last")
    assert [a["attempt"] for a in row.error_details["attempts"]] == [1, 2]
    assert all(a["transient"] for a in row.error_details["attempts"])
    assert row.error_details["attempts"][0]["error"] == (
        "TransientError: connection reset (attempt 1)")
    assert smtp_sink.received == []  # a run that recovered is not a failure


def test_transient_error_that_persists_fails_after_every_attempt(
    settings: Settings, engine: Engine, clock: FixedClock, smtp_sink: SmtpSink,
) -> None:
    outcome, _ = _run_flaky(settings, engine, clock, smtp_sink, failures=99)

    assert outcome.status == "error"
    assert outcome.http_status == 500
    assert outcome.message.startswith("failed after 3 attempt(s): TransientError")
    [row] = log_rows(engine)
    assert (row.status, row.attempts) == ("error", 3)
    assert len(row.error_details["attempts"]) == 3
    assert len(smtp_sink.received) == 1


def test_permanent_error_is_not_retried(settings: Settings, engine: Engine,
                                       clock: FixedClock) -> None:
    sleeps: list[float] = []
    runner = Runner(settings, engine, clock=clock, sleep=sleeps.append,
                    jobs=fake_job("broken", broken))
    assert runner.run("broken").attempts == 1
    assert sleeps == []


def test_retries_stop_inside_the_time_budget(settings: Settings, engine: Engine,
                                             clock: FixedClock) -> None:
    # A budget shorter than the first backoff: tenacity gives up instead of sleeping past it.
    slow = RetryPolicy(attempts=10, base_delay=60, max_delay=60)
    jobs = {"flaky": JobSpec("flaky", "0 3 * * *", _flaky(99), "test", retry=slow,
                             max_runtime=dt.timedelta(seconds=1))}
    sleeps: list[float] = []
    outcome = Runner(settings, engine, clock=clock, sleep=sleeps.append, jobs=jobs).run("flaky")
    assert outcome.status == "error"
    assert outcome.attempts < 10


# --- a run abandoned by a killed server ---------------------------------------------------
def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# Blocking a job at a precise point mid-run needs a table lock another session holds:
# PostgreSQL only (in WAL mode SQLite never makes a reader wait for a writer).
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_killed_run_is_abandoned_once_its_heartbeat_stops(
    db_url: str, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    dead_after = dt.timedelta(seconds=settings.dead_after)
    assert dead_after < registry.JOBS["promo-cleanup"].max_runtime
    psycopg_url = db_url.replace("postgresql+psycopg://", "postgresql://")
    server = UvicornProcess({"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
                             "DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path).start()
    blocker = psycopg.connect(psycopg_url)
    try:
        # Hold promo_codes so the job, once started, blocks on its first read of it.
        blocker.execute("LOCK TABLE promo_codes IN ACCESS EXCLUSIVE MODE")
        http = httpx.Client(timeout=60)
        pending = _fire_and_forget(http, f"{server.url}/api/cron/promo-cleanup?force=true")
        _wait_for(lambda: _waiting_on_lock(blocker))
        started = dt.datetime.now(dt.UTC)
        server.kill()
        pending.join(10)
        http.close()

        logged = rows(engine, "SELECT run_id, status FROM cron_job_log")
        assert [r.status for r in logged] == ["running"]
        dead_run = logged[0].run_id
        lease = rows(engine, "SELECT holder, expires_at FROM cron_job_lease")
        assert [r.holder for r in lease] == [dead_run]
        # DEAD_AFTER past its last heartbeat, which was before the kill.
        assert started - dt.timedelta(minutes=1) <= lease[0].expires_at - dead_after <= started

        # Before DEAD_AFTER the lease still holds: another caller is told it is running.
        busy_clock = FixedClock(dt.datetime.now(dt.UTC) + dead_after / 2)
        busy = Runner(settings, engine, clock=busy_clock).run("promo-cleanup", force=True)
        assert (busy.http_status, busy.status, busy.run_id) == (409, "running", dead_run)
    finally:
        blocker.rollback()
        blocker.close()
        server.stop()

    # The dead server's backend, now unblocked, finds its client gone and rolls back.
    later = FixedClock(dt.datetime.now(dt.UTC) + dead_after + dt.timedelta(seconds=1))
    outcome = Runner(settings, engine, clock=later).run("promo-cleanup", trigger="http")
    assert outcome.status == "success", outcome.message
    logged = rows(engine, "SELECT run_id, status, message FROM cron_job_log ORDER BY id")
    assert [(r.run_id, r.status) for r in logged] == [
        (dead_run, "abandoned"), (outcome.run_id, "success")]
    assert "abandoned" in logged[0].message
    assert [r.holder for r in rows(engine, "SELECT holder FROM cron_job_lease")] == [None]


def _fire_and_forget(http: httpx.Client, url: str) -> threading.Thread:
    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
            http.post(url, headers=auth())

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def _waiting_on_lock(conn: psycopg.Connection[object]) -> bool:
    with psycopg.connect(conn.info.dsn, autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'voyagesmart-cron'"
            " AND wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])
