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
3. Plan: one `cron_notification` row per (reminder kind, trip, user, trip start date),
   inserted `pending` before anything is sent; a key that already exists is not planned
   again, whatever its state.  All in one transaction, committed only past the brake:
4. Brake (app/core/safety.py): the reminders this run would send, against the day's usual
   volume, the median number of reminders per target day over the last
   `TRIP_REMINDERS_BRAKE_BASELINE_DAYS` days (a day without any counts as 0).  Above both
   `TRIP_REMINDERS_SEND_BRAKE_COUNT` and `TRIP_REMINDERS_SEND_BRAKE_SHARE` times that
   median (with no history: above the count), nothing is planned and the run ends `error`
   with the figures and sample keys.
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


def recipients_query(day: dt.date) -> sa.Select[Any]:
    """Each (trip, traveller) pair of the trips starting on `day`, with what the email says.

    Served by `ix_trips_start_date` and `ix_trip_participants_accepted_trip`.
    """
    owners = sa.select(trips.c.id.label("trip_id"), trips.c.owner_id.label("user_id")).where(
        trips.c.start_date == day)
    accepted = (
        sa.select(participants.c.trip_id, participants.c.user_id)
        .join(trips, trips.c.id == participants.c.trip_id)
        .where(trips.c.start_date == day, participants.c.invitation_status == "accepted",
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


def _planned(ctx: JobContext, day: dt.date, screen: Screen, samples: list[str]
             ) -> Iterator[notify.Planned]:
    settings = ctx.settings
    base = settings.app_base_url
    rows = chain.from_iterable(stream_rows(ctx.engine, recipients_query(day), 1000))
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
    """Steps 1-5, once per run; the chunks are the pending reminders, by id range."""
    day = target_date(ctx)
    today = day - dt.timedelta(days=ctx.settings.reminder_days_ahead)
    tally = notify.Tally()
    screen = Screen(KIND)
    samples: list[str] = []
    details: dict[str, Any] = {"target_date": day.isoformat()}

    notify.plan(ctx, KIND, _planned(ctx, day, screen, samples), tally,
                brake=_brake(ctx, day, samples, details))
    notify.resolve_unknown(ctx, KIND, tally)
    notify.expire(ctx, KIND, notifications_started(today), tally)
    notify.expire(ctx, KIND, opted_out(notifications.c.user_id, KIND), tally,
                  reason="the traveller unsubscribed before it could be sent",
                  withdrawn=True)
    details.update(opted_out=screen.declined, **screen.as_dict())
    # The size of the work, for its trend (app/observe/volumes.py); the brake is no ceiling
    # there: its share is a multiple of the recent volume, which steady growth raises too.
    details["volume"] = {"measure": "planned_messages", "value": tally.new + tally.resumed}
    notes = {"details": details, "tally": tally.as_dict(), "unreachable": screen.unreachable,
             "declined": screen.declined}
    if ctx.dry_run:
        return Plan([], notes)
    # The last chunk sends what is left anywhere: rows a run that died meanwhile released.
    return Plan([*notify.ranges(ctx, KIND), {"first": None, "last": None}], notes)


# Each invocation settles stopped runs; each chunk sends one id range (the sweep: all).
prepare, send = notify.chunk_steps(KIND, TEMPLATE)


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


run = Chunked(plan=plan, work=send, finish=finish, prepare=prepare)


def notifications_started(today: dt.date) -> sa.ColumnElement[bool]:
    """A pending reminder whose trip starts today or earlier is too late to send."""
    return notifications.c.reference_date <= today
