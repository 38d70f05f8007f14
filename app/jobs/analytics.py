"""analytics: the figures of the last complete ISO week, one row per week.

1. Take the ISO week before the one `now` falls in (Monday 00:00 to Monday 00:00 UTC).
2. Engagement: active users (signed in during the week: `auth.users.last_sign_in_at`,
   else `users.last_login` with a warning), new users, trips created, trips starting, and
   trips under way in the week with more than one accepted participant.
3. Subscription conversion, Stripe-paid subscriptions only (app/voyagesmart/subscription_facts.py):
   new paid subscriptions by tier, upgrades and downgrades (a history event whose tier
   ranks above or below the user's previous one), cancellations (counted in the week the
   subscription actually ended, the rule of the monthly report), conversion (users who
   started paying during the week over users not paying at its start) and churn
   (cancellations over paid subscriptions at its start).  Granted tiers (the sign-up
   trigger's year, promo codes) are counted apart, as grants.
4. Usage by tier: trips, participants, media and documents added, grouped by the trip
   owner's current tier.
5. Upsert the row for that week (a rerun replaces it).  A dry run computes the same
   figures and stores nothing.

Every figure is one set-based statement over the week's window, the same on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.core.context import JobContext, JobResult
from app.core.status import RunStatus
from app.db import table_of, upsert
from app.models import (
    CronWeeklyAnalytics,
    Document,
    SubscriptionHistory,
    Trip,
    TripMedia,
    TripParticipant,
    User,
)
from app.models.voyagesmart import TIERS
from app.voyagesmart.subscription_facts import (
    PAID_TIERS,
    between,
    grants_now,
    movements_and_starters,
    paid_at,
    paid_now,
    ratio,
    subs,
    tier_of_rank,
    tier_rank,
)
from app.voyagesmart.user_activity import FALLBACK_WARNING, last_seen, sign_ins_readable

users = table_of(User)
trips = table_of(Trip)
participants = table_of(TripParticipant)
media = table_of(TripMedia)
documents = table_of(Document)
history = table_of(SubscriptionHistory)
weekly = table_of(CronWeeklyAnalytics)


def iso_week(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_start(label: str) -> dt.date:
    """Monday of an ISO week given as YYYY-Www."""
    return dt.datetime.strptime(label + "-1", "%G-W%V-%u").date()


def previous_week(now: dt.datetime) -> dt.date:
    today = now.astimezone(dt.UTC).date()
    return today - dt.timedelta(days=today.weekday() + 7)


def _bounds(monday: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(monday, dt.time(), dt.UTC)
    return start, start + dt.timedelta(days=7)


def _engagement(conn: Connection, monday: dt.date, sign_ins: bool) -> dict[str, int]:
    start, end = _bounds(monday)
    sunday_next = monday + dt.timedelta(days=7)
    group = (
        sa.select(participants.c.trip_id)
        .where(participants.c.invitation_status == "accepted")
        .group_by(participants.c.trip_id)
        .having(sa.func.count() > 1)
        .subquery()
    )

    def scalar(table: sa.Table, *conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
        return sa.select(sa.func.count()).select_from(table).where(*conditions).scalar_subquery()

    row = conn.execute(sa.select(
        scalar(users, last_seen(sign_ins) >= start, last_seen(sign_ins) < end
               ).label("active"),
        scalar(users, users.c.created_at >= start, users.c.created_at < end).label("new"),
        scalar(trips, trips.c.created_at >= start, trips.c.created_at < end).label("created"),
        scalar(trips, trips.c.start_date >= monday, trips.c.start_date < sunday_next
               ).label("starting"),
        sa.select(sa.func.count()).select_from(
            trips.join(group, group.c.trip_id == trips.c.id)
        ).where(
            trips.c.start_date < sunday_next,
            sa.func.coalesce(trips.c.end_date, trips.c.start_date) >= monday,
        ).scalar_subquery().label("group_trips"),
    )).one()
    return {
        "active_users": int(row.active),
        "new_users": int(row.new),
        "trips_created": int(row.created),
        "trips_starting": int(row.starting),
        "group_trips_under_way": int(row.group_trips),
    }


def _conversion(conn: Connection, monday: dt.date, now: dt.datetime) -> dict[str, Any]:
    start, end = _bounds(monday)
    now_counts = paid_now(conn, now)
    (since_start, since_end), converted = movements_and_starters(conn, [start, end], now,
                                                                 start, end)
    at_start = paid_at(now_counts, since_start)
    new = between("start", since_start, since_end)
    canceled = between("end", since_start, since_end)

    # Up/downgrades: each history event against the same user's previous one.
    rank = tier_rank(history.c.tier)
    ordered = (
        sa.select(
            history.c.event_timestamp.label("at"),
            rank.label("rank"),
            sa.func.lag(rank).over(partition_by=history.c.user_id,
                                   order_by=(history.c.event_timestamp,
                                             history.c.created_at)).label("previous"),
        )
        .where(history.c.event_timestamp < end, rank.is_not(None),
               history.c.stripe_subscription_id.is_not(None),
               sa.or_(history.c.status.is_(None), history.c.status == "active"))
        .subquery()
    )
    moves = conn.execute(
        sa.select(sa.func.count().filter(ordered.c.rank > ordered.c.previous).label("up"),
                  sa.func.count().filter(ordered.c.rank < ordered.c.previous).label("down"))
        .where(ordered.c.at >= start)
    ).one()
    users_before_end = int(conn.execute(
        sa.select(sa.func.count()).select_from(users).where(users.c.created_at < end)
    ).scalar_one())
    paid_start = sum(at_start.values())
    free_users = max(0, users_before_end - paid_start)
    cancellations = sum(canceled.values())
    grants = grants_now(conn)
    return {
        "new_paid_by_tier": new,
        "new_paid": sum(new.values()),
        "upgrades": int(moves.up),
        "downgrades": int(moves.down),
        "cancellations_by_tier": canceled,
        "cancellations": cancellations,
        "free_users": free_users,
        "converted_users": converted,
        "conversion_rate": ratio(converted, free_users),
        "paid_at_start": paid_start,
        "paid_now_by_tier": now_counts,
        "churn_rate": ratio(cancellations, paid_start),
        "grants_by_source": grants,
        "grants": sum(sum(t.values()) for t in grants.values()),
    }


def _usage(conn: Connection, monday: dt.date) -> dict[str, dict[str, int]]:
    start, end = _bounds(monday)
    owner_tier = (
        sa.select(subs.c.user_id, sa.func.max(tier_rank(subs.c.tier)).label("rank"))
        .where(subs.c.status == "active", subs.c.tier.in_(PAID_TIERS))
        .group_by(subs.c.user_id)
        .cte("owner_tier")
    )
    # Referenced four times: as a CTE, each trip's tier is worked out once.
    trip_tier = (
        sa.select(trips.c.id, trips.c.created_at,
                  sa.func.coalesce(owner_tier.c.rank, 0).label("rank"))
        .select_from(trips.outerjoin(owner_tier, owner_tier.c.user_id == trips.c.owner_id))
        .cte("trip_tier")
    )

    def added(kind: str, table: sa.Table | None) -> sa.Select[str, Any, int]:
        source = trip_tier if table is None else table.join(
            trip_tier, trip_tier.c.id == table.c.trip_id)
        created = trip_tier.c.created_at if table is None else table.c.created_at
        return (
            sa.select(sa.literal(kind).label("kind"), trip_tier.c.rank,
                      sa.func.count().label("n"))
            .select_from(source)
            .where(created >= start, created < end)
            .group_by(trip_tier.c.rank)
        )

    rows = conn.execute(sa.union_all(
        added("trips", None), added("participants", participants),
        added("media", media), added("documents", documents),
    )).all()
    usage = {t: {"trips": 0, "participants": 0, "media": 0, "documents": 0}
             for t in TIERS}
    for row in rows:
        usage[tier_of_rank(int(row.rank))][row.kind] = int(row.n)
    return usage


def compute_week(conn: Connection, monday: dt.date, now: dt.datetime,
                 sign_ins: bool = True) -> dict[str, Any]:
    """Every figure of the ISO week starting `monday`, as known at `now`."""
    return {
        "engagement": _engagement(conn, monday, sign_ins),
        "conversion": _conversion(conn, monday, now),
        "usage_by_tier": _usage(conn, monday),
    }


def _upsert(conn: Connection, values: dict[str, Any]) -> None:
    stmt = upsert(conn.dialect, weekly).values(**values)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[weekly.c.iso_week],
        set_={k: stmt.excluded[k] for k in values if k != "iso_week"},
    ))


def run(ctx: JobContext) -> JobResult:
    monday = previous_week(ctx.as_of)  # the week before its slot: a backfill gets its own
    label = iso_week(monday)
    sign_ins = sign_ins_readable(ctx.schema_check())
    with ctx.engine.connect() as conn:
        metrics = compute_week(conn, monday, ctx.now, sign_ins)
    warnings = [] if sign_ins else [FALLBACK_WARNING]
    engagement, conversion = metrics["engagement"], metrics["conversion"]
    summary = (
        f"{label}: {engagement['active_users']} active users, {engagement['new_users']} new, "
        f"{engagement['trips_created']} trips created; {conversion['new_paid']} new paid, "
        f"{conversion['cancellations']} canceled, conversion {conversion['conversion_rate']}, "
        f"churn {conversion['churn_rate']}; {conversion['grants']} granted tiers (not paid)"
    )
    if not ctx.dry_run:
        with ctx.engine.begin() as conn:
            _upsert(conn, {
                "iso_week": label,
                "week_start": monday,
                "week_end": monday + dt.timedelta(days=7),
                "active_users": engagement["active_users"],
                "new_users": engagement["new_users"],
                "new_paid_subscriptions": conversion["new_paid"],
                "conversion_rate": conversion["conversion_rate"],
                "churn_rate": conversion["churn_rate"],
                "metrics": metrics,
                "computed_at": ctx.now,
                "run_id": ctx.run_id,
            })
    message = (("would store " if ctx.dry_run else "stored ") + summary
               + "".join(f"; warning: {w}" for w in warnings))
    return JobResult(records_processed=1, message=message,
                     status=RunStatus.WARNING if warnings else RunStatus.SUCCESS,
                     details={"iso_week": label, "metrics": metrics, "warnings": warnings})


def read_week(conn: Connection, label: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(weekly).where(weekly.c.iso_week == label)).mappings().first()
    return dict(row) if row else None
