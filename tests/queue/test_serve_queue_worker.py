"""`voyagesmart-cron serve --queue-worker`: a single host needs no separate worker process.
One cron call answers 202 when its budget ends, and the server's own queue worker finishes
the run with no further call.  Real PostgreSQL, the real CLI, an SMTP sink."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, CronRunChunk
from tests.conftest import auth
from tests.support.notification_data import recipients, scheduled_reminder_day, seed_travellers
from tests.support.queue_workers import empty_queue, queue_env
from tests.support.servers import ServeProcess, SmtpSink

ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
pytestmark = [pytest.mark.slow, ON_POSTGRESQL]

log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)


class ServeWithWorker(ServeProcess):
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port",
                str(self.port), "--log-level", self.log_level, "--queue-worker"]


def test_serve_with_its_queue_worker_finishes_a_run_after_the_call_answered(
        db_url: str, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    empty_queue(engine)
    now = dt.datetime.now(dt.UTC)
    expected = seed_travellers(engine, scheduled_reminder_day(now),
                               now - dt.timedelta(days=30), 1000)
    server = ServeWithWorker(queue_env(db_url, tmp_path, smtp_sink,
                                       FUNCTION_MAX_DURATION="1"), cwd=tmp_path).start()
    try:
        with httpx.Client(timeout=60) as http:
            answer = http.post(f"{server.url}/api/cron/trip-reminders",
                               headers={**auth(), "X-Cron-Source": "crontab"})
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and status != RunStatus.SUCCESS:
            time.sleep(0.2)
            with engine.connect() as conn:
                status = conn.execute(sa.select(log_t.c.status)
                                      .where(log_t.c.run_id == run_id)).scalar_one()
    finally:
        server.stop()
    assert status == RunStatus.SUCCESS, server.captured[-3000:]
    with engine.connect() as conn:
        workers = set(conn.execute(sa.select(chunk_t.c.worker)
                                   .where(chunk_t.c.run_id == run_id)).scalars())
    assert any(name.startswith("serve@") for name in workers), workers
    got = recipients(smtp_sink)
    assert set(got) == expected and set(got.values()) == {1}
