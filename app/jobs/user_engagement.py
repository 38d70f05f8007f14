"""user-engagement: one re-engagement email per inactivity period, and monthly metrics.

Steps:

1. Inactive users: last seen (Supabase's `auth.users.last_sign_in_at`; where that table
   cannot be read, `users.last_login`, which the app never updates, with a warning in the
   run; `created_at` for a user never seen) more than `INACTIVITY_DAYS` before the run,
   and no trip activity since then (owning a trip created or updated, joining a trip,
   adding media, a document or an expense).
2. Screen each one (app/mail/recipients.py): who unsubscribed from these emails, opted out in
   their preferences, has no recorded consent while `ENGAGEMENT_REQUIRE_CONSENT` is set,
   or whose preferences or address cannot be used is skipped, counted and named by user
   id; one bad row never stops the others' emails, nor leaves anything pending.
3. Count, in chunks of consecutive user ids (RANGE_SIZE users each, app/core/batching.py's
   `key_ranges`): who would be emailed, already was, or is skipped; nothing written.
4. Brake (app/core/safety.py), once the count is done: above both
   `USER_ENGAGEMENT_SEND_BRAKE_COUNT` emails and `USER_ENGAGEMENT_SEND_BRAKE_SHARE` of all
   users, nothing is planned and the run ends `error` with the figures and sample user
   ids (a short `INACTIVITY_DAYS`, or an app that records no sign-ins, would otherwise
   email everyone).  Past it, plan in the same ranges one `user_engagement` notification
   per remaining user, keyed by the user and the moment they were last seen: the same
   sleeping user has the same key every month and is emailed once; after a new login, a
   new inactivity period gets a new key.
5. Settle what a dead run left mid-batch (app/mail/delivery.py); expire pending emails of
   users who came back before they could be sent, and withdraw those of users who
   unsubscribed (or lack consent) since.
6. Send the pending emails over one SMTP connection, at most once (app/mail/delivery.py),
   in chunks of consecutive ids (app/core/chunks.py): a run that reaches its invocation's
   time budget answers `partial` and the next call sends the rest, under the same run.
7. Write this month's row of `cron_engagement_metrics`: active and inactive users, emails
   sent and failed this month, opted-out inactive users, and users emailed by the
   previous campaign who logged in after that email, once every chunk is sent.  Rerunning
   in the same month rewrites the row from the database, so it stays exact.

The month is the run's slot (else its start) in `CRON_TIMEZONE`.  A dry run reports who
would be emailed, skipped and braked exactly as the real run would, and the metrics it
would write, and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Iterator
from itertools import chain
from typing import Any

import sqlalchemy as sa

from app.core.batching import KeyRange, in_range, key_ranges, stream_rows
from app.core.chunks import Chunked, Plan
from app.core.context import JobContext, JobResult
from app.core.safety import SAMPLES, Brake
from app.core.status import RunStatus
from app.db import table_of, upsert
from app.mail import delivery as notify
from app.mail.ledger import notifications
from app.mail.recipients import Screen, candidate_columns, consented
from app.mail.templates import resolve_language
from app.mail.unsubscribe import USER_ENGAGEMENT, opted_out
from app.models import (
    CronEngagementMetrics,
    Document,
    Expense,
    Trip,
    TripMedia,
    TripParticipant,
    User,
)
from app.voyagesmart.user_activity import FALLBACK_WARNING, last_seen, sign_ins_readable

KIND = USER_ENGAGEMENT
TEMPLATE = "user_engagement"

users = table_of(User)
trips = table_of(Trip)
participants = table_of(TripParticipant)
media = table_of(TripMedia)
documents = table_of(Document)
expenses = table_of(Expense)
metrics = table_of(CronEngagementMetrics)
notes = notifications
# Emails per chunk of a run (app/core/chunks.py): one id range of the pending emails.
CHUNK_EMAILS = notify.CLAIM_BATCH
# Users per count or plan chunk.
RANGE_SIZE = 5000


def campaign_month(ctx: JobContext) -> dt.date:
    moment = ctx.as_of
    return moment.astimezone(zoneinfo.ZoneInfo(ctx.settings.cron_timezone)).date().replace(
        day=1)


def _trip_activity_since(cutoff: dt.datetime) -> sa.ColumnElement[bool]:
    uid = users.c.id
    return sa.or_(
        sa.exists().where(trips.c.owner_id == uid,
                          sa.or_(trips.c.created_at >= cutoff, trips.c.updated_at >= cutoff)),
        sa.exists().where(participants.c.user_id == uid, participants.c.created_at >= cutoff),
        sa.exists().where(media.c.user_id == uid, media.c.created_at >= cutoff),
        sa.exists().where(documents.c.user_id == uid,
                          sa.or_(documents.c.created_at >= cutoff,
                                 documents.c.updated_at >= cutoff)),
        sa.exists().where(expenses.c.paid_by == uid,
                          sa.or_(expenses.c.created_at >= cutoff,
                                 expenses.c.updated_at >= cutoff)),
    )


def inactive_condition(cutoff: dt.datetime, sign_ins: bool) -> sa.ColumnElement[bool]:
    return sa.and_(last_seen(sign_ins) < cutoff, ~_trip_activity_since(cutoff))


def inactive_users_query(cutoff: dt.datetime, sign_ins: bool, *, consent: bool = False
                         ) -> sa.Select[Any]:
    return (
        sa.select(users.c.id.label("user_id"), users.c.email, users.c.full_name,
                  *candidate_columns(KIND, consent=consent),
                  last_seen(sign_ins).label("last_seen"))
        .where(inactive_condition(cutoff, sign_ins))
        .order_by(users.c.id)
    )


def dedupe_key(user_id: Any, seen: dt.datetime) -> str:
    return f"{KIND}:{user_id}:{seen.astimezone(dt.UTC).isoformat()}"


def _planned(ctx: JobContext, cutoff: dt.datetime, month: dt.date, counts: dict[str, int],
             screen: Screen, sign_ins: bool, samples: list[str], keys: KeyRange = (None, None)
             ) -> Iterator[notify.Planned]:
    query = inactive_users_query(cutoff, sign_ins, consent=screen.require_consent).where(
        in_range(users.c.id, *keys))
    for row in chain.from_iterable(stream_rows(ctx.engine, query, 1000)):
        counts["inactive"] += 1
        if not screen.admit(row):
            continue
        if len(samples) < SAMPLES:
            samples.append(str(row.user_id))
        yield notify.Planned(
            key=dedupe_key(row.user_id, row.last_seen),
            user_id=row.user_id,
            recipient=row.email,
            language=resolve_language(row.preferences, TEMPLATE),
            reference_date=month,
            payload={
                "recipient_name": (row.full_name or "").strip()
                or row.email.split("@", 1)[0],
                "app_url": ctx.settings.app_base_url,
                "inactive_days": (ctx.now - row.last_seen).days,
            },
        )


def _came_back(cutoff: dt.datetime, sign_ins: bool) -> sa.ColumnElement[bool]:
    """A pending email whose user is no longer inactive (or no longer exists)."""
    return ~sa.exists().where(users.c.id == notes.c.user_id,
                              inactive_condition(cutoff, sign_ins))


def _metrics(ctx: JobContext, month: dt.date, counts: dict[str, int], sign_ins: bool,
             tally: notify.Tally) -> dict[str, Any]:
    """This month's row; a dry run's counts the emails it would send as sent."""
    with ctx.engine.connect() as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())
        per_status: dict[str, int] = dict(conn.execute(
            sa.select(notes.c.status, sa.func.count())
            .where(notes.c.kind == KIND, notes.c.reference_date == month)
            .group_by(notes.c.status)
        ).all())
        previous = conn.execute(
            sa.select(sa.func.max(notes.c.reference_date))
            .where(notes.c.kind == KIND, notes.c.reference_date < month,
                   notes.c.status.in_(notify.DELIVERED))
        ).scalar()
        returned = 0
        if previous is not None:
            returned = int(conn.execute(
                sa.select(sa.func.count(sa.distinct(notes.c.user_id)))
                .select_from(notes.join(users, users.c.id == notes.c.user_id))
                .where(notes.c.kind == KIND, notes.c.reference_date == previous,
                       notes.c.status.in_(notify.DELIVERED),
                       last_seen(sign_ins) > notes.c.sent_at)
            ).scalar_one())
    return {
        "month": month,
        "active_users": total - counts["inactive"],
        "inactive_users": counts["inactive"],
        "emails_sent": sum(int(per_status.get(s, 0)) for s in notify.DELIVERED)
        + (tally.new + tally.resumed if ctx.dry_run else 0),
        "emails_failed": int(per_status.get("failed", 0)),
        "opted_out": counts["opted_out"],
        "returned_users": returned,
        "previous_campaign": previous.isoformat() if previous else None,
    }


def _store(ctx: JobContext, values: dict[str, Any]) -> None:
    row = {k: v for k, v in values.items() if k != "previous_campaign"}
    row.update(inactivity_days=ctx.settings.inactivity_days, computed_at=ctx.now,
               run_id=ctx.run_id)
    stmt = upsert(ctx.engine.dialect, metrics).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=["month"],
        set_={k: stmt.excluded[k] for k in row if k != "month"},
    )
    with ctx.engine.begin() as conn:
        conn.execute(stmt)


def _users(ctx: JobContext) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())


def _brake(ctx: JobContext, population: int, samples: list[str],
           details: dict[str, Any]) -> notify.BrakeCheck:
    settings = ctx.settings
    brake = Brake(step="email inactive users (re-engagement), of all users",
                  share=settings.user_engagement_send_brake_share,
                  count=settings.user_engagement_send_brake_count,
                  settings=("USER_ENGAGEMENT_SEND_BRAKE_SHARE",
                            "USER_ENGAGEMENT_SEND_BRAKE_COUNT"))

    def check(tally: notify.Tally) -> None:
        details["brake"] = brake.engage(affected=tally.new + tally.resumed,
                                        population=population, samples=samples,
                                        force=ctx.force)

    return check


def _volume(ctx: JobContext, planned: int, population: int) -> dict[str, Any]:
    """The size of the work, for its trend (app/observe/volumes.py), with the most the
    brake lets through: it trips above the count AND above the share of all users."""
    s = ctx.settings
    ceiling = max(s.user_engagement_send_brake_count,
                  math.floor(s.user_engagement_send_brake_share * population))
    return {"measure": "planned_messages", "value": planned, "ceiling": ceiling,
            "ceiling_label": "its send brake"}


def _withdrawn(require_consent: bool) -> sa.ColumnElement[bool]:
    """A pending email whose user unsubscribed (or, when consent is required, has none)."""
    gone = opted_out(notes.c.user_id, KIND)
    return sa.or_(gone, ~consented(notes.c.user_id, KIND)) if require_consent else gone


def plan(ctx: JobContext) -> Plan:
    """Step 1's terms, once per run; the chunks of step 3: count, one user-id range each."""
    month = campaign_month(ctx)
    cutoff = ctx.as_of - dt.timedelta(days=ctx.settings.inactivity_days)
    sign_ins = sign_ins_readable(ctx.schema_check())
    if not sign_ins:
        ctx.log.warning(FALLBACK_WARNING)
    terms = {"month": month.isoformat(), "cutoff": cutoff.isoformat(), "sign_ins": sign_ins,
             "require_consent": ctx.settings.engagement_require_consent}
    ranges = key_ranges(ctx.engine, users.c.id, RANGE_SIZE)
    notes = {**terms, "stage": "count", "ranges": ranges, "population": _users(ctx)}
    return Plan([{"step": "count", **terms, "after": after, "upto": upto}
                 for after, upto in ranges], notes)


def _screened(ctx: JobContext, args: dict[str, Any], count_only: bool) -> dict[str, Any]:
    """Steps 1-3 (count_only) or 4's plan for one user-id range: the tally's counts, the
    inactive users, who was skipped, and the first ids seen (for a tripped brake)."""
    counts = {"inactive": 0}
    screen = Screen(KIND, require_consent=bool(args["require_consent"]))
    samples: list[str] = []
    tally = notify.Tally()
    planned = _planned(ctx, dt.datetime.fromisoformat(args["cutoff"]),
                       dt.date.fromisoformat(args["month"]), counts, screen,
                       bool(args["sign_ins"]), samples, (args["after"], args["upto"]))
    notify.plan(ctx, KIND, planned, tally, count_only=count_only)
    if not count_only:  # who is inactive or skipped, and the samples: counted in step 3
        return {"plan": notify.planning_counts(tally)}
    return {"count": notify.planning_counts(tally), "inactive": counts["inactive"],
            "samples": samples, "screen": screen.saved()}


def advance(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]
            ) -> Plan | None:
    """Between stages: past the count, the brake and the plan chunks; past the plan,
    step 5 and the send chunks; past those, nothing (step 7 is `finish`)."""
    if notes["stage"] not in ("count", "plan"):
        return None
    terms = {k: notes[k] for k in ("month", "cutoff", "sign_ins", "require_consent")}
    population = int(notes["population"])
    if notes["stage"] == "count":
        details: dict[str, Any] = {}
        counted = notify.tallied(totals.get("count", {}))
        _brake(ctx, population, list(totals.get("samples", [])), details)(counted)
        chunks = [] if ctx.dry_run else [
            {"step": "plan", **terms, "after": after, "upto": upto}
            for after, upto in notes["ranges"]]
        return Plan(chunks, {**notes, "stage": "plan", "details": details})
    cutoff = dt.datetime.fromisoformat(notes["cutoff"])
    sign_ins, require_consent = bool(notes["sign_ins"]), bool(notes["require_consent"])
    details = dict(notes["details"])
    tally = notify.tallied(totals.get("count" if ctx.dry_run else "plan", {}))
    details["volume"] = _volume(ctx, tally.new + tally.resumed, population)
    screen = Screen.restored(KIND, totals.get("screen", {}), require_consent=require_consent)
    counts = {"inactive": int(totals.get("inactive", 0)), "opted_out": screen.declined}
    notify.resolve_unknown(ctx, KIND, tally)
    notify.expire(ctx, KIND, _came_back(cutoff, sign_ins), tally)
    notify.expire(ctx, KIND, _withdrawn(require_consent), tally,
                  reason="the user unsubscribed, or has no recorded consent, before it "
                  "could be sent", withdrawn=True)
    details.update(screen.as_dict())
    notes = {"stage": "send", "details": details, "tally": tally.as_dict(),
             "counts": counts, "month": notes["month"], "sign_ins": sign_ins,
             "require_consent": require_consent, "unreachable": screen.unreachable,
             "no_consent": screen.counts["no_consent"]}
    if ctx.dry_run:
        return Plan([], notes)
    return Plan(notify.send_chunks(ctx, KIND, CHUNK_EMAILS), notes)


# Each invocation of the send stage settles stopped runs; each chunk is one of any stage.
prepare, work = notify.chunk_steps(KIND, TEMPLATE, _screened)


def finish(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]) -> JobResult:
    """Step 7 and the run's summary, from the plan's notes and the chunks' counters."""
    month = dt.date.fromisoformat(notes["month"])
    counts = {k: int(v) for k, v in notes["counts"].items()}
    sign_ins, require_consent = bool(notes["sign_ins"]), bool(notes["require_consent"])
    unreachable, no_consent = int(notes["unreachable"]), int(notes["no_consent"])
    tally = notify.Tally(**{k: v for k, v in notes["tally"].items() if k != "timings_ms"})
    if not ctx.dry_run:
        notify.count_run(ctx, KIND, tally)
        tally.taken_by_other_run += int(totals.get("taken_by_other_run", 0))
        tally.errors = [*tally.errors, *totals.get("errors", [])]
    values = _metrics(ctx, month, counts, sign_ins, tally)
    if not ctx.dry_run:
        _store(ctx, values)

    details = dict(notes["details"])
    details.update({
        **tally.as_dict(),
        "metrics": {**values, "month": month.isoformat()},
        "inactivity_days": ctx.settings.inactivity_days,
        "require_consent": require_consent,
        "activity_source": "auth.users.last_sign_in_at" if sign_ins else "users.last_login",
    })
    warnings = [] if sign_ins else [FALLBACK_WARNING]
    if unreachable:
        warnings.append(f"{unreachable} inactive user(s) skipped: unusable "
                        "preferences or address (see skipped_users)")
    details["warnings"] = warnings
    skipped = [f"{no_consent} without recorded consent"] if no_consent else []
    if ctx.dry_run:
        return JobResult(
            records_processed=tally.new + tally.resumed, details=details,
            status=RunStatus.WARNING if warnings else RunStatus.SUCCESS,
            message=f"{counts['inactive']} inactive users; would email "
            f"{tally.new + tally.resumed}, {tally.already_sent} already emailed this "
            f"inactivity period, {counts['opted_out']} opted out"
            + "".join(f", {s}" for s in skipped)
            + "".join(f"; warning: {w}" for w in warnings))
    message = (f"{counts['inactive']} inactive users: {tally.sent} emailed, "
               f"{tally.already_sent} already emailed this inactivity period, "
               f"{counts['opted_out']} opted out"
               + "".join(f", {s}" for s in skipped)
               + f", {tally.failed} failed; "
               f"{values['returned_users']} came back since the last campaign"
               + "".join(f"; warning: {w}" for w in warnings))
    return JobResult(records_processed=tally.sent, message=message, details=details,
                     status=RunStatus.WARNING
                     if warnings or notify.outcome_status(tally) == RunStatus.WARNING
                     else RunStatus.SUCCESS)


# Its count and plan chunks (user ranges) and its send chunks (id ranges, each with its
# own hand-over cursor) are independent: the queue spreads them.
run = Chunked(plan=plan, work=work, finish=finish, prepare=prepare, advance=advance,
              parallel=frozenset({"count", "plan"}) | notify.SEND_STEPS,
              mailing=notify.MAIL_STEPS)
