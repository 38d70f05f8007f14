"""A job whose runs take and process what the test says, timed by the test's clock."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec, RetryPolicy
from tests.conftest import FixedClock, auth, make_settings

ClientFactory = Callable[..., TestClient]
TOKEN = "metrics-token-0123456789abcdef"
USER, PASSWORD = "operator", "dashboard-password-0123456789"


class SizedJob:
    """Each run advances the clock by the seconds given to `run` and reports the records:
    the run log then holds exactly that duration."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.seconds = 0.0
        self.records = 0
        self.details: dict[str, Any] = {}  # what the next run writes in its details

    def __call__(self, ctx: JobContext) -> JobResult:
        self.clock.advance(seconds=self.seconds)
        return JobResult(records_processed=self.records, message="done",
                         details=dict(self.details))

    def spec(self, name: str, *, max_runtime: dt.timedelta = dt.timedelta(minutes=15),
             critical: bool = True) -> JobSpec:
        return JobSpec(name=name, schedule="0 3 * * *", func=self, description=name,
                       critical=critical, max_runtime=max_runtime,
                       retry=RetryPolicy(attempts=1))


def client_for(make_client: ClientFactory, db_url: str, tmp_path: Path, job: SizedJob,
               *names: str, max_runtime: dt.timedelta = dt.timedelta(minutes=15),
               **overrides: Any) -> TestClient:
    """A service running only `names` (each a SizedJob), with metrics and the dashboard on."""
    settings = make_settings(db_url, tmp_path, metrics_token=TOKEN, dashboard_user=USER,
                             dashboard_password=PASSWORD, **overrides)
    return make_client(settings=settings, jobs={
        name: job.spec(name, max_runtime=max_runtime) for name in names})


def run(client: TestClient, job: SizedJob, task: str, seconds: float, records: int,
        details: dict[str, Any] | None = None) -> dict[str, Any]:
    """One forced run through the cron endpoint, a day after the previous one."""
    job.seconds, job.records, job.details = seconds, records, details or {}
    response = client.post(f"/api/cron/{task}?force=1", headers=auth())
    assert response.status_code == 200, response.json()
    body: dict[str, Any] = response.json()
    job.clock.advance(days=1, seconds=-seconds)
    return body


def metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=auth(TOKEN))
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def label(task: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"task": task, **more}.items()))


def basic() -> dict[str, str]:
    """The dashboard's credentials (USER, PASSWORD)."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
