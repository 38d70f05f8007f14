"""What `user_subscriptions` and `subscription_history` say about paid subscriptions.

`user_subscriptions` holds one row per user, its current state only; the past is read from
`subscription_history`, which the app (and this service) append to.

- *Paid now*: a row with a `stripe_subscription_id`, a paid tier and status `active`,
  unless it was canceled at period end and that period is over (`cancel_at_period_end`
  and `current_period_end` <= now): it has ended, whether or not anything recorded it yet.
  Only these count as paying subscribers and add to MRR.
- *Grant*: a paid tier without a Stripe subscription, status `active`: the sign-up
  trigger's premium year, or a promo code's tier (the user has a redemption).  Reported
  apart, never in MRR.
- The history of each Stripe subscription is read as a sequence of states, event by event
  (`event_timestamp`, then `created_at`):
  - *paying*: a paid tier and a status of `active`, `trialing`, `past_due` (or none);
  - *not paying*: `subscription_deleted`, `subscription_expired`, a free tier, or a status
    of `inactive`, `canceled`, `paused`, `incomplete`, `incomplete_expired`, `unpaid`;
  - other events (payments, checkouts) say nothing about it.
  A subscription *starts* when it becomes paying (a first payment after `incomplete`
  included; a resume after `paused` starts it again), *ends* when it stops (by the last
  paid tier), and *moves* between tiers while paying.
- An end counts in the month the subscription actually ended: for one canceled at period
  end, the later of the cancellation request (`subscription_canceled`, when Stripe sets
  `canceled_at`) and the period end (`current_period_end` of the row still naming it),
  never after the event that recorded it.  A row whose period ended with nothing recorded
  yet ends at that moment too.
- At a past moment `t`, paid subscriptions per tier = paid now - starts and moves into the
  tier since `t` + ends and moves out of it since `t`.
- Prices come from the `subscriptions` plan catalogue, by tier (a yearly plan counts a
  twelfth of its price per month).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.db import table_of
from app.models import Plan, PromoCodeRedemption, SubscriptionHistory, UserSubscription
from app.models.voyagesmart import TIERS

subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)
plans = table_of(Plan)
redemptions = table_of(PromoCodeRedemption)

PAID_TIERS = tuple(t for t in TIERS if t != "free")
CHURN_EVENTS = ("subscription_deleted", "subscription_expired")
PAYING_STATUSES = ("active", "trialing", "past_due")
NOT_PAYING_STATUSES = ("inactive", "canceled", "paused", "incomplete", "incomplete_expired",
                       "unpaid")
KINDS = ("start", "end", "enter", "leave")


def tier_rank(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """0 for free, rising with price; NULL for an unknown tier."""
    return sa.case({tier: rank for rank, tier in enumerate(TIERS)}, value=column,
                   else_=sa.null())


def tier_of_rank(rank: int | None) -> str:
    return TIERS[rank] if rank is not None and 0 <= rank < len(TIERS) else "free"


def _period_over(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Canceled at the end of a period that is over."""
    return sa.and_(subs.c.cancel_at_period_end.is_(True),
                   subs.c.current_period_end.is_not(None), subs.c.current_period_end <= now)


def is_paid(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(subs.c.stripe_subscription_id.is_not(None), subs.c.tier.in_(PAID_TIERS),
                   subs.c.status == "active", sa.not_(_period_over(now)))


def is_grant() -> sa.ColumnElement[bool]:
    return sa.and_(subs.c.stripe_subscription_id.is_(None), subs.c.tier.in_(PAID_TIERS),
                   subs.c.status == "active")


def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    """COUNT of rows matching `condition`, as one column of a single pass."""
    return sa.func.count().filter(condition)


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _per_tier(rows: Any) -> dict[str, int]:
    out = {tier: 0 for tier in PAID_TIERS}
    for tier, n in rows:
        if tier in out:
            out[tier] += int(n)
    return out


def paid_now(conn: Connection, now: dt.datetime) -> dict[str, int]:
    return _per_tier(conn.execute(
        sa.select(subs.c.tier, sa.func.count()).where(is_paid(now)).group_by(subs.c.tier)))


def grants_now(conn: Connection) -> dict[str, dict[str, int]]:
    """Active granted tiers by source (`promo_code`, `sign_up`) and tier."""
    promo = sa.or_(
        sa.exists().where(redemptions.c.user_id == subs.c.user_id),
        sa.exists().where(history.c.user_id == subs.c.user_id,
                          history.c.event_type == "promo_code_redemption"))
    source = sa.case((promo, sa.literal("promo_code")), else_=sa.literal("sign_up"))
    out = {name: {tier: 0 for tier in PAID_TIERS} for name in ("promo_code", "sign_up")}
    for row in conn.execute(sa.select(source.label("source"), subs.c.tier, sa.func.count())
                            .where(is_grant()).group_by(source, subs.c.tier)):
        out[row[0]][row[1]] += int(row[2])
    return out


def _kind(name: str) -> sa.ColumnElement[str]:
    return sa.literal_column(f"'{name}'", sa.String)


def _later(a: sa.ColumnElement[Any], b: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The later of two moments (GREATEST; SQLite has none), NULLs ignored."""
    return sa.case((a.is_(None), b), (b.is_(None), a), (a > b, a), else_=b)


def transitions(now: dt.datetime) -> sa.CTE:
    """Every start, end and tier move of every Stripe subscription: (kind, tier, at,
    user_id), one set-based statement (window functions over the history, in order)."""
    h = history.c
    paying = sa.case(
        (sa.or_(h.event_type.in_(CHURN_EVENTS), h.status.in_(NOT_PAYING_STATUSES),
                h.tier == "free"), 0),
        (sa.and_(h.tier.in_(PAID_TIERS),
                 sa.or_(h.status.is_(None), h.status.in_(PAYING_STATUSES))), 1),
        else_=sa.null())
    order = (h.event_timestamp, h.created_at, h.id)
    events = (
        sa.select(h.stripe_subscription_id.label("sid"), h.user_id, h.event_type, h.tier,
                  h.event_timestamp.label("at"), h.created_at, h.id, paying.label("paying"),
                  # The latest cancellation request so far (Stripe's `canceled_at`).
                  sa.func.max(sa.case((h.event_type == "subscription_canceled",
                                       h.event_timestamp))).over(
                      partition_by=h.stripe_subscription_id, order_by=order, rows=(None, 0),
                  ).label("canceled_at"))
        .where(h.stripe_subscription_id.is_not(None))
        .subquery("events")
    )
    e = events.c
    in_order = (e.at, e.created_at, e.id)
    steps = (
        sa.select(e.sid, e.user_id, e.event_type, e.tier, e.at, e.canceled_at, e.paying,
                  sa.func.lag(e.paying).over(partition_by=e.sid, order_by=in_order
                                             ).label("before"),
                  sa.func.lag(e.tier).over(partition_by=e.sid, order_by=in_order
                                           ).label("tier_before"))
        .where(e.paying.is_not(None))
        .cte("steps")
    )
    st = steps.c
    periods = (
        sa.select(subs.c.stripe_subscription_id.label("sid"),
                  sa.func.max(subs.c.current_period_end).label("period_end"))
        .where(subs.c.stripe_subscription_id.is_not(None))
        .group_by(subs.c.stripe_subscription_id)
        .subquery("periods")
    )
    # Canceled at period end (a request on record, or the app route's expiry): it ended
    # at the later of the request and the period end, not when that was recorded.
    at_period_end = sa.and_(
        periods.c.period_end.is_not(None), periods.c.period_end < st.at,
        sa.or_(st.canceled_at.is_not(None), st.event_type == "subscription_expired"))
    ended_at = sa.case((at_period_end, _later(st.canceled_at, periods.c.period_end)),
                       else_=st.at)
    became_paying = sa.and_(st.paying == 1, sa.or_(st.before.is_(None), st.before == 0))
    moved = sa.and_(st.paying == 1, st.before == 1, st.tier != st.tier_before)
    requested = (
        sa.select(sa.func.max(history.c.event_timestamp))
        .where(history.c.stripe_subscription_id == subs.c.stripe_subscription_id,
               history.c.event_type == "subscription_canceled")
        .scalar_subquery()
    )
    return sa.union_all(
        sa.select(_kind("start").label("kind"), st.tier.label("tier"),
                  st.at.label("at"), st.user_id).where(became_paying),
        sa.select(_kind("end"), st.tier_before, ended_at, st.user_id)
        .select_from(steps.outerjoin(periods, periods.c.sid == st.sid))
        .where(st.paying == 0, st.before == 1),
        sa.select(_kind("enter"), st.tier, st.at, st.user_id).where(moved),
        sa.select(_kind("leave"), st.tier_before, st.at, st.user_id).where(moved),
        # Ended with nothing recorded yet: paid until its period end, not paid now.
        sa.select(_kind("end"), subs.c.tier,
                  _later(requested, subs.c.current_period_end), subs.c.user_id)
        .where(subs.c.stripe_subscription_id.is_not(None), subs.c.tier.in_(PAID_TIERS),
               subs.c.status == "active", _period_over(now)),
    ).cte("transitions")


@dataclass
class Movements:
    """Transitions at or after one moment, per kind and tier."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: {t: 0 for t in PAID_TIERS} for k in KINDS})

    def __getitem__(self, kind: str) -> dict[str, int]:
        return self.counts[kind]


def movements_since(conn: Connection, moments: Sequence[dt.datetime], now: dt.datetime
                    ) -> list[Movements]:
    """Per moment, the starts, ends and tier moves at or after it: one pass for all."""
    return _movements(conn, moments, now, None)[0]


def movements_and_starters(conn: Connection, moments: Sequence[dt.datetime],
                           now: dt.datetime, start: dt.datetime, end: dt.datetime
                           ) -> tuple[list[Movements], int]:
    """`movements_since`, and the distinct users whose subscription started paying in
    [start, end), from the same pass over the history."""
    found, users = _movements(conn, moments, now, (start, end))
    return found, int(users or 0)


def _movements(conn: Connection, moments: Sequence[dt.datetime], now: dt.datetime,
               users_between: tuple[dt.datetime, dt.datetime] | None
               ) -> tuple[list[Movements], int | None]:
    moves = transitions(now)
    columns = [sa.func.count().filter(moves.c.at >= m) for m in moments]
    counted = sa.select(moves.c.kind, moves.c.tier, *columns, sa.null().label("users")
                        ).group_by(moves.c.kind, moves.c.tier)
    statement: sa.Select[Any] | sa.CompoundSelect[Any] = counted
    if users_between is not None:
        start, end = users_between
        users = sa.func.count(sa.distinct(moves.c.user_id)).filter(
            moves.c.kind == "start", moves.c.at >= start, moves.c.at < end)
        # One statement, so the transitions are worked out once for both.
        statement = sa.union_all(counted, sa.select(
            _kind("users"), sa.null(), *[sa.literal(0) for _ in moments], users))
    out = [Movements() for _ in moments]
    starters: int | None = None
    for row in conn.execute(statement):
        if row[0] == "users":
            starters = int(row[-1] or 0)
        elif row[1] in PAID_TIERS and row[0] in KINDS:
            for i in range(len(moments)):
                out[i][row[0]][row[1]] = int(row[i + 2])
    return out, starters


def paid_at(now_counts: dict[str, int], since: Movements) -> dict[str, int]:
    """Paid subscriptions per tier at a past moment, from today's and what moved since."""
    return {tier: max(0, now_counts[tier] - since["start"][tier] - since["enter"][tier]
                      + since["end"][tier] + since["leave"][tier]) for tier in PAID_TIERS}


def between(kind: str, since_start: Movements, since_end: Movements) -> dict[str, int]:
    """Transitions of `kind` in [start, end), per tier."""
    return {tier: since_start[kind][tier] - since_end[kind][tier] for tier in PAID_TIERS}


def monthly_prices(conn: Connection) -> tuple[dict[str, tuple[Decimal, str]], list[str]]:
    """Monthly price and currency per paid tier from the plan catalogue, and warnings
    (a tier with no plan, or several different ones: the newest is used)."""
    rows = conn.execute(
        sa.select(plans.c.tier, plans.c.price, plans.c.currency, plans.c.interval)
        .where(plans.c.tier.in_(PAID_TIERS))
        .order_by(plans.c.tier, sa.func.coalesce(plans.c.updated_at, plans.c.created_at).desc())
    ).all()
    seen: dict[str, set[tuple[Any, ...]]] = {}
    prices: dict[str, tuple[Decimal, str]] = {}
    for tier, price, currency, interval in rows:
        monthly = Decimal(price or 0) / (12 if interval == "year" else 1)
        seen.setdefault(tier, set()).add((monthly, currency))
        prices.setdefault(tier, (monthly.quantize(Decimal("0.01")), (currency or "EUR").upper()))
    warnings = [f"no plan for tier {tier} in subscriptions: its MRR counts as 0"
                for tier in PAID_TIERS if tier not in prices]
    warnings += [f"subscriptions lists {len(found)} different prices for tier {tier}; the "
                 "newest is used" for tier, found in seen.items() if len(found) > 1]
    for tier in PAID_TIERS:
        prices.setdefault(tier, (Decimal("0.00"), "EUR"))
    return prices, warnings
