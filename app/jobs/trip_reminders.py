"""trip-reminders: email every traveller of a trip that starts in `REMINDER_DAYS_AHEAD` days.

Steps:

1. The target day is the run's slot day (else its start) in `CRON_TIMEZONE`, plus
   `REMINDER_DAYS_AHEAD`: a run that GitHub Actions fires hours late still serves its
   slot's day, and a retry of the same slot serves the same day.
2. Recipients, in one streamed query: the owner and every participant with
   `invitation_status = 'accepted'` of each trip starting that day, who has a `users`
   row; pending and declined invitations get nothing.  Each is screened
   (app/mail/recipients.py): who unsubscribed from trip reminders, opted out in their
   preferences, or whose preferences or address cannot be used is skipped, counted and
   named by user id; one bad row never stops the others' reminders.
3. Count, in chunks of consecutive trips (about RANGE_SIZE travellers each): who would
   be emailed, already was, or is skipped, writing nothing.
4. Brake (app/core/safety.py), once every count chunk is done: the reminders this run
   would send, against the day's usual volume, the median number of reminders per
   target day over the last `TRIP_REMINDERS_BRAKE_BASELINE_DAYS` days (a day without
   any counts as 0).  Above both `TRIP_REMINDERS_SEND_BRAKE_COUNT` and
   `TRIP_REMINDERS_SEND_BRAKE_SHARE` times that median (with no history: above the
   count), nothing is planned and the run ends `error` with the figures and sample keys.
   Past it, plan in the same trip chunks: one `cron_notification` row per (reminder
   kind, trip, user, trip start date), inserted `pending` before anything is sent; a key
   that already exists is not planned again, whatever its state.  So every step of a run
   fits an invocation's budget, however many travellers the day has.
5. Settle what a dead run left mid-batch (app/mail/delivery.py); expire pending reminders
   whose trip has already started (a run that stopped early days ago), and withdraw those
   of travellers who unsubscribed since.
6. Send every pending reminder over one SMTP connection, at most once
   (app/mail/delivery.py states the rule and its one ambiguous window), in chunks of
   consecutive ids (app/core/chunks.py): a run that reaches its invocation's time budget
   answers `partial` and the next call sends the rest, under the same run.

Skipped (nothing to do, `nothing_to_do`) when no trip starts on the target day and no
reminder of an earlier run is still pending: two indexed reads.

A dry run reports who would be emailed, skipped and braked exactly as the real run would,
and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import statistics
import uuid
import zoneinfo
from collections.abc import Iterator
from itertools import chain
from typing import Any

import sqlalchemy as sa

from app.core.batching import stream_rows
from app.core.chunks import Chunked, Plan
from app.core.context import JobContext, JobResult
from app.core.safety import SAMPLES, Brake
from app.core.status import RunStatus
from app.db import table_of
from app.mail import delivery as notify
from app.mail.ledger import notifications
from app.mail.recipients import Screen, candidate_columns
from app.mail.templates import resolve_language
from app.mail.unsubscribe import TRIP_REMINDERS, opted_out
from app.models import Trip, TripParticipant, User

KIND = TRIP_REMINDERS
TEMPLATE = "trip_reminder"

trips = table_of(Trip)
participants = table_of(TripParticipant)
users = table_of(User)


def target_date(ctx: JobContext) -> dt.date:
    moment = ctx.as_of
    local_day = moment.astimezone(zoneinfo.ZoneInfo(ctx.settings.cron_timezone)).date()
    return local_day + dt.timedelta(days=ctx.settings.reminder_days_ahead)


def nothing_to_do(ctx: JobContext) -> str | None:
    """The precondition (app/core/registry.py): no trip starts on the target day, and no
    reminder waits to be sent (a run stopped at its budget, a dead run's batch)."""
    day = target_date(ctx)
    n = notifications.c
    with ctx.engine.connect() as conn:
        trip, waiting = conn.execute(sa.select(
            sa.exists().where(trips.c.start_date == day).label("trip"),
            sa.exists().where(n.kind == KIND, n.status == "pending").label("waiting"),
        )).one()
    if trip or waiting:
        return None
    return f"no trip starts on {day} and no reminder is pending"


# Travellers per count or plan chunk (trips are never split: a trip is one chunk's).
RANGE_SIZE = 5000


def _on(day: dt.date, first: Any = None, last: Any = None) -> sa.ColumnElement[bool]:
    """Trips starting on `day`, with an id from `first` to `last` when given."""
    where = trips.c.start_date == day
    if first is not None and last is not None:
        where = sa.and_(where, trips.c.id.between(uuid.UUID(str(first)), uuid.UUID(str(last))))
    return where


def trip_ranges(ctx: JobContext, day: dt.date, size: int | None = None
                ) -> list[dict[str, str]]:
    """The trips starting on `day` as consecutive id ranges of about `size` travellers
    ({"first": id, "last": id}), by one grouped read: the chunks of steps 3 and 4."""
    accepted = sa.and_(participants.c.trip_id == trips.c.id,
                       participants.c.invitation_status == "accepted",
                       participants.c.user_id.is_not(None),
                       participants.c.user_id != trips.c.owner_id)  # the owner is the 1
    per_trip = (
        sa.select(trips.c.id, (sa.func.count(participants.c.user_id) + 1).label("n"))
        .select_from(trips.outerjoin(participants, accepted))
        .where(_on(day)).group_by(trips.c.id).subquery()
    )
    # A whole number on both databases (PostgreSQL's sum of bigints is a numeric).
    upto = sa.cast(sa.func.sum(per_trip.c.n).over(order_by=per_trip.c.id), sa.BigInteger)
    running = sa.select(per_trip.c.id, upto.label("upto")).subquery()
    group = ((running.c.upto - 1) // max(1, size or RANGE_SIZE)).label("g")
    # PostgreSQL has no min(uuid): each group's ends are the rows where the group changes.
    edges = sa.select(
        running.c.id, group,
        sa.func.lag(group).over(order_by=running.c.id).label("before"),
        sa.func.lead(group).over(order_by=running.c.id).label("after")).subquery()
    ranges: list[dict[str, str]] = []
    with ctx.engine.connect() as conn:
        for trip_id, g, before, _after in conn.execute(
                sa.select(edges.c.id, edges.c.g, edges.c.before, edges.c.after)
                .where(sa.or_(edges.c.before.is_(None), edges.c.before != edges.c.g,
                              edges.c.after.is_(None), edges.c.after != edges.c.g))
                .order_by(edges.c.id)):
            if before is None or before != g:
                ranges.append({"first": str(trip_id), "last": str(trip_id)})
            ranges[-1]["last"] = str(trip_id)
    return ranges


def recipients_query(day: dt.date, first: Any = None, last: Any = None) -> sa.Select[Any]:
    """Each (trip, traveller) pair of the trips starting on `day` (with an id from `first`
    to `last` when given), with what the email says.

    Served by `ix_trips_start_date` and `ix_trip_participants_accepted_trip`.
    """
    owners = sa.select(trips.c.id.label("trip_id"), trips.c.owner_id.label("user_id")).where(
        _on(day, first, last))
    accepted = (
        sa.select(participants.c.trip_id, participants.c.user_id)
        .join(trips, trips.c.id == participants.c.trip_id)
        .where(_on(day, first, last), participants.c.invitation_status == "accepted",
               participants.c.user_id.is_not(None))
    )
    travellers = sa.union(owners, accepted).subquery("travellers")  # UNION: owner once
    return (
        sa.select(
            trips.c.id.label("trip_id"), trips.c.name, trips.c.destination,
            trips.c.start_date, trips.c.end_date,
            users.c.id.label("user_id"), users.c.email, users.c.full_name,
            *candidate_columns(KIND, consent=False),
            sa.func.count().over(partition_by=travellers.c.trip_id).label("travellers"),
        )
        .select_from(travellers)
        .join(trips, trips.c.id == travellers.c.trip_id)
        .join(users, users.c.id == travellers.c.user_id)
        .order_by(trips.c.id, users.c.id)
    )


def dedupe_key(days_ahead: int, trip_id: Any, user_id: Any, start: dt.date) -> str:
    return f"{KIND}:{days_ahead}d:{trip_id}:{user_id}:{start.isoformat()}"


def _planned(ctx: JobContext, day: dt.date, screen: Screen, samples: list[str],
             first: Any = None, last: Any = None) -> Iterator[notify.Planned]:
    settings = ctx.settings
    base = settings.app_base_url
    rows = chain.from_iterable(stream_rows(ctx.engine, recipients_query(day, first, last),
                                           1000))
    for row in rows:
        if not screen.admit(row):
            continue
        key = dedupe_key(settings.reminder_days_ahead, row.trip_id, row.user_id, day)
        if len(samples) < SAMPLES:
            samples.append(key)
        name = (row.full_name or "").strip() or row.email.split("@", 1)[0]
        yield notify.Planned(
            key=key,
            user_id=row.user_id,
            recipient=row.email,
            language=resolve_language(row.preferences, TEMPLATE),
            trip_id=row.trip_id,
            reference_date=day,
            payload={
                "recipient_name": name,
                "days_ahead": settings.reminder_days_ahead,
                "trip": {
                    "name": row.name,
                    "destination": row.destination,
                    "start_date": row.start_date.isoformat(),
                    "end_date": row.end_date.isoformat() if row.end_date else None,
                    "participants": int(row.travellers),
                    "url": f"{base}/trips/{row.trip_id}",
                },
            },
        )


def usual_volume(ctx: JobContext, day: dt.date) -> tuple[int, list[int]]:
    """The median number of reminders per target day over the days before `day` (a day
    without any counts as 0), and those days' counts, oldest first."""
    days = ctx.settings.trip_reminders_brake_baseline_days
    first = day - dt.timedelta(days=days)
    n = notifications.c
    with ctx.engine.connect() as conn:
        counts: dict[dt.date, int] = dict(conn.execute(
            sa.select(n.reference_date, sa.func.count())
            .where(n.kind == KIND, n.reference_date >= first, n.reference_date < day)
            .group_by(n.reference_date)
        ).all())
    per_day = [int(counts.get(first + dt.timedelta(days=i), 0)) for i in range(days)]
    return round(statistics.median(per_day)), per_day


def _brake(ctx: JobContext, day: dt.date, samples: list[str], details: dict[str, Any]
           ) -> notify.BrakeCheck:
    settings = ctx.settings
    usual, per_day = usual_volume(ctx, day)
    brake = Brake(
        step=(f"email trip reminders for trips starting {day} (usual volume {usual}: the "
              f"median per day of the last {len(per_day)} days)"),
        share=settings.trip_reminders_send_brake_share,
        count=settings.trip_reminders_send_brake_count,
        settings=("TRIP_REMINDERS_SEND_BRAKE_SHARE", "TRIP_REMINDERS_SEND_BRAKE_COUNT"),
    )

    def check(tally: notify.Tally) -> None:
        details["brake"] = {**brake.engage(affected=tally.new + tally.resumed,
                                           population=usual, samples=samples,
                                           force=ctx.force),
                            "baseline_days": len(per_day), "usual_volume": usual}

    return check


def plan(ctx: JobContext) -> Plan:
    """Step 1; the chunks of step 3: count the recipients, one trip range each."""
    day = target_date(ctx)
    ranges = trip_ranges(ctx, day)
    notes = {"stage": "count", "ranges": ranges,
             "details": {"target_date": day.isoformat()}}
    return Plan([{"step": "count", "day": day.isoformat(), **r} for r in ranges], notes)


def _screened(ctx: JobContext, args: dict[str, Any], count_only: bool) -> dict[str, Any]:
    """Steps 2 and 3 (count_only) or 4 (plan) for one trip range: the tally's counts, who
    was skipped, and the first keys seen (for a tripped brake's details)."""
    day = dt.date.fromisoformat(args["day"])
    tally, screen, samples = notify.Tally(), Screen(KIND), list[str]()
    notify.plan(ctx, KIND, _planned(ctx, day, screen, samples, args["first"], args["last"]),
                tally, count_only=count_only)
    if not count_only:  # who is skipped, and the samples, were counted in step 3
        return {"plan": notify.planning_counts(tally)}
    return {"count": notify.planning_counts(tally), "samples": samples,
            "screen": screen.saved()}


def advance(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]
            ) -> Plan | None:
    """Between stages: past the count, the brake and the plan chunks; past the plan,
    step 5 and the send chunks; past those, nothing (the run finishes)."""
    day = dt.date.fromisoformat(notes["details"]["target_date"])
    details = dict(notes["details"])
    if notes["stage"] == "count":
        counted = notify.tallied(totals.get("count", {}))
        _brake(ctx, day, list(totals.get("samples", [])), details)(counted)
        chunks = [] if ctx.dry_run else [
            {"step": "plan", "day": day.isoformat(), **r} for r in notes["ranges"]]
        return Plan(chunks, {**notes, "stage": "plan", "details": details})
    if notes["stage"] != "plan":
        return None
    today = day - dt.timedelta(days=ctx.settings.reminder_days_ahead)
    tally = notify.tallied(totals.get("count" if ctx.dry_run else "plan", {}))
    notify.resolve_unknown(ctx, KIND, tally)
    notify.expire(ctx, KIND, notifications_started(today), tally)
    notify.expire(ctx, KIND, opted_out(notifications.c.user_id, KIND), tally,
                  reason="the traveller unsubscribed before it could be sent",
                  withdrawn=True)
    screen = Screen.restored(KIND, totals.get("screen", {}))
    details.update(opted_out=screen.declined, **screen.as_dict())
    # The size of the work, for its trend (app/observe/volumes.py); the brake is no ceiling
    # there: its share is a multiple of the recent volume, which steady growth raises too.
    details["volume"] = {"measure": "planned_messages", "value": tally.new + tally.resumed}
    notes = {"stage": "send", "details": details, "tally": tally.as_dict(),
             "unreachable": screen.unreachable, "declined": screen.declined}
    if ctx.dry_run:
        return Plan([], notes)
    return Plan(notify.send_chunks(ctx, KIND), notes)


# Each invocation of the send stage settles stopped runs; each chunk is one of any stage.
prepare, work = notify.chunk_steps(KIND, TEMPLATE, _screened)


def finish(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]) -> JobResult:
    day = dt.date.fromisoformat(notes["details"]["target_date"])
    details = dict(notes["details"])
    tally = notify.Tally(**{k: v for k, v in notes["tally"].items() if k != "timings_ms"})
    unreachable, declined = int(notes["unreachable"]), int(notes["declined"])
    skipped = (f", {unreachable} skipped (unusable preferences or address: see "
               "details)" if unreachable else "")
    if ctx.dry_run:
        details.update(tally.as_dict())
        message = (f"would send {tally.new + tally.resumed} reminder(s) for trips starting "
                   f"{day}; {tally.already_sent} already sent, {declined} opted out"
                   + skipped)
        return JobResult(records_processed=tally.new + tally.resumed, message=message,
                         details=details,
                         status=RunStatus.WARNING if unreachable else RunStatus.SUCCESS)
    notify.count_run(ctx, KIND, tally)
    tally.taken_by_other_run += int(totals.get("taken_by_other_run", 0))
    tally.errors = [*tally.errors, *totals.get("errors", [])]
    details.update(tally.as_dict())
    message = (f"trips starting {day}: {tally.sent} sent, {tally.failed} failed, "
               f"{tally.unconfirmed} unconfirmed, {tally.already_sent} already sent, "
               f"{declined} opted out" + skipped)
    if tally.expired:
        message += f", {tally.expired} expired"
    if tally.withdrawn:
        message += f", {tally.withdrawn} withdrawn (unsubscribed)"
    troubled = notify.outcome_status(tally) == RunStatus.WARNING or unreachable
    return JobResult(records_processed=tally.sent, message=message,
                     status=RunStatus.WARNING if troubled else RunStatus.SUCCESS, details=details)


# Its count and plan chunks (trip ranges) and its send chunks (id ranges, each with its
# own hand-over cursor) are independent: the queue spreads them.
run = Chunked(plan=plan, work=work, finish=finish, prepare=prepare, advance=advance,
              parallel=frozenset({"count", "plan"}) | notify.SEND_STEPS,
              mailing=notify.MAIL_STEPS)


def notifications_started(today: dt.date) -> sa.ColumnElement[bool]:
    """A pending reminder whose trip starts today or earlier is too late to send."""
    return notifications.c.reference_date <= today
