"""What a job receives and what it returns: the one entry signature every job shares.

A job is `def run(ctx: JobContext) -> JobResult`.  It never knows whether HTTP, the CLI or
a test called it; it reads the clock from `ctx.now`, measures its data window from
`ctx.as_of` (the slot it serves: a backfilled slot from days ago gets that day's window),
writes nothing when `ctx.dry_run`, and raises `TransientError` (or lets a network/database
error through) for the runner to retry.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.requirements import JobCheck, check_job
from app.core.status import JobStatus, RunStatus


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    engine: Engine
    now: dt.datetime
    run_id: uuid.UUID
    task: str
    slot: dt.datetime | None = None
    dry_run: bool = False
    force: bool = False
    trigger: str = "cli"
    attempt: int = 1
    deadline: dt.datetime | None = None
    # This invocation's end (time.monotonic()): a run made of chunks stops taking chunks
    # before it (app/core/chunks.py).  None: bounded by the run's `deadline` alone.
    until: float | None = None
    # When the run began: an earlier invocation, for a run continued (app/core/runner.py).
    origin: dt.datetime | None = None
    # The chunk being worked (its `seq`), in a run made of chunks (app/core/chunks.py).
    chunk: int | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("app.jobs"))
    # The runner's check of this job's tables (app/core/requirements.py), read by jobs whose
    # sources are optional; `schema_check()` makes it when a test calls a job directly.
    schema: JobCheck | None = None

    def schema_check(self) -> JobCheck:
        if self.schema is not None:
            return self.schema
        from app.core.registry import JOBS

        return check_job(self.engine, self.settings, JOBS[self.task])

    @property
    def as_of(self) -> dt.datetime:
        """The moment the job's data window is measured from: its slot when it serves one
        (a late delivery, a backfill of a past slot), else now.  Timestamps the job writes
        stay `now`.  A run continued by a later call keeps the window it began with."""
        return self.slot or self.origin or self.now

    def seconds_left(self, now: dt.datetime) -> float | None:
        """Time left in the run's budget at `now` (None when unbounded)."""
        if self.deadline is None:
            return None
        return (self.deadline - now).total_seconds()


@dataclass
class JobResult:
    records_processed: int = 0
    message: str = ""
    status: JobStatus = RunStatus.SUCCESS
    details: dict[str, Any] = field(default_factory=dict)
