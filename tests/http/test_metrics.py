"""GET /metrics: Prometheus text read back by prometheus_client's own parser."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app.core.context import JobContext, JobResult
from app.core.registry import JOBS, JobSpec, RetryPolicy
from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, auth, make_settings

TOKEN = "metrics-token-0123456789abcdef"


def _fail(ctx: JobContext) -> JobResult:
    raise ValueError("broken on purpose")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _log(engine: Engine, task: str, status: str, started: dt.datetime, seconds: float,
         records: int = 0, dry_run: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert().values(
            run_id=uuid.uuid4(), job_name=task, trigger="vercel", started_at=started,
            ended_at=started + dt.timedelta(seconds=seconds), status=status, message="x",
            records_processed=records, attempts=1, dry_run=dry_run))


@pytest.fixture
def jobs() -> dict[str, JobSpec]:
    failing = JobSpec(name="always-fails", schedule="0 4 * * *", func=_fail,
                      description="fails", critical=True, retry=RetryPolicy(attempts=1))
    return {**JOBS, failing.name: failing}


def test_metrics_parse_and_show_every_job(make_client: Callable[..., TestClient],
                                          engine: Engine, clock: FixedClock,
                                          jobs: dict[str, JobSpec], db_url: str,
                                          tmp_path: Path) -> None:
    client = make_client(jobs=jobs, settings=make_settings(db_url, tmp_path,
                                                           metrics_token=TOKEN))
    base = clock.now - dt.timedelta(days=3)
    _log(engine, "promo-cleanup", "success", base, 2.5, records=7)
    _log(engine, "promo-cleanup", "success", base + dt.timedelta(days=1), 40, records=3)
    _log(engine, "promo-cleanup", "error", base + dt.timedelta(days=2), 0.2)
    _log(engine, "promo-cleanup", "success", base, 1, records=1000, dry_run=True)
    assert client.post("/api/cron/always-fails?force=1", headers=auth()).status_code == 500
    client.get("/api/cron/promo-cleanup", headers=auth("wrong" * 8))

    response = client.get("/metrics", headers=auth(TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("cron_runs_total", task="promo-cleanup", status="success") == 2  # no dry run
    assert value("cron_runs_total", task="promo-cleanup", status="error") == 1
    assert value("cron_runs_total", task="always-fails", status="error") == 1
    assert value("cron_records_processed_total", task="promo-cleanup") == 10
    assert value("cron_run_duration_seconds_count", task="promo-cleanup") == 3
    assert value("cron_run_duration_seconds_bucket", task="promo-cleanup", le="1.0") == 1
    assert value("cron_run_duration_seconds_bucket", task="promo-cleanup", le="5.0") == 2
    assert value("cron_run_duration_seconds_bucket", task="promo-cleanup", le="+Inf") == 3
    assert value("cron_run_duration_seconds_sum", task="promo-cleanup") == pytest.approx(42.7)
    assert value("cron_last_success_timestamp_seconds", task="promo-cleanup") == \
        (base + dt.timedelta(days=1)).timestamp()
    assert value("cron_last_success_timestamp_seconds", task="always-fails") == 0
    # Last success two days ago on a daily schedule with 3 h grace: overdue.
    assert value("cron_job_overdue", task="promo-cleanup", critical="true") == 1
    assert value("cron_job_stuck", task="promo-cleanup") == 0
    assert value("cron_auth_failures_last_hour") == 1
    assert value("cron_refused_requests_last_hour", reason="auth_failed") == 1
    # Every registered job appears, whoever added it.
    for name in jobs:
        assert ("cron_job_overdue", (("critical", str(jobs[name].critical).lower()),
                                     ("task", name))) in samples
        assert value("cron_runs_total", task=name, status="success") >= 0


def test_metrics_accept_the_cron_secret_too(client: TestClient) -> None:
    assert client.get("/metrics", headers=auth()).status_code == 200


@pytest.mark.parametrize("headers", [{}, auth("wrong-token-" * 3), {"Authorization": "Basic x"}])
def test_metrics_refuse_without_the_token(make_client: Callable[..., TestClient],
                                          db_url: str, tmp_path: Path,
                                          headers: dict[str, Any], engine: Engine) -> None:
    client = make_client(settings=make_settings(db_url, tmp_path, metrics_token=TOKEN))
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "cron_runs" not in response.text
    from tests.conftest import rows

    [row] = rows(engine, "SELECT path, outcome, status_code FROM cron_audit_log")
    assert (row.path, row.outcome, row.status_code) == ("/metrics", "auth_failed", 401)
