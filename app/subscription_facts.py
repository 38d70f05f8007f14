"""What `user_subscriptions` and `subscription_history` say about paid subscriptions.

`user_subscriptions` holds one row per user, its current state only; the past is read from
`subscription_history`, which the app (and this service) append to.

- *Paid*: a row with a `stripe_subscription_id`, a paid tier and status `active`.  Only
  these count as paying subscribers and add to MRR.
- *Grant*: a paid tier without a Stripe subscription, status `active`: the sign-up
  trigger's premium year, or a promo code's tier (the user has a redemption).  Reported
  apart, never in MRR.
- A paid subscription *starts* at the first history event naming its Stripe id with a
  paid tier, and *ends* at its first churn transition, as the app records them: an
  `inactive` status, `subscription_deleted` or `subscription_expired` (tier: the last paid
  tier recorded for that subscription before it).
- At a past moment `t`, paid subscriptions per tier = paid now - started since `t` + ended
  since `t`.
- Prices come from the `subscriptions` plan catalogue, by tier (a yearly plan counts a
  twelfth of its price per month).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
_FAR = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def tier_rank(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """0 for free, rising with price; NULL for an unknown tier."""
    return sa.case({tier: rank for rank, tier in enumerate(TIERS)}, value=column,
                   else_=sa.null())


def tier_of_rank(rank: int | None) -> str:
    return TIERS[rank] if rank is not None and 0 <= rank < len(TIERS) else "free"


def is_paid() -> sa.ColumnElement[bool]:
    return sa.and_(subs.c.stripe_subscription_id.is_not(None), subs.c.tier.in_(PAID_TIERS),
                   subs.c.status == "active")


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


def paid_now(conn: Connection) -> dict[str, int]:
    return _per_tier(conn.execute(
        sa.select(subs.c.tier, sa.func.count()).where(is_paid()).group_by(subs.c.tier)))


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


def _paid_events() -> sa.Select[Any]:
    return sa.select(history).where(history.c.stripe_subscription_id.is_not(None))


def _first_starts() -> sa.Subquery:
    return (
        sa.select(history.c.user_id, history.c.tier, history.c.event_timestamp.label("at"),
                  sa.func.row_number().over(
                      partition_by=history.c.stripe_subscription_id,
                      order_by=(history.c.event_timestamp, history.c.created_at)).label("n"))
        .where(history.c.stripe_subscription_id.is_not(None),
               history.c.tier.in_(PAID_TIERS))
        .subquery()
    )


def _first_ends() -> sa.Subquery:
    churn = sa.or_(history.c.event_type.in_(CHURN_EVENTS), history.c.status == "inactive")
    first_end = (
        sa.select(history.c.stripe_subscription_id.label("sid"),
                  sa.func.min(history.c.event_timestamp).label("at"))
        .where(history.c.stripe_subscription_id.is_not(None), churn)
        .group_by(history.c.stripe_subscription_id)
        .subquery()
    )
    earlier = history.alias("earlier")
    last_tier = (
        sa.select(earlier.c.tier)
        .where(earlier.c.stripe_subscription_id == first_end.c.sid,
               earlier.c.tier.in_(PAID_TIERS), earlier.c.event_timestamp <= first_end.c.at)
        .order_by(earlier.c.event_timestamp.desc(), earlier.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    return sa.select(first_end.c.at, last_tier.label("tier")).subquery()


def _since(conn: Connection, events: sa.Subquery, moments: Sequence[dt.datetime],
           *where: sa.ColumnElement[bool]) -> list[dict[str, int]]:
    """Per moment, events at or after it by tier: one pass for every moment."""
    columns = [sa.func.count().filter(events.c.at >= m).label(f"m{i}")
               for i, m in enumerate(moments)]
    out = [{tier: 0 for tier in PAID_TIERS} for _ in moments]
    for row in conn.execute(sa.select(events.c.tier, *columns)
                            .where(events.c.tier.is_not(None), *where)
                            .group_by(events.c.tier)):
        if row.tier in PAID_TIERS:
            for i in range(len(moments)):
                out[i][row.tier] = int(row[i + 1])
    return out


def starts_since(conn: Connection, moments: Sequence[dt.datetime]) -> list[dict[str, int]]:
    """Paid subscriptions started at or after each moment, by tier."""
    first = _first_starts()
    return _since(conn, first, moments, first.c.n == 1)


def ends_since(conn: Connection, moments: Sequence[dt.datetime]) -> list[dict[str, int]]:
    """Paid subscriptions whose first churn transition came at or after each moment, by the
    last paid tier recorded before it."""
    return _since(conn, _first_ends(), moments)


def starts(conn: Connection, start: dt.datetime, end: dt.datetime = _FAR
           ) -> tuple[dict[str, int], int]:
    """Paid subscriptions started in [start, end) by tier, and the distinct users."""
    first = _first_starts()
    window = sa.and_(first.c.n == 1, first.c.at >= start, first.c.at < end)
    tiers = _per_tier(conn.execute(
        sa.select(first.c.tier, sa.func.count()).where(window).group_by(first.c.tier)))
    users = int(conn.execute(
        sa.select(sa.func.count(sa.distinct(first.c.user_id))).where(window)).scalar_one())
    return tiers, users


def ends(conn: Connection, start: dt.datetime, end: dt.datetime = _FAR) -> dict[str, int]:
    """Paid subscriptions whose first churn transition fell in [start, end)."""
    since = ends_since(conn, [start, end])
    return {tier: since[0][tier] - since[1][tier] for tier in PAID_TIERS}


def paid_at(conn: Connection, moment: dt.datetime, now_counts: dict[str, int] | None = None
            ) -> dict[str, int]:
    """Paid subscriptions per tier at a past `moment`, from today's count and the history
    since."""
    now_counts = now_counts if now_counts is not None else paid_now(conn)
    [started] = starts_since(conn, [moment])
    [ended] = ends_since(conn, [moment])
    return {tier: max(0, now_counts[tier] - started[tier] + ended[tier]) for tier in PAID_TIERS}


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
