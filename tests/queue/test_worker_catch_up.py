"""Where workers run, a missed slot is caught up by them within a minute, with no cron call
at all, and once, however many workers there are.  Real PostgreSQL, two worker processes,
the real clock (the job caught up is one whose latest slot is missed right now)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import catch_up, registry
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from app.queue.broker import CATCH_UP_EVERY_S
from tests.conftest import SECRET
from tests.support.queue_workers import WorkerProcess, empty_queue, wait_for_workers

ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
pytestmark = [pytest.mark.slow, ON_POSTGRESQL]

log_t = table_of(CronJobLog)
# Cheap on an empty database, whichever is picked.
CANDIDATES = ("promo-cleanup", "analytics", "subscription-report", "user-engagement")


def _row(task: str, started: dt.datetime) -> dict[str, object]:
    return {"run_id": uuid.uuid4(), "job_name": task, "trigger": "vercel",
            "started_at": started, "ended_at": started, "status": RunStatus.SUCCESS,
            "records_processed": 0, "attempts": 1, "dry_run": False, "message": "done"}


def test_workers_catch_up_a_missed_slot_once_without_a_cron_call(
        db_url: str, engine: Engine, tmp_path: Path) -> None:
    empty_queue(engine)
    now = dt.datetime.now(dt.UTC)
    baseline = now - dt.timedelta(days=40)
    missed = [name for name in CANDIDATES
              if catch_up.missed_slot(registry.JOBS[name], None, baseline, now) is not None]
    if not missed:
        pytest.skip("no candidate job has a missed slot at this time of day")
    task = missed[0]
    # The service has run for weeks; every other job ran just now, `task` not since its slot.
    rows = [_row(task, baseline)] + [_row(name, now) for name in registry.JOBS if name != task]
    with engine.begin() as conn:
        conn.execute(log_t.insert(), rows)

    env = {"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "QUEUE_POLLING_INTERVAL": "0.5"}
    workers = [WorkerProcess(env, f"w{i}", tmp_path).start() for i in (1, 2)]
    try:
        wait_for_workers(engine, 2)
        started = time.monotonic()
        caught: list[object] = []
        while not caught and time.monotonic() - started < 3 * CATCH_UP_EVERY_S + 30:
            with engine.connect() as conn:
                caught = list(conn.execute(sa.select(log_t.c.status, log_t.c.slot).where(
                    log_t.c.job_name == task, log_t.c.trigger == "catch-up")))
            time.sleep(0.5)
        assert caught, [w.output()[-2000:] for w in workers]
        # Another round of the periodic task on both workers: still one run of the slot.
        time.sleep(CATCH_UP_EVERY_S + 5)
        with engine.connect() as conn:
            runs = conn.execute(sa.select(log_t.c.status, log_t.c.slot).where(
                log_t.c.job_name == task, log_t.c.started_at > baseline)).all()
    finally:
        for worker in workers:
            worker.stop()
    assert len(runs) == 1, runs
    status, slot = runs[0]
    assert status in (RunStatus.SUCCESS, RunStatus.SKIPPED, RunStatus.WARNING)
    assert slot == catch_up.missed_slot(registry.JOBS[task], None, baseline, now).slot
