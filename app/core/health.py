"""Is a job overdue or stuck at `now`?  Pure functions of the clock, plus one read.

A job is overdue when the next fire time strictly after its last successful run, plus
the job's grace, lies before `now` (the way healthchecks.io and Sentry Crons decide).  The
grace absorbs scheduler lateness (Vercel Hobby fires anywhere in the hour; GitHub Actions
can be hours late) and the job's own runtime.  A job that never succeeded is measured
from the first run the service ever recorded, so a fresh deployment is not flagged before
its first slot could have happened.  A run still `running` past its max runtime is stuck
(a run made of chunks, continued by a later call: past its max runtime from then).
A run whose heartbeat (app/core/heartbeat.py) is older than DEAD_AFTER is dead, and stuck,
at once: its process stopped, and the next call takes its work up.  A run that keeps
renewing its heartbeat is never dead, even past its max runtime (it is then only stuck).
A job whose latest finished real run ended `error` or `abandoned` is failing until a run
succeeds (the way healthchecks.io treats a fail signal): for a critical job that is an
issue at once, not a day later when it becomes overdue.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core import registry
from app.core.registry import JobSpec
from app.core.status import DONE, FAILED, WORKED, RunStatus
from app.db import table_of
from app.models import CronJobLog

log_t = table_of(CronJobLog)

# The default of settings.dead_after: a run whose heartbeat is older is dead.
DEAD_AFTER = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class JobFacts:
    """What the run log says about one job."""

    last_success: dt.datetime | None = None
    last_run: dt.datetime | None = None
    last_status: str | None = None
    last_message: str | None = None
    running_since: dt.datetime | None = None
    # Status of the latest real run that finished (a run in progress does not clear a
    # failure before it succeeds).
    last_outcome: str | None = None
    # The `running` row with the oldest heartbeat, and that heartbeat.
    heartbeat_run: uuid.UUID | None = None
    heartbeat_at: dt.datetime | None = None
    # That run's id, start and message (what an alert about it links to and quotes).
    last_outcome_run_id: uuid.UUID | None = None
    last_outcome_at: dt.datetime | None = None
    last_outcome_message: str | None = None


@dataclass(frozen=True)
class JobHealth:
    name: str
    critical: bool
    overdue: bool
    stuck: bool
    failing: bool  # its latest finished real run failed
    due_by: dt.datetime | None  # when it becomes overdue (next fire after last success + grace)
    next_fire: dt.datetime
    facts: JobFacts
    dead: bool = False  # a run stopped renewing its heartbeat (it is stuck too)

    @property
    def ok(self) -> bool:
        return not (self.overdue or self.stuck or self.dead or self.failing)


def job_health(spec: JobSpec, facts: JobFacts, now: dt.datetime,
               baseline: dt.datetime | None, dead_after: dt.timedelta = DEAD_AFTER
               ) -> JobHealth:
    reference = facts.last_success or baseline
    due_by = None
    overdue = False
    if reference is not None:
        due_by = registry.next_fire(spec.schedule, reference) + spec.grace
        overdue = now > due_by
    dead = facts.heartbeat_at is not None and now > facts.heartbeat_at + dead_after
    stuck = dead or (facts.running_since is not None
                     and now > facts.running_since + spec.max_runtime)
    failing = facts.last_outcome in FAILED
    return JobHealth(spec.name, spec.critical, overdue, stuck, failing, due_by,
                     registry.next_fire(spec.schedule, now), facts, dead)


def read_facts(engine: Engine, jobs: dict[str, JobSpec]
               ) -> tuple[dict[str, JobFacts], dt.datetime | None]:
    """Last success, last run, last finished run, oldest live `running` row and oldest
    heartbeat of a `running` row per job: four grouped reads and one of the live rows."""
    names = list(jobs)
    real = log_t.c.dry_run.is_(False)
    with engine.connect() as conn:
        success = dict(conn.execute(
            sa.select(log_t.c.job_name, sa.func.max(log_t.c.started_at))
            .where(log_t.c.job_name.in_(names), log_t.c.status.in_(DONE), real)
            .group_by(log_t.c.job_name)
        ).all())
        # A run continued by a later call (app/core/chunks.py) counts from then.
        running = dict(conn.execute(
            sa.select(log_t.c.job_name,
                      sa.func.min(sa.func.coalesce(log_t.c.resumed_at, log_t.c.started_at)))
            .where(log_t.c.job_name.in_(names), log_t.c.status == RunStatus.RUNNING)
            .group_by(log_t.c.job_name)
        ).all())
        last_rows = _latest(conn, names, real)
        outcomes = _latest(conn, names, real, log_t.c.status != RunStatus.RUNNING)
        baseline = conn.execute(sa.select(sa.func.min(log_t.c.started_at))).scalar()
        # Newest first, so each job keeps its oldest heartbeat.
        heartbeats = {row.job_name: row for row in conn.execute(
            sa.select(log_t.c.job_name, log_t.c.run_id, log_t.c.heartbeat_at)
            .where(log_t.c.job_name.in_(names), log_t.c.status == RunStatus.RUNNING,
                   log_t.c.heartbeat_at.is_not(None))
            .order_by(log_t.c.heartbeat_at.desc())
        )}
    facts = {}
    for name in names:
        row = last_rows.get(name)
        ended = outcomes.get(name)
        facts[name] = JobFacts(
            last_success=success.get(name),
            last_run=row.started_at if row else None,
            last_status=row.status if row else None,
            last_message=row.message if row else None,
            running_since=running.get(name),
            last_outcome=ended.status if ended else None,
            last_outcome_run_id=ended.run_id if ended else None,
            last_outcome_at=ended.started_at if ended else None,
            last_outcome_message=ended.message if ended else None,
            heartbeat_run=heartbeats[name].run_id if name in heartbeats else None,
            heartbeat_at=heartbeats[name].heartbeat_at if name in heartbeats else None,
        )
    return facts, baseline


def last_worked(engine: Engine, task: str) -> dt.datetime | None:
    """When the latest real run of `task` that did its work (not skipped, not failed)
    started: what a precondition's "since the last run" means."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(log_t.c.started_at))
            .where(log_t.c.job_name == task, log_t.c.status.in_(WORKED),
                   log_t.c.dry_run.is_(False))
        ).scalar()


def _latest(conn: sa.Connection, names: list[str], *conditions: sa.ColumnElement[bool]
            ) -> dict[str, Any]:
    """Each job's newest log row among those matching `conditions`: one grouped read."""
    latest = (
        sa.select(log_t.c.job_name, sa.func.max(log_t.c.id).label("id"))
        .where(log_t.c.job_name.in_(names), *conditions)
        .group_by(log_t.c.job_name)
        .subquery()
    )
    return {
        row.job_name: row
        for row in conn.execute(
            sa.select(log_t.c.job_name, log_t.c.run_id, log_t.c.started_at, log_t.c.status,
                      log_t.c.message)
            .join(latest, latest.c.id == log_t.c.id)
        )
    }


def evaluate(jobs: dict[str, JobSpec], facts: dict[str, JobFacts], now: dt.datetime,
             baseline: dt.datetime | None, dead_after: dt.timedelta = DEAD_AFTER
             ) -> tuple[list[JobHealth], list[str]]:
    """Every job's health and the list of problems that make the service unhealthy."""
    results = [job_health(spec, facts[name], now, baseline, dead_after)
               for name, spec in jobs.items()]
    issues = []
    for item in results:
        if item.overdue and item.critical:
            issues.append(f"{item.name} is overdue: no successful run since "
                          f"{_fmt(item.facts.last_success)}; was due by {_fmt(item.due_by)}")
        if item.dead:
            issues.append(f"{item.name} is dead: run {item.facts.heartbeat_run} stopped "
                          f"renewing its heartbeat at {_fmt(item.facts.heartbeat_at)}, over "
                          f"{dead_after.total_seconds():g} s ago; the next call takes up "
                          "its work")
        elif item.stuck:
            issues.append(f"{item.name} is stuck: running since "
                          f"{_fmt(item.facts.running_since)}, past its max runtime")
        if item.failing and item.critical:
            issues.append(f"{item.name}'s latest run failed ({item.facts.last_outcome}); "
                          "unhealthy until a run succeeds")
    return results, issues


def _fmt(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else "never"
