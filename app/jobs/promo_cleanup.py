"""promo-cleanup: keep VoyageSmart's promo codes truthful, and never lose a used one.

A promo code grants a tier (`promo_codes.tier`) until `expires_at`.  The app records each
redemption three ways and lets the first two fail silently: a `promo_code_redemptions`
row, `used_count + 1` (an RPC), and a `promo_code_redemption` row in
`subscription_history` whose details name the code (`promo_code_id`).  None is complete
alone; any of them is evidence that a code was used.  History rows have no foreign key,
so they outlive a deleted account, which may take its redemption rows along.

Steps:

1. plan: count what each step below will change, from the state each step will find,
   and ask every brake (app/core/safety.py) before anything is written: past a brake the run
   changes nothing.  A dry run stops here and reports the plan (with the statistics it
   will leave, and five sample ids per step), which is exactly what the real run does;
   the real run plans its chunks (below);
2. raise `used_count` to the number of redemption rows where it is lower;
3. delete codes expired longer than `PROMO_RETENTION_DAYS` that show no sign of use:
   `used_count` 0, no redemption row, no redemption in the history.  Each goes whole into
   the archive (app/core/archive.py) in its delete's transaction, for `voyagesmart-cron
   restore <run-id>`.  Brake: `PROMO_CLEANUP_DELETE_BRAKE_*`, of all codes;
4. deactivate active codes past `expires_at` or used up (`used_count >= max_uses`; a
   NULL `max_uses` is unlimited).  Brake: `PROMO_CLEANUP_DEACTIVATE_BRAKE_*`, of the
   active codes;
5. only with `PROMO_REDEMPTION_ROWS_COMPLETE`: lower `used_count` to the rows where it is
   higher and there is at least one row.  A count with no row at all stays: lowering it
   to 0 would make a used code look unused.  It comes after step 4, so a used-up code is
   closed before its count drops.  Brake: `PROMO_CLEANUP_LOWER_BRAKE_*`, of all codes;
6. purge every job's archived rows older than `ARCHIVE_RETENTION_DAYS`: past that, a
   deletion is final;
7. statistics per tier: codes, active, expired, used up, and uses.

Skipped (nothing to do, `nothing_to_do`) when, since the last run that did its work, no
code was created, edited or redeemed, no active code is expired or used up, no code passed
its retention and no archived row is past `ARCHIVE_RETENTION_DAYS`: six cheap reads.

Steps 2-5 run as chunks (app/core/chunks.py): the codes' primary key in consecutive ranges
of `CHUNK_BATCHES` x `BATCH_SIZE` codes, each range taken through the four steps, in order,
in one transaction that re-checks every step's condition where it writes; step 6 is the
last chunk.  The history, costly to read, is read once by the plan (`_spared`).  A code's
fate depends on its own row, redemption rows and history events only, so the ranges, run
over as many invocations as the time budget needs, change exactly what one pass over the
table would.  Each chunk judges codes by the plan's clock (its args carry it), and the
brakes were all asked, on the whole table, before the first chunk.  Nothing here ever sets
`is_active` true or deletes a redemption row.

Longer than the usual 400 lines: one module per job, read top to bottom in the order of the
steps above; each step re-checks its own condition where it writes, so that check stays by it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.config import Settings
from app.core.archive import archive_and_delete, purge_archive
from app.core.batching import KeyRange, in_range, key_ranges
from app.core.chunks import Chunked, Plan, done_within
from app.core.context import JobContext, JobResult
from app.core.health import last_worked
from app.core.safety import SAMPLES, Brake
from app.db import table_of
from app.models import CronArchivedRow, PromoCode, PromoCodeRedemption, SubscriptionHistory
from app.models.voyagesmart import TIERS

codes = table_of(PromoCode)
redemptions = table_of(PromoCodeRedemption)
history = table_of(SubscriptionHistory)
archived = table_of(CronArchivedRow)

REDEMPTION_EVENT = "promo_code_redemption"  # what the app's redeem route records
CODE_STEPS = ("used_counts_raised", "codes_deleted", "codes_deactivated",
              "used_counts_lowered")
# Codes per chunk, in batches of `BATCH_SIZE` (50,000 at the default 5,000): a chunk's
# transaction stays well under a second (0.58 s at most over 1,000,000 codes in
# bench/promo_cleanup.py; 100,000 codes reached 0.87 s), and its fixed costs (its range's
# index probes, its done-mark) are paid rarely (2 batches made the job 2.9x the
# hand-written statements; 10 make it 1.9x).
CHUNK_BATCHES = 10
_STATS = ("codes", "active", "expired", "used_up", "uses")


def brakes(settings: Settings) -> dict[str, Brake]:
    return {
        "delete": Brake("delete promo codes", settings.promo_cleanup_delete_brake_share,
                        settings.promo_cleanup_delete_brake_count,
                        ("PROMO_CLEANUP_DELETE_BRAKE_SHARE",
                         "PROMO_CLEANUP_DELETE_BRAKE_COUNT")),
        "deactivate": Brake("deactivate promo codes",
                            settings.promo_cleanup_deactivate_brake_share,
                            settings.promo_cleanup_deactivate_brake_count,
                            ("PROMO_CLEANUP_DEACTIVATE_BRAKE_SHARE",
                             "PROMO_CLEANUP_DEACTIVATE_BRAKE_COUNT")),
        "lower": Brake("lower used_count of promo codes",
                       settings.promo_cleanup_lower_brake_share,
                       settings.promo_cleanup_lower_brake_count,
                       ("PROMO_CLEANUP_LOWER_BRAKE_SHARE", "PROMO_CLEANUP_LOWER_BRAKE_COUNT")),
    }


# --- evidence of use ----------------------------------------------------------------------
def _history_key(dialect: str) -> sa.ColumnElement[Any]:
    """The code id a history row's details name, as 32 lower-case hex digits (see
    `_code_key`), or NULL.  Details written JSON-encoded (a JSON string holding the
    object) are read too."""
    details = history.c.details
    if dialect == "postgresql":
        raw = sa.case(
            {"object": details["promo_code_id"].as_string(),
             "string": sa.func.substring(
                 details.op("#>>")(sa.literal_column("'{}'")),
                 sa.literal_column("""'"promo_code_id"\\s*:\\s*"([^"]*)"'"""))},
            value=sa.func.jsonb_typeof(details))
    else:
        inner = sa.func.json_extract(details, "$")
        raw = sa.case((sa.func.json_valid(details) == 1, sa.case(
            (sa.func.json_type(details) == "object",
             sa.func.json_extract(details, "$.promo_code_id")),
            (sa.and_(sa.func.json_type(details) == "text", sa.func.json_valid(inner) == 1),
             sa.func.json_extract(inner, "$.promo_code_id")),
        )))
    return sa.func.replace(sa.func.lower(sa.func.trim(raw)), "-", "")


# A code's id as text without dashes: what `_history_key` is compared with.  Comparing
# text, not uuids, means a value that is no uuid simply matches nothing (a cast would fail
# the statement), and only the codes that reach the comparison pay for it.
_code_key = sa.func.replace(sa.cast(codes.c.id, sa.Text), "-", "")


def _named_in_history(dialect: str) -> sa.Subquery:
    """The codes the history records a redemption of, once each."""
    return (sa.select(_history_key(dialect).label("code_key"))
            .where(history.c.event_type == REDEMPTION_EVENT)
            .distinct().subquery("named_in_history"))


def _rows_per_code() -> sa.Subquery:
    return (sa.select(redemptions.c.promo_code_id.label("code_id"),
                      sa.func.count().label("n"))
            .group_by(redemptions.c.promo_code_id).subquery("rows_per_code"))


def _recorded() -> sa.ScalarSelect[Any]:
    """The code's redemption rows, counted in the statement that writes it."""
    return (sa.select(sa.func.count())
            .where(redemptions.c.promo_code_id == codes.c.id)
            .scalar_subquery())


_has_rows = sa.exists().where(redemptions.c.promo_code_id == codes.c.id)


# --- the rules, on the stored state ----------------------------------------------------------
_used = sa.func.coalesce(codes.c.used_count, 0)
_active = codes.c.is_active.is_(True)


def _expired(moment: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(codes.c.expires_at.is_not(None), codes.c.expires_at < moment)


def _used_up(count: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    return sa.and_(codes.c.max_uses.is_not(None), count >= codes.c.max_uses)


class _Rules:
    """Each step's condition, for one run (its clock, its settings, its dialect)."""

    def __init__(self, settings: Settings, now: dt.datetime, dialect: str) -> None:
        self.now = now
        self.cutoff = now - dt.timedelta(days=settings.promo_retention_days)
        self.complete = settings.promo_redemption_rows_complete
        named = _named_in_history(dialect)
        self.in_history = sa.exists().where(named.c.code_key == _code_key)

    def deletable(self, has_rows: sa.ColumnElement[bool],
                  in_history: sa.ColumnElement[bool] | None = None
                  ) -> sa.ColumnElement[bool]:
        """Expired past retention, and no sign of any use (no count, no redemption row
        and, unless `in_history` is left out, no redemption in the history)."""
        conditions = [_expired(self.cutoff), _used == 0, ~has_rows]
        if in_history is not None:
            conditions.append(~in_history)
        return sa.and_(*conditions)

    def doomed(self) -> sa.ColumnElement[bool]:
        """What step 3 deletes."""
        return self.deletable(_has_rows, self.in_history)

    def to_deactivate(self, count: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        return sa.and_(_active, sa.or_(_expired(self.now), _used_up(count)))

    def to_lower(self, rows: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        if not self.complete:
            return sa.false()
        return sa.and_(rows >= 1, _used > rows)


# --- 1. the plan ----------------------------------------------------------------------------
class _Plan:
    """What each step will change, counted before anything is written.

    Two reads: one pass over the codes with their redemption rows, and the codes step 3
    will delete.  Deactivation is counted from the state step 4 will find: the codes
    active and past their expiry or used up, plus those step 2's raised counts use up,
    minus those step 3 deletes (all expired, so all among the first)."""

    def __init__(self, rules: _Rules) -> None:
        rows_of = _rows_per_code()
        rows = sa.func.coalesce(rows_of.c.n, 0)
        raised = rows > _used
        count = sa.func.count
        self.counts = sa.select(
            count().label("population"),
            count().filter(_active).label("active_population"),
            count().filter(rules.to_deactivate(_used)).label("deactivatable"),
            count().filter(sa.and_(_active, ~_expired(rules.now), ~_used_up(_used), raised,
                                   _used_up(rows))).label("used_up_by_raise"),
            count().filter(raised).label("used_counts_raised"),
            count().filter(rules.to_lower(rows)).label("used_counts_lowered"),
            count().filter(sa.and_(_used > 0, rows == 0)).label("counted_without_rows"),
        ).select_from(codes.outerjoin(rows_of, rows_of.c.code_id == codes.c.id))
        self.doomed_counts = sa.select(count(), count().filter(_active)).where(rules.doomed())

    def read(self, conn: Connection, doomed: tuple[int, int] | None = None) -> dict[str, int]:
        """The plan's figures; `doomed` (deletions, active among them) when already
        counted."""
        row = conn.execute(self.counts).one()
        if doomed is None:
            found = conn.execute(self.doomed_counts).one()
            doomed = (int(found[0]), int(found[1]))
        return {
            "population": int(row.population),
            "active_population": int(row.active_population),
            "used_counts_raised": int(row.used_counts_raised),
            "codes_deleted": doomed[0],
            "codes_deactivated": int(row.deactivatable) + int(row.used_up_by_raise)
            - doomed[1],
            "used_counts_lowered": int(row.used_counts_lowered),
            "counted_without_rows": int(row.counted_without_rows),
        }


class _Model:
    """Each code as the run will leave it, judged in one query: the dry run's samples and
    statistics, and a tripped brake's samples.  Slower than the plan; never on the path
    of a real run that goes ahead."""

    def __init__(self, rules: _Rules, dialect: str) -> None:
        rows_of = _rows_per_code()
        named = _named_in_history(dialect)
        rows = sa.func.coalesce(rows_of.c.n, 0)
        repaired = sa.case((rows > _used, rows), else_=_used)
        deleted = rules.deletable(rows > 0, named.c.code_key.is_not(None))
        lowered = rules.to_lower(rows)
        self.judged = sa.select(
            codes.c.id, codes.c.tier, codes.c.max_uses,
            _active.label("active_now"),
            (rows > _used).label("used_counts_raised"),
            deleted.label("codes_deleted"),
            sa.and_(~deleted, rules.to_deactivate(repaired)).label("codes_deactivated"),
            lowered.label("used_counts_lowered"),
            _expired(rules.now).label("expired"),
            sa.case((lowered, rows), else_=repaired).label("final_used"),
        ).select_from(
            codes.outerjoin(rows_of, rows_of.c.code_id == codes.c.id)
            .outerjoin(named, named.c.code_key == _code_key)
        ).subquery("judged")

    def samples(self, conn: Connection, step: str) -> list[str]:
        j = self.judged.c
        ids = conn.execute(sa.select(j.id).where(j[step]).order_by(j.id).limit(SAMPLES)
                           ).scalars()
        return [str(key) for key in ids]

    def statistics(self, conn: Connection) -> dict[str, dict[str, int]]:
        """The statistics the real run reads after its writes."""
        j = self.judged.c
        kept = ~j.codes_deleted
        count = sa.func.count
        rows = conn.execute(sa.select(
            j.tier,
            count().filter(kept).label("codes"),
            count().filter(sa.and_(kept, j.active_now, ~j.codes_deactivated)).label("active"),
            count().filter(sa.and_(kept, j.expired)).label("expired"),
            count().filter(sa.and_(kept, j.max_uses.is_not(None),
                                   j.final_used >= j.max_uses)).label("used_up"),
            sa.func.coalesce(sa.func.sum(sa.case((kept, j.final_used), else_=0)), 0
                             ).label("uses"),
        ).group_by(j.tier)).all()
        stats = _empty_stats()
        for row in rows:
            if row.tier in stats or row.codes:
                stats[row.tier] = {name: int(getattr(row, name)) for name in _STATS}
        return stats


def _empty_stats() -> dict[str, dict[str, int]]:
    return {tier: dict.fromkeys(_STATS, 0) for tier in TIERS}


def statistics(conn: Connection, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Per tier: codes, active, expired, used up, and uses (`used_count`)."""
    rows = conn.execute(
        sa.select(
            codes.c.tier,
            sa.func.count().label("codes"),
            sa.func.count().filter(_active).label("active"),
            sa.func.count().filter(_expired(now)).label("expired"),
            sa.func.count().filter(_used_up(_used)).label("used_up"),
            sa.func.coalesce(sa.func.sum(_used), 0).label("uses"),
        ).group_by(codes.c.tier)
    ).all()
    stats = _empty_stats()
    for row in rows:
        stats[row.tier] = {name: int(getattr(row, name)) for name in _STATS}
    return stats


# --- 2-5. the writes, one key range of codes at a time -----------------------------------------
def _key_ranges(ctx: JobContext) -> list[KeyRange]:
    """The whole key space of `promo_codes.id` in ranges of `CHUNK_BATCHES` batches of
    codes each (app/core/batching.py's `key_ranges`)."""
    return key_ranges(ctx.engine, codes.c.id, CHUNK_BATCHES * ctx.settings.batch_size)


def _spared(ctx: JobContext, rules: _Rules, ranges: list[KeyRange]
            ) -> list[list[str]]:
    """Per range, the codes past retention that the history says were redeemed: the
    history is read once, here, and never by a chunk (each would scan it again).  A
    history event only comes with a redemption, which the app refuses past a code's
    expiry, so none appears for these codes between the plan and the chunks."""
    spared: list[list[str]] = [[] for _ in ranges]
    uppers = [uuid.UUID(upto) for _, upto in ranges[:-1] if upto is not None]
    with ctx.engine.connect() as conn:
        for key in conn.execute(sa.select(codes.c.id).where(
                _expired(rules.cutoff), rules.in_history).order_by(codes.c.id)).scalars():
            spared[bisect.bisect_left(uppers, uuid.UUID(str(key)))].append(str(key))
    return spared


@contextmanager
def _chunk_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for a chunk's writes, so a chunk is done whole or not at all.

    On PostgreSQL at REPEATABLE READ: a redemption committed while the delete runs would
    be removed with its code by ON DELETE CASCADE, unseen; at this level PostgreSQL fails
    the chunk instead (a serialization failure, retried), and the retry keeps the code.
    The chunk's done-mark and counts are in it too (`done_within`).  No wait for the
    commit's WAL flush: the chunk's times, written next and synchronously, flush it; a
    crash of the database server before that loses the chunk's writes and its mark
    together, and the chunk, still pending, does them again."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn


def _smallest(ids: Iterable[Any]) -> list[str]:
    return [str(key) for key in heapq.nsmallest(SAMPLES, (uuid.UUID(str(i)) for i in ids))]


class _Writes:
    """Steps 2-5 on the codes of one key range, in the steps' order, each one set-based
    statement that re-checks its step's condition where it writes (a code changed since
    the plan is judged as it is now).  Every code's fate depends on its own row, its
    redemption rows and its history events only, so the ranges, done one by one, change
    exactly what the steps done over the whole table would."""

    def __init__(self, ctx: JobContext, rules: _Rules, conn: Connection,
                 args: dict[str, Any]) -> None:
        self.ctx = ctx
        self.rules = rules
        self.conn = conn
        self.where = in_range(codes.c.id, args["after"], args["upto"])
        # Only codes with a redemption row can have their count raised or lowered: found
        # through the rows' own index, in the same range.
        self.redeemed = codes.c.id.in_(
            sa.select(redemptions.c.promo_code_id)
            .where(in_range(redemptions.c.promo_code_id, args["after"], args["upto"])))
        self.spared = [uuid.UUID(key) for key in args.get("spared", [])]

    def raise_counts(self) -> list[Any]:
        recorded = _recorded()
        return list(self.conn.execute(
            codes.update().where(self.where, self.redeemed, _used < recorded)
            .values(used_count=recorded, updated_at=self.ctx.now)
            .returning(codes.c.id)).scalars())

    def delete(self) -> list[Any]:
        """The range's codes with no sign of use, archived whole as they go; those the
        history names were found by the plan (`spared`)."""
        cheap = sa.and_(self.where, self.rules.deletable(_has_rows))
        if self.spared:
            cheap = sa.and_(cheap, codes.c.id.not_in(self.spared))
        return list(archive_and_delete(self.conn, codes, cheap, run_id=self.ctx.run_id,
                                       job=self.ctx.task, now=self.ctx.now))

    def deactivate(self) -> list[Any]:
        return list(self.conn.execute(
            codes.update().where(self.where, self.rules.to_deactivate(_used))
            .values(is_active=False, updated_at=self.ctx.now)
            .returning(codes.c.id)).scalars())

    def lower(self) -> list[Any]:
        recorded = _recorded()
        # A code used up by its old count stays closed (the right-hand side reads the row
        # as it was).
        return list(self.conn.execute(
            codes.update().where(self.where, self.redeemed, self.rules.to_lower(recorded))
            .values(used_count=recorded, updated_at=self.ctx.now,
                    is_active=sa.case((_used_up(_used), sa.false()), else_=codes.c.is_active))
            .returning(codes.c.id)).scalars())


# --- the run ----------------------------------------------------------------------------------
def _engage_brakes(ctx: JobContext, planned: dict[str, int], samples: Callable[[str], list[str]]
                   ) -> dict[str, Any]:
    """Ask every brake with the plan's figures; raises `BrakeTripped` past one."""
    braked = brakes(ctx.settings)
    asked = [("delete", "codes_deleted", planned["population"]),
             ("deactivate", "codes_deactivated", planned["active_population"])]
    if ctx.settings.promo_redemption_rows_complete:
        asked.append(("lower", "used_counts_lowered", planned["population"]))
    figures: dict[str, Any] = {}
    for name, step, population in asked:
        brake, affected = braked[name], planned[step]
        tripped = not brake.allows(affected, population) and not ctx.force
        figures[name] = brake.engage(affected=affected, population=population,
                                     samples=samples(step) if tripped else (), force=ctx.force)
    return figures


def nothing_to_do(ctx: JobContext) -> str | None:
    """The precondition (app/core/registry.py): nothing changed since the last run that
    did the work, so this one would change nothing.  Never skips a job that has not run."""
    since = last_worked(ctx.engine, ctx.task)
    if since is None:
        return None
    now, settings = ctx.now, ctx.settings
    retention = dt.timedelta(days=settings.promo_retention_days)
    changed = sa.or_(codes.c.created_at > since, codes.c.updated_at > since)
    checks = {
        "a code created or edited": sa.exists().where(changed),
        "an active code expired or used up": sa.exists().where(
            _active, sa.or_(_expired(now), _used_up(_used))),
        "a code past its retention": sa.exists().where(
            codes.c.expires_at > since - retention, codes.c.expires_at <= now - retention),
        "a redemption": sa.exists().where(redemptions.c.redeemed_at > since),
        "a redemption in the history": sa.exists().where(
            history.c.event_type == REDEMPTION_EVENT, history.c.created_at > since),
        "an archived row to purge": sa.exists().where(
            archived.c.archived_at < now - dt.timedelta(days=settings.archive_retention_days)),
    }
    with ctx.engine.connect() as conn:
        found = conn.execute(sa.select(*(c.label(f"c{i}") for i, c in
                                         enumerate(checks.values())))).one()
    if any(found):
        return None
    return (f"no promo code changed since the last run ({since:%Y-%m-%d %H:%M} UTC): none "
            "created, edited or redeemed, no active code expired or used up, none past its "
            "retention, no archived row to purge")


def plan(ctx: JobContext) -> Plan:
    """Step 1, once per run: the figures, every brake, and the chunks (the codes' key
    ranges, then the archive's purge), each carrying the run's clock so that every chunk
    judges codes as of the plan, whichever invocation runs it.  A dry run judges every
    code here, in one read-only transaction, and plans no chunk."""
    settings, engine, now = ctx.settings, ctx.engine, ctx.now
    dialect = engine.dialect.name
    rules = _Rules(settings, now, dialect)
    model = _Model(rules, dialect)
    started = time.monotonic()

    def model_samples(step: str) -> list[str]:
        with engine.connect() as conn:
            return model.samples(conn, step)

    notes: dict[str, Any] = {"now": now.isoformat()}
    with engine.connect() as session, session.begin():
        planned = _Plan(rules).read(session)
        notes["planned"] = planned
        notes["brakes"] = _engage_brakes(ctx, planned, model_samples)
        notes["timings_s"] = {"plan": round(time.monotonic() - started, 3)}
        if ctx.dry_run:
            retention = dt.timedelta(days=settings.archive_retention_days)
            notes["steps"] = {step: planned[step] for step in CODE_STEPS}
            notes["samples"] = {step: model.samples(session, step) if planned[step] else []
                                for step in CODE_STEPS}
            notes["steps"]["archive_rows_purged"] = int(session.execute(
                sa.select(sa.func.count()).select_from(archived)
                .where(archived.c.archived_at < now - retention)).scalar_one())
            notes["by_tier"] = model.statistics(session)
            return Plan([], notes)
    steps = [step for step in CODE_STEPS if planned[step]]  # else skip the step's read
    chunks: list[dict[str, Any]] = []
    started = time.monotonic()
    if steps:
        ranges = _key_ranges(ctx)
        spared = (_spared(ctx, rules, ranges) if "codes_deleted" in steps
                  else [[] for _ in ranges])
        chunks = [{"after": after, "upto": upto, "steps": steps, "now": notes["now"],
                   "spared": kept} for (after, upto), kept in zip(ranges, spared, strict=True)]
    notes["timings_s"]["chunks"] = round(time.monotonic() - started, 3)
    return Plan([*chunks, {"purge": True, "now": notes["now"]}], notes)


def work(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
    """Steps 2-5 on one key range of codes, in one transaction; or step 6."""
    started = time.monotonic()
    moment = dt.datetime.fromisoformat(args["now"])
    if args.get("purge"):
        retention = dt.timedelta(days=ctx.settings.archive_retention_days)
        with ctx.engine.begin() as conn:
            purged = purge_archive(conn, moment, retention)
        return {"records": 0, "steps": {"archive_rows_purged": purged},
                "timings_s": {"archive_purge": round(time.monotonic() - started, 3)}}
    rules = _Rules(ctx.settings, moment, ctx.engine.dialect.name)
    changed: dict[str, list[Any]] = {}
    timings: dict[str, float] = {}
    with _chunk_transaction(ctx.engine) as conn:
        writes = _Writes(ctx, rules, conn, args)
        for step, write in (("used_counts_raised", writes.raise_counts),
                            ("codes_deleted", writes.delete),
                            ("codes_deactivated", writes.deactivate),
                            ("used_counts_lowered", writes.lower)):
            changed[step] = []
            if step in args["steps"]:
                changed[step] = write()
                timings[step] = time.monotonic() - started
                started = time.monotonic()
        counters = {"records": sum(len(ids) for ids in changed.values()),
                    "steps": {step: len(ids) for step, ids in changed.items()},
                    "samples": {step: _smallest(ids) for step, ids in changed.items()},
                    "timings_s": timings}
        # Its counts commit with its writes: a process dying in between loses neither.
        done_within(conn, ctx, counters)
    return counters


def finish(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]) -> JobResult:
    """Step 7 and the summary: the plan's figures, and the chunks' counts and samples."""
    settings = ctx.settings
    planned: dict[str, int] = notes["planned"]
    timings: dict[str, float] = {**notes["timings_s"], **totals.get("timings_s", {})}
    if ctx.dry_run:
        steps: dict[str, int] = notes["steps"]
        samples: dict[str, list[str]] = notes["samples"]
        by_tier: dict[str, dict[str, int]] = notes["by_tier"]
    else:
        found = totals.get("steps", {})
        steps = {step: int(found.get(step, 0))
                 for step in (*CODE_STEPS, "archive_rows_purged")}
        picked = totals.get("samples", {})
        samples = {step: _smallest(picked.get(step, [])) for step in CODE_STEPS}
        started = time.monotonic()
        with ctx.engine.connect() as conn:
            by_tier = statistics(conn, dt.datetime.fromisoformat(notes["now"]))
        timings["statistics"] = round(time.monotonic() - started, 3)

    total = sum(steps[step] for step in CODE_STEPS)
    verb = "would change" if ctx.dry_run else "changed"
    lowered = (f", {steps['used_counts_lowered']} lowered to them"
               if settings.promo_redemption_rows_complete else "")
    message = (
        f"{verb} {total} codes: {steps['codes_deactivated']} deactivated, "
        f"{steps['codes_deleted']} deleted (expired, never redeemed; archived), "
        f"{steps['used_counts_raised']} used_count raised to the redemptions recorded"
        f"{lowered}; {steps['archive_rows_purged']} archived rows older than "
        f"{settings.archive_retention_days} days purged; "
        + ", ".join(f"{tier} {s['active']}/{s['codes']} active" for tier, s in by_tier.items())
    )
    details: dict[str, Any] = {
        "steps": {name: steps[name] for name in (*CODE_STEPS, "archive_rows_purged")},
        "samples": {name: samples[name] for name in CODE_STEPS},
        "brakes": notes["brakes"],
        "counted_without_rows": planned["counted_without_rows"], "by_tier": by_tier,
        "retention_days": settings.promo_retention_days,
        "archive_retention_days": settings.archive_retention_days,
        "rows_complete": settings.promo_redemption_rows_complete,
        "timings_s": {name: round(seconds, 3) for name, seconds in timings.items()},
    }
    if steps["codes_deleted"] and not ctx.dry_run:
        details["restore"] = f"voyagesmart-cron restore {ctx.run_id}"
    return JobResult(records_processed=total, message=message, details=details)


run = Chunked(plan=plan, work=work, finish=finish)
