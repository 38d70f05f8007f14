"""Twenty simultaneous deliveries of one slot to two server processes: exactly one run."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from app.db import table_of
from app.models import PromoCode
from tests.conftest import SECRET, auth, rows
from tests.support.servers import UvicornProcess

pytestmark = pytest.mark.slow

DELIVERIES = 20


def _seed_codes(engine: Engine, n: int) -> None:
    # Enough expired codes that the run lasts a moment and the deliveries overlap it.
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(table_of(PromoCode).insert(), [
            {"id": uuid.uuid4(), "code": f"C{i:05d}", "tier": "premium", "used_count": 0,
             "is_active": True, "expires_at": now - dt.timedelta(days=1 + i % 200),
             "created_at": now, "updated_at": now}
            for i in range(n)
        ])


def test_one_slot_runs_once_across_two_processes(db_url: str, engine: Engine,
                                                 tmp_path: Path) -> None:
    _seed_codes(engine, 3000)
    # Most of these codes are deleted or deactivated at once: let the brakes allow it.
    env = {"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "BATCH_SIZE": "200",
           "PROMO_CLEANUP_DELETE_BRAKE_SHARE": "1", "PROMO_CLEANUP_DEACTIVATE_BRAKE_SHARE": "1"}
    servers = [UvicornProcess(env, cwd=tmp_path).start() for _ in range(2)]
    barrier = threading.Barrier(DELIVERIES)
    headers = {**auth(), "User-Agent": "vercel-cron/1.0"}

    def deliver(i: int) -> httpx.Response:
        url = f"{servers[i % 2].url}/api/cron/promo-cleanup"
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            return http.get(url, headers=headers)

    try:
        with ThreadPoolExecutor(DELIVERIES) as pool:
            answers = list(pool.map(deliver, range(DELIVERIES)))
    finally:
        for server in servers:
            server.stop()

    statuses = Counter((r.status_code, r.json()["status"]) for r in answers)
    assert statuses[(200, "success")] == 1, statuses
    # Every concurrent delivery of the slot is a duplicate naming the winner, never a 409.
    assert set(statuses) <= {(200, "success"), (200, "duplicate")}, statuses
    winner = next(r.json() for r in answers if r.json()["status"] == "success")
    for response in answers:
        assert response.json()["run_id"] == winner["run_id"]
    assert winner["records_processed"] > 0

    logged = rows(engine, "SELECT status, trigger FROM cron_job_log")
    assert [(r.status, r.trigger) for r in logged] == [("success", "vercel")]
    lease = rows(engine, "SELECT holder FROM cron_job_lease WHERE task = 'promo-cleanup'")
    assert [r.holder for r in lease] == [None]
