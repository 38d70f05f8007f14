"""trip-reminders: email every traveller of a trip that starts in `REMINDER_DAYS_AHEAD` days.

Steps:

1. The target day is the run's slot day (else its start) in `CRON_TIMEZONE`, plus
   `REMINDER_DAYS_AHEAD`: a run that GitHub Actions fires hours late still serves its
   slot's day, and a retry of the same slot serves the same day.
2. Recipients, in one streamed query: the owner and every participant with
   `invitation_status = 'accepted'` of each trip starting that day, who has a `users`
   row; pending and declined invitations get nothing.  Users who opted out
   (`users.preferences.email_notifications = false`) are counted and skipped.
3. Plan: one `cron_notification` row per (reminder kind, trip, user, trip start date),
   inserted `pending` before anything is sent; a key that already exists is not planned
   again, whatever its state.
4. Settle what a dead run left mid-batch (from its hand-over cursor: sent, in flight or
   never handed over); expire pending reminders whose trip has already started (a run
   that stopped early days ago).
5. Send every pending reminder over one SMTP connection, each recorded as handed over
   right before the server takes it (app/notifications.py, app/handover.py).

Delivery is at-most-once: a reminder is never sent twice, even across retries, duplicate
deliveries, racing instances or a crash mid-batch; the only message that can be missing
after a crash is the one in flight (handed over, reply not yet read), and it is
reported as `unconfirmed` rather than resent (a duplicate is the failure users notice
and resent mail damages sender reputation).
A dry run reports who would be emailed and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from itertools import chain
from typing import Any

import sqlalchemy as sa

from app import notifications as notify
from app.batching import stream_rows
from app.db import table_of
from app.jobs.context import JobContext, JobResult
from app.mail import resolve_language, wants_email
from app.models import Trip, TripParticipant, User

KIND = "trip_reminder"
TEMPLATE = "trip_reminder"

trips = table_of(Trip)
participants = table_of(TripParticipant)
users = table_of(User)


def target_date(ctx: JobContext) -> dt.date:
    moment = ctx.slot or ctx.now
    local_day = moment.astimezone(zoneinfo.ZoneInfo(ctx.settings.cron_timezone)).date()
    return local_day + dt.timedelta(days=ctx.settings.reminder_days_ahead)


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
            users.c.preferences,
            sa.func.count().over(partition_by=travellers.c.trip_id).label("travellers"),
        )
        .select_from(travellers)
        .join(trips, trips.c.id == travellers.c.trip_id)
        .join(users, users.c.id == travellers.c.user_id)
        .order_by(trips.c.id, users.c.id)
    )


def dedupe_key(days_ahead: int, trip_id: Any, user_id: Any, start: dt.date) -> str:
    return f"{KIND}:{days_ahead}d:{trip_id}:{user_id}:{start.isoformat()}"


def _planned(ctx: JobContext, day: dt.date, opted_out: list[int]) -> Iterator[notify.Planned]:
    settings = ctx.settings
    base = settings.app_base_url
    rows = chain.from_iterable(stream_rows(ctx.engine, recipients_query(day), 1000))
    for row in rows:
        if not wants_email(row.preferences):
            opted_out[0] += 1
            continue
        name = (row.full_name or "").strip() or row.email.split("@", 1)[0]
        yield notify.Planned(
            key=dedupe_key(settings.reminder_days_ahead, row.trip_id, row.user_id, day),
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


def run(ctx: JobContext) -> JobResult:
    day = target_date(ctx)
    today = day - dt.timedelta(days=ctx.settings.reminder_days_ahead)
    tally = notify.Tally()
    opted_out = [0]

    notify.plan(ctx, KIND, _planned(ctx, day, opted_out), tally)
    notify.resolve_unknown(ctx, KIND, tally)
    notify.expire(ctx, KIND, notifications_started(today), tally)
    notify.deliver(ctx, KIND, TEMPLATE, tally)

    details = {"target_date": day.isoformat(), "opted_out": opted_out[0], **tally.as_dict()}
    if ctx.dry_run:
        message = (f"would send {tally.new + tally.resumed} reminder(s) for trips starting "
                   f"{day}; {tally.already_sent} already sent, {opted_out[0]} opted out")
        return JobResult(records_processed=tally.new + tally.resumed, message=message,
                         details=details)
    message = (f"trips starting {day}: {tally.sent} sent, {tally.failed} failed, "
               f"{tally.unconfirmed} unconfirmed, {tally.already_sent} already sent, "
               f"{opted_out[0]} opted out")
    if tally.expired:
        message += f", {tally.expired} expired"
    if tally.left_pending:
        message += f", {tally.left_pending} left for the next run (time budget)"
    return JobResult(records_processed=tally.sent, message=message,
                     status="warning" if notify.outcome_status(tally) == "warning"
                     else "success", details=details)


def notifications_started(today: dt.date) -> sa.ColumnElement[bool]:
    """A pending reminder whose trip starts today or earlier is too late to send."""
    return notify.notifications.c.reference_date <= today
