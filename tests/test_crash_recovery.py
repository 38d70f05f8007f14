"""A server killed mid-run: its `running` row and lease survive, then expire after max runtime."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import registry
from app.core.runner import Runner
from tests.conftest import SECRET, FixedClock, auth, rows
from tests.support.servers import UvicornProcess

pytestmark = pytest.mark.slow


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# Blocking a job at a precise point mid-run needs a table lock another session holds:
# PostgreSQL only (in WAL mode SQLite never makes a reader wait for a writer).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_killed_run_is_abandoned_after_max_runtime(
    db_url: str, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    max_runtime = registry.JOBS["promo-cleanup"].max_runtime
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
        assert lease[0].expires_at >= started + max_runtime - dt.timedelta(minutes=1)

        # Before max runtime the lease still holds: another caller is told it is running.
        busy_clock = FixedClock(dt.datetime.now(dt.UTC) + max_runtime / 2)
        busy = Runner(settings, engine, clock=busy_clock).run("promo-cleanup", force=True)
        assert (busy.http_status, busy.status, busy.run_id) == (409, "running", dead_run)
    finally:
        blocker.rollback()
        blocker.close()
        server.stop()

    # The dead server's backend, now unblocked, finds its client gone and rolls back.
    later = FixedClock(dt.datetime.now(dt.UTC) + max_runtime + dt.timedelta(seconds=1))
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
