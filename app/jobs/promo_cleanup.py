"""promo-cleanup: keep VoyageSmart's promo codes truthful.

Steps (repairs first, so that deactivation and deletion judge repaired data and a second
run finds nothing left to do):

1. remove redemption rows whose user no longer exists;
2. recompute `current_redemptions` from the redemption rows where it drifted;
3. delete codes expired longer than `PROMO_RETENTION_DAYS` that were never redeemed (no
   redemption row and a zero count); a code with redemptions is billing history and stays;
4. deactivate active codes past `valid_until` or with `current_redemptions >= max_redemptions`.

Every step streams candidate ids once and writes them in batches of `BATCH_SIZE`, each
batch re-checking its condition in its own short transaction.  A dry run counts the
candidates of each step and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.batching import apply_in_batches, count, stream_keys
from app.db import table_of
from app.jobs.context import JobContext, JobResult
from app.models import PromoCode, PromoCodeRedemption, User

codes = table_of(PromoCode)
redemptions = table_of(PromoCodeRedemption)
users = table_of(User)


def _orphan_redemption() -> sa.ColumnElement[bool]:
    return ~sa.exists().where(users.c.id == redemptions.c.user_id)


def _redemption_count() -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.count())
        .where(redemptions.c.promo_code_id == codes.c.id)
        .scalar_subquery()
    )


def _drifted_counts(*, skip_orphans: bool = False) -> sa.Select[Any]:
    # One pass: aggregate the redemptions once and join, instead of a subquery per code.
    # A dry run has not removed orphans yet, so it counts as if it had.
    rows = sa.select(redemptions.c.promo_code_id, sa.func.count().label("n"))
    if skip_orphans:
        rows = rows.where(~_orphan_redemption())
    per_code = rows.group_by(redemptions.c.promo_code_id).subquery()
    actual = sa.func.coalesce(per_code.c.n, 0)
    return (
        sa.select(codes.c.id)
        .select_from(codes.outerjoin(per_code, per_code.c.promo_code_id == codes.c.id))
        .where(codes.c.current_redemptions.is_distinct_from(actual))
    )


def _should_deactivate(now: dt.datetime) -> sa.ColumnElement[bool]:
    expired = sa.and_(codes.c.valid_until.is_not(None), codes.c.valid_until < now)
    exhausted = sa.and_(
        codes.c.max_redemptions.is_not(None),
        codes.c.current_redemptions >= codes.c.max_redemptions,
    )
    return sa.and_(codes.c.active.is_(True), sa.or_(expired, exhausted))


def _should_delete(cutoff: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        codes.c.valid_until.is_not(None),
        codes.c.valid_until < cutoff,
        sa.func.coalesce(codes.c.current_redemptions, 0) == 0,
        ~sa.exists().where(redemptions.c.promo_code_id == codes.c.id),
    )


def run(ctx: JobContext) -> JobResult:
    settings = ctx.settings
    engine = ctx.engine
    batch = settings.batch_size
    cutoff = ctx.now - dt.timedelta(days=settings.promo_retention_days)

    steps: dict[str, Any] = {}
    orphan_ids = sa.select(redemptions.c.id).where(_orphan_redemption())
    drift_ids = _drifted_counts()
    deactivate_ids = sa.select(codes.c.id).where(_should_deactivate(ctx.now))
    delete_ids = sa.select(codes.c.id).where(_should_delete(cutoff))

    if ctx.dry_run:
        steps["orphan_redemptions_removed"] = count(engine, orphan_ids)
        steps["redemption_counts_repaired"] = count(engine, _drifted_counts(skip_orphans=True))
        steps["codes_deleted"] = count(engine, delete_ids)
        steps["codes_deactivated"] = count(
            engine, deactivate_ids.where(codes.c.id.not_in(delete_ids))
        )
    else:

        def remove_orphans(conn: Connection, ids: Sequence[Any]) -> int:
            stmt = redemptions.delete().where(redemptions.c.id.in_(ids), _orphan_redemption())
            return conn.execute(stmt).rowcount

        def repair_counts(conn: Connection, ids: Sequence[Any]) -> int:
            actual = _redemption_count()
            stmt = (
                codes.update()
                .where(codes.c.id.in_(ids), codes.c.current_redemptions.is_distinct_from(actual))
                .values(current_redemptions=actual)
            )
            return conn.execute(stmt).rowcount

        def deactivate(conn: Connection, ids: Sequence[Any]) -> int:
            stmt = (
                codes.update()
                .where(codes.c.id.in_(ids), _should_deactivate(ctx.now))
                .values(active=False)
            )
            return conn.execute(stmt).rowcount

        def delete(conn: Connection, ids: Sequence[Any]) -> int:
            stmt = codes.delete().where(codes.c.id.in_(ids), _should_delete(cutoff))
            return conn.execute(stmt).rowcount

        steps["orphan_redemptions_removed"] = apply_in_batches(
            engine, stream_keys(engine, orphan_ids, batch), remove_orphans
        )
        steps["redemption_counts_repaired"] = apply_in_batches(
            engine, stream_keys(engine, drift_ids, batch), repair_counts
        )
        steps["codes_deleted"] = apply_in_batches(
            engine, stream_keys(engine, delete_ids, batch), delete
        )
        steps["codes_deactivated"] = apply_in_batches(
            engine, stream_keys(engine, deactivate_ids, batch), deactivate
        )

    total = sum(int(v) for v in steps.values())
    verb = "would change" if ctx.dry_run else "changed"
    message = (
        f"{verb} {total} rows: {steps['codes_deactivated']} deactivated, "
        f"{steps['codes_deleted']} deleted, {steps['redemption_counts_repaired']} counts "
        f"repaired, {steps['orphan_redemptions_removed']} orphan redemptions removed"
    )
    steps["retention_days"] = settings.promo_retention_days
    return JobResult(records_processed=total, message=message, details={"steps": steps})
