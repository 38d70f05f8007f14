"""promo-cleanup: keep VoyageSmart's promo codes truthful.

A promo code grants a tier (`promo_codes.tier`) until `expires_at`; the app counts uses in
`used_count` itself (an RPC after each redemption, whose failure it only logs) and records
a `promo_code_redemptions` row (whose failure it also only logs).  So neither is complete:
`used_count` can lag the rows, and rows can be missing for counted uses.

Steps (the repair first, so that deactivation judges repaired counts and a second run
finds nothing left to do):

1. raise `used_count` to the number of redemption rows where it is lower; never lower
   it (missing rows are not evidence of fewer uses);
2. delete codes expired longer than `PROMO_RETENTION_DAYS` that were never redeemed: a
   zero count *and* no redemption row; any sign of a redemption keeps the code for good;
3. deactivate active codes past `expires_at`, or used up (`used_count >= max_uses`; a
   NULL `max_uses` is unlimited);
4. statistics per tier: codes, active, expired, used up, and uses.

Every step streams candidate ids once and writes them in batches of `BATCH_SIZE`, each
batch re-checking its condition in its own short transaction.  A dry run counts the
candidates of each step and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.batching import apply_in_batches, count, keys_in, stream_keys
from app.db import table_of
from app.jobs.context import JobContext, JobResult
from app.models import PromoCode, PromoCodeRedemption
from app.models.voyagesmart import TIERS

codes = table_of(PromoCode)
redemptions = table_of(PromoCodeRedemption)


def _recorded() -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.count())
        .where(redemptions.c.promo_code_id == codes.c.id)
        .scalar_subquery()
    )


def _lagging_counts() -> sa.Select[Any]:
    # One pass: aggregate the redemptions once and join, instead of a subquery per code.
    per_code = (sa.select(redemptions.c.promo_code_id, sa.func.count().label("n"))
                .group_by(redemptions.c.promo_code_id).subquery())
    return (
        sa.select(codes.c.id)
        .select_from(codes.join(per_code, per_code.c.promo_code_id == codes.c.id))
        .where(sa.func.coalesce(codes.c.used_count, 0) < per_code.c.n)
    )


def _used_up() -> sa.ColumnElement[bool]:
    return sa.and_(codes.c.max_uses.is_not(None), codes.c.used_count >= codes.c.max_uses)


def _expired(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(codes.c.expires_at.is_not(None), codes.c.expires_at < now)


def _should_deactivate(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(codes.c.is_active.is_(True), sa.or_(_expired(now), _used_up()))


def _should_delete(cutoff: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        _expired(cutoff),
        sa.func.coalesce(codes.c.used_count, 0) == 0,
        ~sa.exists().where(redemptions.c.promo_code_id == codes.c.id),
    )


def statistics(conn: Connection, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Per tier: codes, active, expired, used up, and uses (`used_count`)."""
    rows = conn.execute(
        sa.select(
            codes.c.tier,
            sa.func.count().label("codes"),
            sa.func.count().filter(codes.c.is_active.is_(True)).label("active"),
            sa.func.count().filter(_expired(now)).label("expired"),
            sa.func.count().filter(_used_up()).label("used_up"),
            sa.func.coalesce(sa.func.sum(codes.c.used_count), 0).label("uses"),
        ).group_by(codes.c.tier)
    ).all()
    empty = {"codes": 0, "active": 0, "expired": 0, "used_up": 0, "uses": 0}
    stats = {tier: dict(empty) for tier in TIERS}
    for row in rows:
        stats[row.tier] = {name: int(getattr(row, name)) for name in empty}
    return stats


def run(ctx: JobContext) -> JobResult:
    settings = ctx.settings
    engine = ctx.engine
    batch = settings.batch_size
    now = ctx.now
    cutoff = now - dt.timedelta(days=settings.promo_retention_days)

    steps: dict[str, Any] = {}
    timings: dict[str, float] = {}
    lagging_ids = _lagging_counts()
    deactivate_ids = sa.select(codes.c.id).where(_should_deactivate(now))
    delete_ids = sa.select(codes.c.id).where(_should_delete(cutoff))

    if ctx.dry_run:
        steps["used_counts_raised"] = count(engine, lagging_ids)
        steps["codes_deleted"] = count(engine, delete_ids)
        # As the real run: counts first, then what is still there is judged.
        used = sa.func.coalesce(codes.c.used_count, 0)
        raised = sa.case((_recorded() > used, _recorded()), else_=used)
        would_exhaust = sa.and_(codes.c.max_uses.is_not(None), raised >= codes.c.max_uses)
        steps["codes_deactivated"] = count(engine, sa.select(codes.c.id).where(
            codes.c.is_active.is_(True), sa.or_(_expired(now), would_exhaust),
            codes.c.id.not_in(delete_ids)))
    else:

        def raise_counts(conn: Connection, ids: Sequence[Any]) -> int:
            recorded = _recorded()
            stmt = (
                codes.update()
                .where(keys_in(codes.c.id, ids, conn.dialect),
                       sa.func.coalesce(codes.c.used_count, 0) < recorded)
                .values(used_count=recorded, updated_at=now)
            )
            return conn.execute(stmt).rowcount

        def deactivate(conn: Connection, ids: Sequence[Any]) -> int:
            stmt = (
                codes.update()
                .where(keys_in(codes.c.id, ids, conn.dialect), _should_deactivate(now))
                .values(is_active=False, updated_at=now)
            )
            return conn.execute(stmt).rowcount

        def delete(conn: Connection, ids: Sequence[Any]) -> int:
            stmt = codes.delete().where(keys_in(codes.c.id, ids, conn.dialect),
                                        _should_delete(cutoff))
            return conn.execute(stmt).rowcount

        for name, ids, write in (("used_counts_raised", lagging_ids, raise_counts),
                                 ("codes_deleted", delete_ids, delete),
                                 ("codes_deactivated", deactivate_ids, deactivate)):
            started = time.monotonic()
            steps[name] = apply_in_batches(engine, stream_keys(engine, ids, batch), write)
            timings[name] = round(time.monotonic() - started, 3)

    started = time.monotonic()
    with engine.connect() as conn:
        stats = statistics(conn, now)
    timings["statistics"] = round(time.monotonic() - started, 3)
    total = sum(int(v) for v in steps.values())
    verb = "would change" if ctx.dry_run else "changed"
    message = (
        f"{verb} {total} codes: {steps['codes_deactivated']} deactivated, "
        f"{steps['codes_deleted']} deleted (expired, never redeemed), "
        f"{steps['used_counts_raised']} used_count raised to the redemptions recorded; "
        + ", ".join(f"{tier} {s['active']}/{s['codes']} active" for tier, s in stats.items())
    )
    steps["retention_days"] = settings.promo_retention_days
    return JobResult(records_processed=total, message=message,
                     details={"steps": steps, "by_tier": stats, "timings_s": timings})
