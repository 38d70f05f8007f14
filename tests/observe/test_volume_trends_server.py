"""A volume heading for its limit, as an uptime monitor and Prometheus see it: the service in
its own process, over real HTTP, with the shipped registry (storage-cleanup's one-hour
budget) and a run log whose storage-cleanup runs scan 5% more objects every week."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.registry import JOBS
from app.db import make_engine, table_of
from app.models import CronJobLog
from tests.conftest import SECRET, auth, copy_sqlite_database
from tests.support.servers import UvicornProcess

PACE = 100  # objects scanned per second of run
CAPACITY = PACE * 3600  # in storage-cleanup's one-hour budget
WEEK = dt.timedelta(weeks=1)
RUNS = 12


def _run(name: str, started: dt.datetime, seconds: float, details: dict[str, Any] | None
         ) -> dict[str, Any]:
    return {"run_id": uuid.uuid4(), "job_name": name, "trigger": "vercel",
            "started_at": started, "ended_at": started + dt.timedelta(seconds=seconds),
            "status": "success", "message": "seeded", "records_processed": 1, "attempts": 1,
            "dry_run": False, "details": details}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
           ) -> Iterator[tuple[UvicornProcess, dt.datetime]]:
    tmp_path = tmp_path_factory.mktemp("volumes")
    db = tmp_path / "volumes.db"
    copy_sqlite_database(sqlite_template, db)
    now = dt.datetime.now(dt.UTC)
    first = now - dt.timedelta(days=1) - (RUNS - 1) * WEEK
    # Weekly runs 14, 13, ... 3 weeks of 5% growth short of the capacity.
    runs = [_run("storage-cleanup", first + i * WEEK, objects / PACE,
                 {"volume": {"measure": "objects_scanned", "value": round(objects)}})
            for i in range(RUNS) for objects in [CAPACITY / 1.05 ** (14 - i)]]
    runs += [_run(name, now - dt.timedelta(minutes=30), 0.5, None) for name in JOBS
             if name != "storage-cleanup"]  # nothing overdue: the service is healthy
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert(), runs)
    engine.dispose()
    proc = UvicornProcess({
        "APP_ENV": "test", "DATABASE_URL": f"sqlite:///{db}", "CRON_SECRET": SECRET,
        "DATA_DIR": str(tmp_path / "data"), "SENTRY_DSN": "", "LOG_LEVEL": "WARNING",
    }).start()
    yield proc, first + 14 * WEEK
    proc.stop()


def test_health_warns_and_metrics_expose_the_crossing_over_http(
        server: tuple[UvicornProcess, dt.datetime]) -> None:
    proc, analytic = server
    anonymous = httpx.get(f"{proc.url}/health", timeout=30)
    assert anonymous.status_code == 200, anonymous.text  # a warning, never a 503
    assert anonymous.json()["status"] == "healthy"
    sentence = ("at this growth (+0.7% a day), storage-cleanup's scan exceeds the 360,000 "
                "objects it can scan in its 60 min budget in about 3 weeks")
    assert sentence in anonymous.json()["warnings"]

    detailed = httpx.get(f"{proc.url}/health", headers=auth(), timeout=30).json()
    volume = detailed["jobs"]["storage-cleanup"]["volume"]
    crosses = dt.datetime.fromisoformat(volume["crosses_at"])
    assert abs(crosses - analytic) < dt.timedelta(hours=2), (crosses, analytic)
    assert volume["growth_per_run"] == pytest.approx(0.05, abs=1e-3)
    assert volume["limit"] == pytest.approx(CAPACITY, rel=1e-3)
    assert detailed["jobs"]["trip-reminders"]["volume"] is None  # measured nothing yet

    scraped = httpx.get(f"{proc.url}/metrics", headers=auth(), timeout=30)
    assert scraped.status_code == 200
    samples = {(s.name, s.labels.get("task"), s.labels.get("measure")): s.value
               for family in text_string_to_metric_families(scraped.text)
               for s in family.samples}
    key = ("storage-cleanup", "objects_scanned")
    assert samples[("cron_job_volume_warning", *key)] == 1
    assert samples[("cron_job_volume_limit", *key)] == pytest.approx(CAPACITY, rel=1e-3)
    assert samples[("cron_job_volume_crossing_timestamp_seconds", *key)] == pytest.approx(
        analytic.timestamp(), abs=7200)
    assert samples[("cron_job_volume_growth_per_day", *key)] == pytest.approx(
        1.05 ** (1 / 7) - 1, abs=1e-4)
