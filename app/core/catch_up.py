"""Missed slots, caught up: a slot no scheduler delivered is run once by a later call.

A job's slot is missed at `now` when all of these hold:

1. The job says a late run is better than none (`JobSpec.catch_up_within`, with the reason
   in app/core/registry.py).
2. The slot is past its grace, which is when `/health` starts calling the job overdue, and
   still within the job's useful lateness: `slot + grace < now <= slot + catch_up_within`.
   Only the latest slot past its grace is considered; an older one is past its usefulness.
3. The service was there: the slot is not older than the first run it ever recorded, so a
   fresh deployment catches up nothing it never saw (as `/health` flags nothing).
4. No real run of the job started since the slot's fire time: no delivery, however late,
   and no operator's run.  A delivery that failed is not missed: `/health` calls the job
   failing, and the scheduler's retry or an operator repeats it.  Catch-up heals silence;
   it never repeats a run.

Finding them is one grouped read of the run log.  The first, critical jobs first and then
the slot whose usefulness ends soonest, runs through the runner with trigger `catch-up`
and the missed slot as its slot: the lease and duplicate rules of a delivery of that slot
decide.  A late delivery after it answers `duplicate`; two calls catching up the same slot
run it once (under the lease, any real run since the slot settles a catch-up).  Its log row
is an ordinary run of the slot, so `/health` counts a caught-up slot as done.

A slot whose run was left `partial` (a chunked run paused at FUNCTION_MAX_DURATION,
app/core/chunks.py)
and not continued by a call of its own task is continued the same way, while it is still
useful (`unfinished_slots`): on Vercel alone, the next cron call of any task finishes it.

A cron call catches up at most one slot, synchronously, after its own run, and answers it
under `catch_up` (app/http/cron.py).  Synchronously because work after the answer is lost
on Vercel; one slot because that adds at most one job's run (bounded by its max runtime) to
the call.  `CRON_CATCH_UP=false` turns this off; `voyagesmart-cron catch-up` runs every
missed slot at once, for operators.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import registry
from app.core.registry import JobSpec
from app.core.runner import (
    CATCH_UP,
    SCHEDULED_TRIGGERS,
    DatabaseUnavailable,
    Runner,
    RunOutcome,
)
from app.core.status import RunStatus
from app.db import is_database_outage, table_of
from app.models import CronJobLog

log = logging.getLogger("app.core.catch_up")

log_t = table_of(CronJobLog)


@dataclass(frozen=True)
class MissedSlot:
    task: str
    slot: dt.datetime
    useful_until: dt.datetime  # slot + the job's catch_up_within
    critical: bool

    def as_json(self) -> dict[str, Any]:
        return {"task": self.task, "slot": self.slot.isoformat(),
                "useful_until": self.useful_until.isoformat(), "critical": self.critical}


def missed_slot(spec: JobSpec, last_run: dt.datetime | None, baseline: dt.datetime | None,
                now: dt.datetime) -> MissedSlot | None:
    """The slot of `spec` to catch up at `now`, given the start of its latest real run and
    of the first run the service recorded; None when there is none (the rules above)."""
    if spec.catch_up_within is None or baseline is None:
        return None
    # The latest slot strictly past its grace: health's overdue rule is `now > due_by`.
    slot = registry.previous_fire(spec.schedule, now - spec.grace - dt.timedelta(seconds=1))
    useful_until = slot + spec.catch_up_within
    if now > useful_until or slot < baseline:
        return None
    if last_run is not None and last_run >= slot:
        return None
    return MissedSlot(spec.name, slot, useful_until, spec.critical)


def missed_slots(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime
                 ) -> list[MissedSlot]:
    """Every missed slot at `now`, the one to run first first."""
    candidates = {name: spec for name, spec in jobs.items() if spec.catch_up_within is not None}
    if not candidates:
        return []
    with engine.connect() as conn:
        last_runs = dict(conn.execute(
            sa.select(log_t.c.job_name, sa.func.max(log_t.c.started_at))
            .where(log_t.c.job_name.in_(list(candidates)), log_t.c.dry_run.is_(False))
            .group_by(log_t.c.job_name)
        ).all())
        baseline = conn.execute(sa.select(sa.func.min(log_t.c.started_at))).scalar()
    found = [missed for name, spec in candidates.items()
             if (missed := missed_slot(spec, last_runs.get(name), baseline, now)) is not None]
    return sorted(found, key=lambda m: (not m.critical, m.useful_until, m.task))


def unfinished_slots(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime
                     ) -> list[MissedSlot]:
    """Slots whose run is `partial` and still worth finishing at `now`: within the job's
    useful lateness, or, for a job that has none, before its next slot."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(log_t.c.job_name, log_t.c.slot)
            .where(log_t.c.job_name.in_(list(jobs)), log_t.c.status == RunStatus.PARTIAL,
                   log_t.c.dry_run.is_(False), log_t.c.slot.is_not(None))
        ).all()
    found = []
    for name, slot in rows:
        spec = jobs[name]
        useful_until = (slot + spec.catch_up_within if spec.catch_up_within is not None
                        else registry.next_fire(spec.schedule, slot))
        if now <= useful_until:
            found.append(MissedSlot(name, slot, useful_until, spec.critical))
    return sorted(found, key=lambda m: (not m.critical, m.useful_until, m.task))


def follows_call(settings: Settings, trigger: str, *, dry_run: bool, force: bool) -> bool:
    """Does a cron call with these parameters catch up a missed slot after its own run?
    A scheduler's real call does; a dry run or a forced run is an operator's, and does not."""
    return (settings.cron_catch_up and settings.enable_cron_jobs
            and trigger in SCHEDULED_TRIGGERS and not dry_run and not force)


def catch_up_one(runner: Runner, until: float | None = None) -> RunOutcome | None:
    """Run the first missed slot; None when nothing is missed.  `until`: when the call's
    invocation ends (a catch-up shares its time budget).

    The call that carries it keeps its own answer: a database that fails here is logged and
    answered as the catch-up's `unavailable`, never as the call's."""
    try:
        now = runner.clock()
        missed = (missed_slots(runner.engine, runner.jobs, now)
                  or unfinished_slots(runner.engine, runner.jobs, now))
    except sa_exc.SQLAlchemyError as exc:
        if not is_database_outage(exc):
            raise
        log.warning("missed slots not looked for: %s", type(exc).__name__)
        return None
    if not missed:
        return None
    first = missed[0]
    log.info("catching up %s slot %s", first.task, first.slot.isoformat())
    try:
        return runner.run(first.task, missed_slot=first.slot, until=until)
    except DatabaseUnavailable as exc:
        return RunOutcome(first.task, None, RunStatus.UNAVAILABLE, CATCH_UP, first.slot,
                          message=f"{exc}; nothing was run")
