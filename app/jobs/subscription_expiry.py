"""subscription-expiry: end the tiers whose time is up, as VoyageSmart's own cron route does.

VoyageSmart's `GET /api/cron/check-subscriptions` (`checkExpiredSubscriptions`) is taken
over here; `/api/cron/check-subscriptions` runs this job, so an existing schedule keeps
working.

1. Select, from `user_subscriptions`, the rows whose paid tier has ended:
   - *canceled at period end* (the app route's rule): `cancel_at_period_end` is true,
     `current_period_end` has passed and the tier is not free;
   - *granted time over*: no Stripe subscription (the sign-up trigger's premium year, a
     promo code's tier) and `valid_until` has passed, tier not free.  A row with a Stripe
     subscription is left to Stripe: the app never moves its `valid_until` on renewal.
2. In batches, each row re-checked in the same statement: `tier 'free', status 'inactive',
   cancel_at_period_end false, updated_at now`; Stripe ids are kept, as the app keeps them.
3. For each row changed, one `subscription_history` row as the app writes it:
   `subscription_expired`, tier free, status inactive, the row's Stripe ids, and
   `details {previous_tier, expired_at, reason}` (`automatic_expiration_check` for the
   app's rule, `valid_until_passed` for a grant).

A second run finds nothing.  A dry run counts what it would change, by rule and tier.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from app.batching import keys_in, stream_rows
from app.db import new_uuid, table_of
from app.jobs.context import JobContext, JobResult
from app.models import SubscriptionHistory, UserSubscription

subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)

CANCELED_AT_PERIOD_END = "automatic_expiration_check"  # the app route's reason
GRANT_ENDED = "valid_until_passed"


def _reason(now: Any) -> sa.ColumnElement[Any]:
    period_over = sa.and_(subs.c.cancel_at_period_end.is_(True),
                          subs.c.current_period_end < now)
    grant_over = sa.and_(subs.c.stripe_subscription_id.is_(None), subs.c.valid_until < now)
    return sa.case((period_over, sa.literal(CANCELED_AT_PERIOD_END)),
                   (grant_over, sa.literal(GRANT_ENDED)), else_=sa.null())


def _expired(now: Any) -> sa.ColumnElement[bool]:
    return sa.and_(subs.c.tier != "free", _reason(now).is_not(None))


def candidates(now: Any) -> sa.Select[Any]:
    return (sa.select(subs.c.id, subs.c.user_id, subs.c.tier, subs.c.stripe_subscription_id,
                      subs.c.stripe_customer_id, _reason(now).label("reason"))
            .where(_expired(now)).order_by(subs.c.id))


def _expire(ctx: JobContext, rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    now = ctx.now
    with ctx.engine.begin() as conn:
        changed = set(conn.scalars(
            subs.update()
            .where(keys_in(subs.c.id, [r.id for r in rows], conn.dialect), _expired(now))
            .values(tier="free", status="inactive", cancel_at_period_end=False,
                    updated_at=now)
            .returning(subs.c.id)))
        done = [r for r in rows if r.id in changed]
        if done:
            conn.execute(history.insert(), [{
                "id": new_uuid(), "user_id": r.user_id, "event_type": "subscription_expired",
                "tier": "free", "status": "inactive",
                "stripe_subscription_id": r.stripe_subscription_id,
                "stripe_customer_id": r.stripe_customer_id, "event_timestamp": now,
                "created_at": now,
                "details": {"previous_tier": r.tier, "expired_at": now.isoformat(),
                            "reason": r.reason, "source": "voyagesmart-cron",
                            "run_id": str(ctx.run_id)},
            } for r in done])
    return done


def run(ctx: JobContext) -> JobResult:
    by_reason: Counter[str] = Counter()
    by_tier: Counter[str] = Counter()
    for chunk in stream_rows(ctx.engine, candidates(ctx.now), ctx.settings.batch_size):
        done = list(chunk) if ctx.dry_run else _expire(ctx, chunk)
        by_reason.update(r.reason for r in done)
        by_tier.update(r.tier for r in done)
    total = sum(by_reason.values())
    verb = "would move" if ctx.dry_run else "moved"
    message = (f"{verb} {total} subscription(s) to free/inactive: "
               f"{by_reason[CANCELED_AT_PERIOD_END]} canceled at period end, "
               f"{by_reason[GRANT_ENDED]} granted tiers past valid_until")
    return JobResult(records_processed=total, message=message,
                     details={"expired": total, "by_reason": dict(sorted(by_reason.items())),
                              "previous_tier": dict(sorted(by_tier.items())),
                              "dry_run": ctx.dry_run})
