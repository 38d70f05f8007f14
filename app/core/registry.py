"""The one list of jobs.  Routes, CLI, /health and the deployment files all read it."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cronsim import CronSim
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.requirements import ADMIN_EMAILS, SMTP_HOST, STRIPE_KEY, Setting, Uses, uses
from app.core.schedule_check import EVERY_TABLE, Group, Planned
from app.voyagesmart.file_references import SOURCES

JobFunc = Callable[[JobContext], JobResult]
# A cheap check run before the job: the reason there is nothing to do (the run ends
# `skipped` with it, touching nothing), or None to run.  A forced run does not ask.
Precondition = Callable[[JobContext], str | None]
# Puts back what one run removed beyond archived rows (e.g. quarantined files):
# (settings, engine, run_id, now, dry_run) -> figures for the operator.
RestoreFunc = Callable[[Settings, Engine, uuid.UUID, dt.datetime, bool], dict[str, Any]]


def _job(module: str) -> JobFunc:
    """`app.jobs.<module>.run`, imported on the first run: a CLI run or a serverless
    function imports the one job it runs, not all eight (Stripe's SDK, boto3, ...)."""

    def run(ctx: JobContext) -> JobResult:
        func: JobFunc = importlib.import_module(f"app.jobs.{module}").run
        return func(ctx)

    run.__qualname__ = f"app.jobs.{module}.run"
    return run


def _skip_when(module: str) -> Precondition:
    """`app.jobs.<module>.nothing_to_do`, imported on the first run like the job."""

    def nothing_to_do(ctx: JobContext) -> str | None:
        func: Precondition = importlib.import_module(f"app.jobs.{module}").nothing_to_do
        return func(ctx)

    nothing_to_do.__qualname__ = f"app.jobs.{module}.nothing_to_do"
    return nothing_to_do


def _restorer(module: str) -> RestoreFunc:
    """`app.jobs.<module>.restore`, imported when an operator restores a run."""

    def restore(settings: Settings, engine: Engine, run_id: uuid.UUID, now: dt.datetime,
                dry_run: bool) -> dict[str, Any]:
        func: RestoreFunc = importlib.import_module(f"app.jobs.{module}").restore
        return func(settings, engine, run_id, now, dry_run)

    restore.__qualname__ = f"app.jobs.{module}.restore"
    return restore


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
    # Is a late run better than none, and how late is it still useful?  A slot no scheduler
    # delivered is run by the next cron call of any task once past its grace, until this
    # long after its fire time (app/core/catch_up.py); None: never caught up, the next slot
    # does the work.  Longer than the grace, shorter than the gap to the next slot.
    catch_up_within: dt.timedelta | None = None
    retry: RetryPolicy = RetryPolicy()
    # What the job needs to run here (app/core/requirements.py): its tables and columns, and
    # the settings of its integration.  `schema check`, /health and the runner read it.
    uses: tuple[Uses, ...] = ()
    settings: tuple[Setting, ...] = ()
    # Archived rows are restored for every job; this puts back anything else it removed.
    restore: RestoreFunc | None = field(default=None, repr=False)
    # Skips the run when there is nothing to do (the runner asks before the job).
    precondition: Precondition | None = field(default=None, repr=False)
    # Its run is made of chunks (app/core/chunks.py): it pauses at an invocation's time
    # budget and the next call continues it, so its run may outlast one invocation.
    chunked: bool = False

    def explain(self) -> str:
        return explain(self.schedule)


def explain(schedule: str) -> str:
    """`0 2 * * *` in words."""
    return str(CronSim(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).explain())


def previous_fire(schedule: str, now: dt.datetime) -> dt.datetime:
    """The latest fire time at or before `now` (the slot a scheduled call belongs to)."""
    start = now.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    return next(CronSim(schedule, start, reverse=True))


def next_fire(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first fire time strictly after `after`."""
    return next(CronSim(schedule, after.astimezone(dt.UTC)))


class BadSlot(ValueError):
    """A slot asked for by hand that cannot be run: not an ISO time, not one of the
    schedule's fire times, or in the future.  The message says which."""


def parse_slot(text: str) -> dt.datetime:
    """An ISO 8601 time (`2026-11-28T08:00:00Z`, `2026-11-28T08:00+00:00`); without an
    offset it is UTC, like every schedule."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadSlot(f"slot {text[:40]!r} is not an ISO 8601 time "
                      "(e.g. 2026-11-28T08:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def check_slot(spec: JobSpec, slot: dt.datetime, now: dt.datetime) -> dt.datetime:
    """`slot` itself when the schedule fires then and it is not in the future; else
    BadSlot naming the schedule's fire times around it."""
    slot = slot.astimezone(dt.UTC)
    if slot > now:
        raise BadSlot(f"slot {slot.isoformat()} is in the future (now "
                      f"{now.astimezone(dt.UTC).replace(microsecond=0).isoformat()}); only a "
                      "past slot can be run")
    before = previous_fire(spec.schedule, slot)
    if before != slot:
        after = next_fire(spec.schedule, before)
        raise BadSlot(f"{spec.name} ({spec.schedule}) has no slot at {slot.isoformat()}; "
                      f"the nearest are {before.isoformat()} and {after.isoformat()}")
    return slot


_SUBSCRIPTION_COLUMNS = ("id", "user_id", "tier", "status", "valid_until",
                         "stripe_subscription_id", "stripe_customer_id", "current_period_end",
                         "cancel_at_period_end", "created_at", "updated_at")
_HISTORY_COLUMNS = ("id", "user_id", "event_type", "tier", "status",
                    "stripe_subscription_id", "stripe_customer_id", "event_timestamp",
                    "details", "created_at")
_SIGN_INS = uses("auth.users", "id", "last_sign_in_at",
                 optional="falls back to users.last_login, which the app never updates")
_TRIP_ACTIVITY = (
    uses("trips", "id", "owner_id", "created_at", "updated_at"),
    uses("trip_participants", "trip_id", "user_id", "invitation_status", "created_at"),
    uses("trip_media", "trip_id", "user_id", "created_at"),
    uses("documents", "trip_id", "user_id", "created_at", "updated_at"),
    uses("expenses", "paid_by", "created_at", "updated_at"),
)
_BILLING = (
    uses("user_subscriptions", *_SUBSCRIPTION_COLUMNS),
    uses("subscriptions", "tier", "price", "currency", "interval"),
    uses("subscription_history", *_HISTORY_COLUMNS),
    # A grant is a promo code's when the user has a redemption
    # (app/voyagesmart/subscription_facts.py).
    uses("promo_code_redemptions", "user_id"),
)

_DAILY_GRACE = dt.timedelta(hours=3)
_WEEKLY_GRACE = dt.timedelta(hours=6)
_MONTHLY_GRACE = dt.timedelta(hours=12)

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in [
        JobSpec(
            name="promo-cleanup",
            schedule="0 3 * * *",
            func=_job("promo_cleanup"),
            chunked=True,
            description="Deactivate expired or used-up promo codes, raise used_count to the "
            "redemptions recorded, delete (archived) old codes never redeemed, purge the "
            "archive past its retention; statistics per tier.",
            critical=True,
            grace=_DAILY_GRACE,
            max_runtime=dt.timedelta(minutes=5),
            # Same day: an expired code stays redeemable until the run; after that the next
            # slot does the same work.
            catch_up_within=dt.timedelta(hours=20),
            uses=(
                uses("promo_codes", "id", "code", "tier", "max_uses", "used_count",
                     "expires_at", "is_active", "updated_at",
                     writes=("UPDATE", "DELETE")),
                uses("promo_code_redemptions", "promo_code_id"),
                # A redemption's history row outlives its redemption row and the account.
                uses("subscription_history", "event_type", "details"),
            ),
            precondition=_skip_when("promo_cleanup"),
        ),
        JobSpec(
            name="subscription-sync",
            schedule="0 2 * * *",
            func=_job("subscription_sync"),
            chunked=True,
            description="Reconcile user_subscriptions that have a Stripe subscription with "
            "Stripe: tier, status, billing period, cancellation; history for every change.",
            critical=True,
            grace=_DAILY_GRACE,
            # Listing pages 100 subscriptions per call; the one-by-one path at 20 req/s
            # (test key) checks about 10,000 in this budget, and stops cleanly if not.
            max_runtime=dt.timedelta(minutes=10),
            # Same day: tiers out of step with Stripe stay wrong until the run; Stripe takes the
            # calls at any hour, and the next slot does the same work.
            catch_up_within=dt.timedelta(hours=20),
            retry=RetryPolicy(attempts=3, base_delay=5.0, max_delay=60.0),
            uses=(
                uses("user_subscriptions", *_SUBSCRIPTION_COLUMNS, writes=("UPDATE",)),
                uses("subscription_history", *_HISTORY_COLUMNS, writes=("INSERT",)),
            ),
            settings=(STRIPE_KEY,),
            restore=_restorer("subscription_sync"),
            precondition=_skip_when("subscription_sync"),
        ),
        JobSpec(
            name="subscription-expiry",
            schedule="0 0 * * *",
            func=_job("subscription_expiry"),
            description="Move tiers past valid_until (no Stripe subscription) or past a "
            "period canceled at its end to free/inactive, with a subscription_expired "
            "history row (the app's check-subscriptions route).",
            critical=True,
            grace=_DAILY_GRACE,
            max_runtime=dt.timedelta(minutes=5),
            # Same day: ended tiers keep their paid features until the run.
            catch_up_within=dt.timedelta(hours=20),
            uses=(
                uses("user_subscriptions", *_SUBSCRIPTION_COLUMNS, writes=("UPDATE",)),
                uses("subscription_history", *_HISTORY_COLUMNS, writes=("INSERT",)),
            ),
            restore=_restorer("subscription_expiry"),
            precondition=_skip_when("subscription_expiry"),
        ),
        JobSpec(
            name="analytics",
            schedule="0 3 * * 1",
            func=_job("analytics"),
            description="Weekly engagement, subscription conversion and usage by tier for "
            "the last ISO week; one row per week.",
            grace=_WEEKLY_GRACE,
            max_runtime=dt.timedelta(minutes=10),
            # Within the week: the run reports the ISO week before the one it runs in, the same
            # week until Sunday 03:00 (six days after the slot).
            catch_up_within=dt.timedelta(days=6),
            uses=(
                uses("users", "id", "created_at", "last_login"),
                _SIGN_INS,
                *_TRIP_ACTIVITY,
                *_BILLING,
            ),
        ),
        JobSpec(
            name="subscription-report",
            schedule="0 4 1 * *",
            func=_job("subscription_report"),
            description="Previous month's subscriptions and MRR by tier, emailed once to "
            "ADMIN_EMAILS with a CSV; old reports archived.",
            grace=_MONTHLY_GRACE,
            max_runtime=dt.timedelta(minutes=10),
            # Within days: the admins read the previous month's figures in the month's first
            # days; later, `voyagesmart-cron report` answers better than a stray email.
            catch_up_within=dt.timedelta(days=3),
            uses=_BILLING,
            settings=(SMTP_HOST, ADMIN_EMAILS),
        ),
        JobSpec(
            name="db-maintenance",
            schedule="0 1 * * 0",
            func=_job("db_maintenance"),
            chunked=True,
            description="Vacuum and analyze tables with many dead tuples, rebuild invalid or "
            "bloated indexes, reset query statistics.",
            critical=True,
            grace=_WEEKLY_GRACE,
            # A long VACUUM must not let the lease expire under it.
            max_runtime=dt.timedelta(hours=1),
            # The same Sunday: a vacuum a day late beats a week of bloat, but not in a
            # weekday's traffic (until 19:00 UTC).
            catch_up_within=dt.timedelta(hours=18),
            retry=RetryPolicy(attempts=2, base_delay=5.0),
        ),
        JobSpec(
            name="storage-cleanup",
            schedule="0 2 * * 0",
            func=_job("storage_cleanup"),
            chunked=True,
            description="Delete stale temporary uploads and files no row references, "
            "recompress old media.",
            grace=_WEEKLY_GRACE,
            max_runtime=dt.timedelta(hours=1),
            # Never: a week late costs only storage, and an hour-long listing of every bucket is
            # the last thing to add to another task's call.
            catch_up_within=None,
            retry=RetryPolicy(attempts=2, base_delay=5.0),
            uses=tuple(source.uses() for source in SOURCES),
            # Puts back what a run moved to the storage quarantine.
            restore=_restorer("storage_cleanup"),
            precondition=_skip_when("storage_cleanup"),
        ),
        JobSpec(
            name="trip-reminders",
            schedule="0 8 * * *",
            func=_job("trip_reminders"),
            chunked=True,
            description="Email the owner and accepted participants of trips starting in "
            "REMINDER_DAYS_AHEAD days, once each.",
            critical=True,
            grace=_DAILY_GRACE,
            # About 10,000 emails over one SMTP connection fit well inside; a run that
            # reaches 90% of it stops claiming and leaves the rest pending for the next.
            max_runtime=dt.timedelta(minutes=15),
            # The same day: the target day is the slot's, so a late run mails the same trips;
            # by 20:00 UTC it is evening in Europe and a reminder would arrive at night.
            catch_up_within=dt.timedelta(hours=12),
            retry=RetryPolicy(attempts=3, base_delay=5.0, max_delay=60.0),
            uses=(
                uses("trips", "id", "name", "destination", "start_date", "end_date",
                     "owner_id"),
                uses("trip_participants", "trip_id", "user_id", "invitation_status"),
                uses("users", "id", "email", "full_name", "preferences"),
            ),
            settings=(SMTP_HOST,),
            precondition=_skip_when("trip_reminders"),
        ),
        JobSpec(
            name="user-engagement",
            schedule="0 5 1 * *",
            func=_job("user_engagement"),
            chunked=True,
            description="Email users inactive for INACTIVITY_DAYS once per inactivity "
            "period; store the month's engagement metrics.",
            grace=_MONTHLY_GRACE,
            max_runtime=dt.timedelta(minutes=30),
            # Within days: the month is the slot's, and a re-engagement email a few days into
            # the month still reads as that month's.
            catch_up_within=dt.timedelta(days=3),
            retry=RetryPolicy(attempts=3, base_delay=5.0, max_delay=60.0),
            uses=(
                uses("users", "id", "email", "full_name", "preferences", "created_at",
                     "last_login"),
                _SIGN_INS,
                *_TRIP_ACTIVITY,
            ),
            settings=(SMTP_HOST,),
        ),
    ]
}

# Paths that keep an existing schedule working: VoyageSmart's own cron route.
ALIASES = {"check-subscriptions": "subscription-expiry"}


@dataclass(frozen=True)
class GroupSpec:
    """Jobs one scheduler entry runs together (the seed's `vercel.json`: Vercel Hobby takes
    two crons).  Members that share no table run in parallel (app/core/groups.py)."""

    name: str
    schedule: str  # five numeric fields, UTC
    members: tuple[str, ...]
    description: str

    def explain(self) -> str:
        return explain(self.schedule)


GROUPS: dict[str, GroupSpec] = {
    group.name: group
    for group in [
        GroupSpec(
            name="daily-maintenance",
            schedule="0 2 * * *",
            members=("subscription-sync", "promo-cleanup", "trip-reminders"),
            description="The daily jobs of the seed's schedule: Stripe reconciliation, "
            "promo codes, trip reminders.",
        ),
        GroupSpec(
            name="weekly-cleanup",
            schedule="0 1 * * 0",
            members=("db-maintenance", "storage-cleanup"),
            description="The weekly cleanups: database maintenance, then storage.",
        ),
    ]
}


def get_group(name: str, groups: Mapping[str, GroupSpec] | None = None) -> GroupSpec | None:
    return (GROUPS if groups is None else groups).get(name)


def scheduled(jobs: dict[str, JobSpec], mode: str,
              groups: Mapping[str, GroupSpec] | None = None) -> dict[str, JobSpec]:
    """The jobs as the deployment calls them.  Under SCHEDULE_MODE=groups a member carries
    its group's schedule: its slot (the runner), its duplicate rule (same slot) and its
    overdue rule (app/core/health.py) all follow the group, so trip-reminders run by
    daily-maintenance at 02:00 is neither a duplicate nor overdue for its own 08:00."""
    if mode != "groups":
        return jobs
    out = dict(jobs)
    for group in (GROUPS if groups is None else groups).values():
        for member in group.members:
            if member in out:
                out[member] = replace(out[member], schedule=group.schedule)
    return out


def planned(jobs: Mapping[str, JobSpec] | None = None) -> dict[str, Planned]:
    """The registry as app/core/schedule_check.py reads it."""
    return {name: Planned(spec.schedule, tables_touched(spec), spec.max_runtime.total_seconds())
            for name, spec in (JOBS if jobs is None else jobs).items()}


def planned_groups(groups: Mapping[str, GroupSpec] | None = None) -> dict[str, Group]:
    return {name: Group(g.schedule, g.members)
            for name, g in (GROUPS if groups is None else groups).items()}


def tables_touched(spec: JobSpec) -> frozenset[str]:
    """The VoyageSmart tables a job reads or writes; a job that declares none (VACUUM,
    REINDEX over the whole database) touches every table."""
    return frozenset(u.table for u in spec.uses) or frozenset({EVERY_TABLE})


def get_job(name: str) -> JobSpec | None:
    return JOBS.get(name) or JOBS.get(ALIASES.get(name, ""))
