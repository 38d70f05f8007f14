"""/metrics sums what runs cost, from each log row's `resource_usage`."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app.core.registry import JOBS
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, auth, make_settings

TOKEN = "metrics-token-0123456789abcdef"


def _cost(cpu: float, db: float, queries: int, peak: int, **calls: int) -> dict[str, Any]:
    return {"cpu_seconds": cpu, "db_seconds": db, "db_queries": queries,
            "peak_memory_bytes": peak, "memory_growth_bytes": 0,
            "calls": {"stripe": 0, "smtp": 0, "storage": 0, **calls}}


def _log(engine: Engine, task: str, started: dt.datetime, cost: dict[str, Any] | None,
         dry_run: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert().values(
            run_id=uuid.uuid4(), job_name=task, trigger="vercel", started_at=started,
            ended_at=started + dt.timedelta(seconds=3), status="success", message="x",
            records_processed=0, attempts=1, dry_run=dry_run, resource_usage=cost))


def test_metrics_sum_cpu_database_time_and_calls_and_show_the_latest_peak(
        make_client: Callable[..., TestClient], engine: Engine, clock: FixedClock,
        db_url: str, tmp_path: Path) -> None:
    client = make_client(settings=make_settings(db_url, tmp_path, metrics_token=TOKEN))
    day = dt.timedelta(days=1)
    _log(engine, "subscription-sync", clock.now - 4 * day, None)  # logged before usage was
    _log(engine, "subscription-sync", clock.now - 3 * day,
         _cost(1.5, 0.25, 40, 200_000_000, stripe=120))
    _log(engine, "subscription-sync", clock.now - 2 * day,
         _cost(2.0, 0.5, 60, 150_000_000, stripe=80, smtp=1))
    _log(engine, "subscription-sync", clock.now - day,  # a dry run counts for nothing
         _cost(9.0, 9.0, 9, 999_000_000, stripe=999), dry_run=True)
    _log(engine, "storage-cleanup", clock.now - day, _cost(0.75, 0.125, 5, 90_000_000,
                                                           storage=33))

    text = client.get("/metrics", headers=auth(TOKEN)).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, task: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"task": task, **labels}.items())))]

    assert value("cron_run_cpu_seconds_total", "subscription-sync") == 3.5
    assert value("cron_run_db_seconds_total", "subscription-sync") == 0.75
    assert value("cron_run_db_statements_total", "subscription-sync") == 100
    assert value("cron_run_outbound_calls_total", "subscription-sync", service="stripe") == 200
    assert value("cron_run_outbound_calls_total", "subscription-sync", service="smtp") == 1
    assert value("cron_run_outbound_calls_total", "storage-cleanup", service="storage") == 33
    # The latest real run's peak, not the highest ever and not the dry run's.
    assert value("cron_run_peak_memory_bytes", "subscription-sync") == 150_000_000
    assert value("cron_run_peak_memory_bytes", "storage-cleanup") == 90_000_000
    for name in JOBS:  # every job has every series, zero when nothing was recorded
        assert value("cron_run_cpu_seconds_total", name) >= 0
        assert value("cron_run_peak_memory_bytes", name) >= 0
    assert value("cron_run_cpu_seconds_total", "promo-cleanup") == 0
