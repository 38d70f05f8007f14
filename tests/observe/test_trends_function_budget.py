"""Where one invocation is bounded (FUNCTION_MAX_DURATION, 300 s on Vercel), a job not made
of chunks must finish inside it: its duration trend is projected against that, not its
longer max runtime.  A chunked job continues over invocations and keeps its max runtime."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from app.core.registry import JOBS
from app.observe.trends import time_budget
from tests.conftest import FixedClock, auth
from tests.observe.sized_job import ClientFactory, SizedJob, client_for, run


def test_a_job_of_one_piece_is_projected_against_the_function_limit(
        make_client: ClientFactory, clock: FixedClock, db_url: str, tmp_path: Path) -> None:
    job = SizedJob(clock)
    client = client_for(make_client, db_url, tmp_path, job, "report",
                        max_runtime=dt.timedelta(minutes=15), function_max_duration=300)
    for i in range(12):
        run(client, job, "report", 100 * 1.05**i, 500)
    trend = client.get("/health", headers=auth()).json()["jobs"]["report"]["trend"]
    assert trend["budget_seconds"] == 300
    assert "exceeds its 300 s budget" in trend["sentence"]


def test_the_budget_of_each_shipped_job_under_a_function_limit() -> None:
    chunked = {"trip-reminders", "user-engagement", "storage-cleanup", "db-maintenance",
               "subscription-sync", "promo-cleanup"}
    for name, spec in JOBS.items():
        whole = spec.max_runtime.total_seconds()
        expected = whole if name in chunked else min(whole, 300.0)
        assert time_budget(spec, 300.0) == expected, name
        assert time_budget(spec) == whole
