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
   A NULL date is no evidence that time is up: such a row is never selected.
2. Brake (`SUBSCRIPTION_EXPIRY_DOWNGRADE_BRAKE_SHARE`/`_COUNT`): a wrong clock, or
   `valid_until` values written wrong, would downgrade everyone at once.  Past more rows
   than the count and than the share of the rows holding a paid tier, nothing is changed
   and the run ends `error` with samples; `force` goes on.
3. In batches, each row re-checked in the same statement: `tier 'free', status 'inactive',
   cancel_at_period_end false, updated_at now`; Stripe ids are kept, as the app keeps them.
4. For each row changed, one `subscription_history` row as the app writes it:
   `subscription_expired`, tier free, status inactive, the row's Stripe ids, and
   `details {previous_tier, expired_at, reason}` (`automatic_expiration_check` for the
   app's rule, `valid_until_passed` for a grant), plus the run id and the values before
   and after: `voyagesmart-cron restore <run-id>` sets them back (`restore` below).

Skipped (nothing to do, `nothing_to_do`) when no paid tier has ended: one EXISTS read.

A second run finds nothing.  A dry run counts what it would change, by rule and tier, and
engages the same brake: it predicts the real run's counts and samples.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from app.config import Settings
from app.core.batching import keys_in, stream_rows
from app.core.context import JobContext, JobResult
from app.core.safety import SAMPLES, Brake
from app.db import new_uuid, table_of
from app.models import SubscriptionHistory, UserSubscription
from app.voyagesmart.subscription_restore import restore_run

subs = table_of(UserSubscription)
history = table_of(SubscriptionHistory)

CANCELED_AT_PERIOD_END = "automatic_expiration_check"  # the app route's reason
GRANT_ENDED = "valid_until_passed"
SOURCE = "subscription-expiry"


def _reason(now: Any) -> sa.ColumnElement[Any]:
    period_over = sa.and_(subs.c.cancel_at_period_end.is_(True),
                          subs.c.current_period_end < now)
    grant_over = sa.and_(subs.c.stripe_subscription_id.is_(None), subs.c.valid_until < now)
    return sa.case((period_over, sa.literal(CANCELED_AT_PERIOD_END)),
                   (grant_over, sa.literal(GRANT_ENDED)), else_=sa.null())


def _expired(now: Any) -> sa.ColumnElement[bool]:
    return sa.and_(subs.c.tier != "free", _reason(now).is_not(None))


def candidates(now: Any) -> sa.Select[Any]:
    return (sa.select(subs.c.id, subs.c.user_id, subs.c.tier, subs.c.status,
                      subs.c.cancel_at_period_end, subs.c.current_period_end,
                      subs.c.valid_until, subs.c.stripe_subscription_id,
                      subs.c.stripe_customer_id, _reason(now).label("reason"))
            .where(_expired(now)).order_by(subs.c.id))


def nothing_to_do(ctx: JobContext) -> str | None:
    """The precondition (app/core/registry.py): no subscription's paid tier has ended."""
    with ctx.engine.connect() as conn:
        if conn.execute(sa.select(sa.exists().where(_expired(ctx.now)))).scalar():
            return None
    return ("no paid subscription has passed its canceled period's end or its "
            "valid_until")


def _sample(row: Row[Any]) -> str:
    return f"user {row.user_id}: {row.tier} -> free ({row.reason})"


def _brake(ctx: JobContext) -> tuple[dict[str, Any], list[str]]:
    """Engage the brake on the whole run before the first write; its figures and the
    run's samples (the first rows it changes, in the order it changes them)."""
    now = ctx.now
    with ctx.engine.connect() as conn:
        affected, population = conn.execute(sa.select(
            sa.select(sa.func.count()).where(_expired(now)).scalar_subquery(),
            sa.select(sa.func.count()).select_from(subs).where(subs.c.tier != "free")
            .scalar_subquery(),
        )).one()
        first = conn.execute(candidates(now).limit(SAMPLES)).all()
    samples = [_sample(row) for row in first]
    s = ctx.settings
    brake = Brake("downgrade subscriptions to free", s.subscription_expiry_downgrade_brake_share,
                  s.subscription_expiry_downgrade_brake_count,
                  ("SUBSCRIPTION_EXPIRY_DOWNGRADE_BRAKE_SHARE",
                   "SUBSCRIPTION_EXPIRY_DOWNGRADE_BRAKE_COUNT"))
    figures = brake.engage(affected=int(affected), population=int(population),
                           samples=samples, force=ctx.force)
    return figures, samples


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
            conn.execute(history.insert(), [_history(ctx, r) for r in done])
    return done


def _history(ctx: JobContext, r: Row[Any]) -> dict[str, Any]:
    now = ctx.now
    before = {"tier": r.tier, "status": r.status,
              "cancel_at_period_end": bool(r.cancel_at_period_end)}
    ended = r.current_period_end if r.reason == CANCELED_AT_PERIOD_END else r.valid_until
    return {
        "id": new_uuid(), "user_id": r.user_id, "event_type": "subscription_expired",
        "tier": "free", "status": "inactive",
        "stripe_subscription_id": r.stripe_subscription_id,
        "stripe_customer_id": r.stripe_customer_id, "event_timestamp": now,
        "created_at": now,
        "details": {"previous_tier": r.tier, "expired_at": now.isoformat(),
                    "reason": r.reason, "ended_at": ended.isoformat() if ended else None,
                    "source": SOURCE, "run_id": str(ctx.run_id), "row_id": str(r.id),
                    "before": before,
                    "after": {"tier": "free", "status": "inactive",
                              "cancel_at_period_end": False}},
    }


def run(ctx: JobContext) -> JobResult:
    brake, samples = _brake(ctx)
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
                              "brake": brake, "samples": samples,
                              "dry_run": ctx.dry_run})


def restore(settings: Settings, engine: Engine, run_id: uuid.UUID, now: dt.datetime,
            dry_run: bool) -> dict[str, Any]:
    """Set back the rows run `run_id` moved to free, from its history rows
    (app/voyagesmart/subscription_restore.py); rows changed since are left and reported."""
    return restore_run(engine, run_id, now, dry_run, job="subscription-expiry")
