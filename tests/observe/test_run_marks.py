"""Unusual runs marked on the run log, through the real runner, and shown in /health,
/metrics, the dashboard's run history and Sentry (app/observe/run_marks.py)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.db import table_of
from app.models import CronJobLog
from tests.conftest import FixedClock, auth
from tests.observe.sized_job import (
    ClientFactory,
    SizedJob,
    basic,
    client_for,
    label,
    metrics,
    run,
)

log_t = table_of(CronJobLog)


def _marks(engine: Engine, run_id: str) -> Any:
    """The marks stored on the run's log row (None: it earned none)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(log_t.c.anomalies)
                            .where(log_t.c.run_id == uuid.UUID(run_id))).scalar_one()


def _history(client: TestClient, job: SizedJob, task: str, runs: int) -> None:
    """`runs` daily runs of about 40 s processing about 4,000 records."""
    rng = random.Random(16)
    for _ in range(runs):
        body = run(client, job, task, 40 * rng.uniform(0.9, 1.15),
                   int(4000 * rng.uniform(0.9, 1.1)))
        assert body["status"] == "success"


def test_a_slow_run_and_an_empty_run_are_flagged_with_figures(
        make_client: ClientFactory, engine: Engine, clock: FixedClock, db_url: str,
        tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "sized")
    _history(client, job, "sized", 12)
    assert client.get("/health").json().get("warnings") is None

    slow = run(client, job, "sized", 400, 4000)
    [mark] = _marks(engine, slow["run_id"])
    assert mark["kind"] == "slow" and mark["measure"] == "duration"
    assert mark["value"] == 400_000 and mark["runs"] == 12
    assert 36_000 <= mark["median"] <= 46_000 and mark["p95"] <= 46_000
    assert mark["factor"] == pytest.approx(400_000 / mark["p95"], rel=1e-3)
    assert mark["factor"] > 8
    assert mark["reason"].startswith("took 6.7 min, ")

    # /health: a warning, not 503; figures for the cron secret only.
    public = client.get("/health")
    assert public.status_code == 200 and public.json()["status"] == "healthy"
    assert public.json()["anomalies"] == {"sized": ["slow"]}
    assert public.json()["warnings"] == ["sized's latest run was unusual: slow"]
    detailed = client.get("/health", headers=auth()).json()
    assert detailed["warnings"] == [f"sized's latest run was unusual: {mark['reason']}"]
    assert detailed["jobs"]["sized"]["anomalies"]["run_id"] == slow["run_id"]
    assert detailed["jobs"]["sized"]["anomalies"]["marks"] == [mark]

    found = metrics(client)
    assert found[("cron_job_anomalous", label("sized"))] == 1
    assert found[("cron_job_anomaly_factor", label("sized", kind="slow"))] == pytest.approx(
        mark["factor"])

    empty = run(client, job, "sized", 40, 0)
    [zero] = _marks(engine, empty["run_id"])
    assert zero["kind"] == "no_records" and zero["measure"] == "records"
    assert zero["value"] == 0 and zero["runs"] == 13
    assert 3600 <= zero["median"] <= 4400
    assert zero["reason"] == (f"processed 0 records; the last 13 successful runs processed "
                              f"a median of {zero['median']:,.0f}")
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["anomalies"] == {"sized": ["no_records"]}

    # An ordinary run clears the warning; the marks stay on their rows.
    ordinary = run(client, job, "sized", 41, 4100)
    assert _marks(engine, ordinary["run_id"]) is None
    assert "anomalies" not in client.get("/health").json()
    assert metrics(client)[("cron_job_anomalous", label("sized"))] == 0

    page = client.get("/dashboard/jobs/sized", headers=basic())
    assert page.status_code == 200
    assert page.text.count('class="badge anomalous" data-kind="slow"') == 1
    assert page.text.count('class="badge anomalous" data-kind="no_records"') == 1
    assert f'title="{zero["reason"]}"' in page.text


def test_a_job_with_three_runs_of_history_is_never_flagged(
        make_client: ClientFactory, engine: Engine, clock: FixedClock, db_url: str,
        tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "young")
    _history(client, job, "young", 3)
    slow = run(client, job, "young", 400, 4000)
    empty = run(client, job, "young", 40, 0)
    assert _marks(engine, slow["run_id"]) is None
    assert _marks(engine, empty["run_id"]) is None
    body = client.get("/health", headers=auth()).json()
    assert "anomalies" not in body and "warnings" not in body
    assert body["jobs"]["young"]["anomalies"] is None
    assert metrics(client)[("cron_job_anomalous", label("young"))] == 0


def test_dry_runs_are_neither_judged_nor_a_baseline(
        make_client: ClientFactory, engine: Engine, clock: FixedClock, db_url: str,
        tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "sized")
    job.seconds, job.records = 40, 4000
    for _ in range(6):
        assert client.post("/api/cron/sized?dry_run=1", headers=auth()).status_code == 200
        clock.advance(days=1, seconds=-40)
    _history(client, job, "sized", 4)
    slow = run(client, job, "sized", 400, 4000)
    assert _marks(engine, slow["run_id"]) is None  # 4 real runs: too little history
    job.seconds, job.records = 400, 0
    assert client.post("/api/cron/sized?dry_run=1", headers=auth()).status_code == 200
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(log_t)
                            .where(log_t.c.anomalies.is_not(None))).scalar_one() == 0

