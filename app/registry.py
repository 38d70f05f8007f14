"""The one list of jobs.  Routes, CLI, /health and the deployment files all read it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cronsim import CronSim

from app.jobs import promo_cleanup
from app.jobs.context import JobContext, JobResult

JobFunc = Callable[[JobContext], JobResult]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 1.0  # seconds; exponential with full jitter
    max_delay: float = 30.0


@dataclass(frozen=True)
class JobSpec:
    name: str
    schedule: str  # five numeric fields, UTC (Vercel's rules)
    func: JobFunc = field(repr=False)
    description: str
    critical: bool = False
    # How long after the expected fire time a missing run is still fine: scheduler
    # lateness (Vercel Hobby fires anywhere in the hour, GitHub Actions can be late) plus
    # the job's own runtime.
    grace: dt.timedelta = dt.timedelta(hours=2)
    max_runtime: dt.timedelta = dt.timedelta(minutes=5)
    retry: RetryPolicy = RetryPolicy()

    def explain(self) -> str:
        return str(CronSim(self.schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).explain())


def previous_fire(schedule: str, now: dt.datetime) -> dt.datetime:
    """The latest fire time at or before `now` (the slot a scheduled call belongs to)."""
    start = now.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    return next(CronSim(schedule, start, reverse=True))


def next_fire(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first fire time strictly after `after`."""
    return next(CronSim(schedule, after.astimezone(dt.UTC)))


_DAILY_GRACE = dt.timedelta(hours=3)
_WEEKLY_GRACE = dt.timedelta(hours=6)
_MONTHLY_GRACE = dt.timedelta(hours=12)

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in [
        JobSpec(
            name="promo-cleanup",
            schedule="0 3 * * *",
            func=promo_cleanup.run,
            description="Deactivate expired or exhausted promo codes, purge old unused ones, "
            "repair redemption counts.",
            critical=True,
            grace=_DAILY_GRACE,
            max_runtime=dt.timedelta(minutes=5),
        ),
    ]
}


def get_job(name: str) -> JobSpec | None:
    return JOBS.get(name)
