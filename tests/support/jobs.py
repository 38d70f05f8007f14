"""Stand-in jobs for the runner's and the alerts' tests, and the run log they leave."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec, RetryPolicy
from app.db import table_of
from app.models import CronJobLog

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def fake_job(name: str, func: Callable[[JobContext], JobResult], **kw: Any
             ) -> dict[str, JobSpec]:
    """A registry of one job `name` running `func` at 03:00, retried FAST."""
    return {name: JobSpec(name, "0 3 * * *", func, "test job", retry=FAST, **kw)}


def broken(_ctx: JobContext) -> JobResult:
    raise ValueError("promo table is upside down")


def log_rows(engine: Engine) -> list[Any]:
    """Every row of the run log, oldest first."""
    log_t = table_of(CronJobLog)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(log_t).order_by(log_t.c.id)))
