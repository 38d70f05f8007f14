"""Operators see the fleet: /metrics and the dashboard show the workers alive, the chunks
of each open run by state, and how long the oldest waiting one has waited.  Real
PostgreSQL, a real worker process joining midway."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app.core import chunks
from app.core.runner import Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import SECRET, FixedClock, auth, make_settings
from tests.support.notification_data import scheduled_reminder_day, seed_travellers
from tests.support.queue_workers import WorkerProcess, empty_queue, wait_for_workers
from tests.support.servers import SmtpSink

ON_POSTGRESQL = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
pytestmark = [pytest.mark.slow, ON_POSTGRESQL]

TOKEN = "metrics-token-0123456789abcdef"
USER, PASSWORD = "ops", "dashboard-password-0123456789"
log_t = table_of(CronJobLog)


def fleet_samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=auth(TOKEN))
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            if family.name.startswith("cron_queue_") for s in family.samples}


def test_metrics_and_dashboard_show_workers_and_chunks_waiting(
        make_client: Callable[..., TestClient], engine: Engine, db_url: str, tmp_path: Path,
        smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_queue(engine)
    at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    seed_travellers(engine, scheduled_reminder_day(at), at - dt.timedelta(days=30),
                    1200)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings, execution_mode="queue",
                             metrics_token=TOKEN, dashboard_user=USER,
                             dashboard_password=PASSWORD,
                             trip_reminders_send_brake_count=100_000)
    # A call planned the run and ran out of time before its first chunk; no worker yet.
    with monkeypatch.context() as patch:
        patch.setattr(chunks, "has_room", lambda _ctx, _longest: False)
        first = Runner(settings, engine, clock=FixedClock(at)).run("trip-reminders",
                                                                   trigger="crontab")
    assert first.status == RunStatus.PARTIAL
    with engine.connect() as conn:
        began = conn.execute(sa.select(log_t.c.started_at)
                             .where(log_t.c.run_id == first.run_id)).scalar_one()
    client = make_client(settings=settings, clock=FixedClock(began + dt.timedelta(seconds=90)))

    run = ("task", "trip-reminders"), ("run_id", str(first.run_id))
    samples = fleet_samples(client)
    assert samples[("cron_queue_workers_alive", ())] == 0
    by_state = {state: samples[("cron_queue_chunks", tuple(sorted((*run, ("state", state)))))]
                for state in ("waiting", "running", "failed", "done")}
    # The run's first stage (one trip to count) is one chunk.
    assert by_state == {"waiting": 1, "running": 0, "failed": 0, "done": 0}
    assert samples[("cron_queue_oldest_waiting_chunk_age_seconds", ())] == 90

    page = client.get("/dashboard/", auth=(USER, PASSWORD))
    assert page.status_code == 200
    assert "<strong>0</strong> workers alive" in page.text
    assert "<strong>1</strong> chunk waiting" in page.text
    assert "trip-reminders" in page.text.split('id="fleet"', 1)[1]

    # A worker joins and finishes the run: it is counted, and nothing waits any more.
    worker = WorkerProcess({"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
                            "DATA_DIR": str(tmp_path / "data"), "SMTP_HOST": smtp_sink.host,
                            "SMTP_PORT": str(smtp_sink.port), "SMTP_SECURITY": "none",
                            "QUEUE_POLLING_INTERVAL": "0.5",
                            # The worker decides the brake at the count's end: same setting.
                            "TRIP_REMINDERS_SEND_BRAKE_COUNT": "100000"},
                           "w1", tmp_path).start()
    try:
        wait_for_workers(engine, 1)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                status = conn.execute(sa.select(log_t.c.status)
                                      .where(log_t.c.run_id == first.run_id)).scalar_one()
            if status == RunStatus.SUCCESS:
                break
            time.sleep(0.2)
        assert status == RunStatus.SUCCESS, worker.output()[-3000:]
        samples = fleet_samples(client)
        assert samples[("cron_queue_workers_alive", ())] == 1
        assert not any(name == "cron_queue_chunks" for name, _ in samples)
        assert samples[("cron_queue_oldest_waiting_chunk_age_seconds", ())] == 0
    finally:
        worker.stop()
