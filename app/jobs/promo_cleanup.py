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

Steps 2, 3 and 5 read their candidates once and write them in batches of `BATCH_SIZE`;
step 4 walks the table in ranges.  Each batch is its own short transaction and re-checks
its step's condition.  Nothing here ever sets `is_active` true or deletes a redemption row.

Longer than the usual 400 lines: one module per job, read top to bottom in the order of the
steps above; each step re-checks its own condition where it writes, so that check stays by it.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable

from app.config import Settings
from app.core.archive import archive_and_delete, purge_archive
from app.core.batching import keys_in, stream_rows
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
RANGE_BATCHES = 4  # the most rows, in batches, one deactivation statement may scan
_STATS = ("codes", "active", "expired", "used_up", "uses")

Write = Callable[[Connection, sa.ColumnElement[bool]], Any]


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


# --- 2-5. the writes ----------------------------------------------------------------------------
class _Tid(sa.types.UserDefinedType[str]):
    """PostgreSQL's `tid`, a row's physical address."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "tid"


def _address(dialect: str) -> sa.ColumnElement[Any]:
    return sa.literal_column(f"{codes.name}.{'ctid' if dialect == 'postgresql' else 'rowid'}")


class _DeclareCursor(Executable, ClauseElement):
    """`DECLARE <name> SCROLL CURSOR FOR <query>` (PostgreSQL), binds handled as usual."""

    inherit_cache = False

    def __init__(self, name: str, query: sa.Select[Any]) -> None:
        self.name = name
        self.query = query


@compiles(_DeclareCursor, "postgresql")
def _declare_cursor(element: _DeclareCursor, compiler: Any, **kw: Any) -> str:
    return f"DECLARE {element.name} SCROLL CURSOR FOR {compiler.process(element.query, **kw)}"


class _Doomed:
    """The codes step 3 deletes, read once: counted for the brake, then handed out in
    batches.  On PostgreSQL a scroll cursor, in a transaction of its own that lives until
    step 3 is done, holds them (the count is a MOVE over it, then it rewinds); elsewhere
    they are counted, then read again."""

    CURSOR = "promo_cleanup_doomed"

    def __init__(self, session: Connection, rules: _Rules, batch: int) -> None:
        self.session = session
        self.batch = batch
        self.postgres = session.dialect.name == "postgresql"
        address = _address(session.dialect.name)
        self.query = (sa.select(address.label("address"), codes.c.id,
                                sa.func.count().filter(_active).over().label("active"))
                      .where(rules.doomed()).order_by(address))
        if not self.postgres:
            found = session.execute(sa.select(sa.func.count(), sa.func.count().filter(_active))
                                    .where(rules.doomed())).one()
            self.counts = (int(found[0]), int(found[1]))
            return
        session.execute(_DeclareCursor(self.CURSOR, self.query))
        first = session.exec_driver_sql(f"FETCH FIRST FROM {self.CURSOR}").first()
        moved = session.exec_driver_sql(f"MOVE FORWARD ALL IN {self.CURSOR}").rowcount
        session.exec_driver_sql(f"MOVE ABSOLUTE 0 IN {self.CURSOR}")
        self.counts = (0, 0) if first is None else (int(moved) + 1, int(first.active))

    def batches(self, engine: Engine) -> Iterator[Sequence[Any]]:
        if not self.postgres:
            yield from stream_rows(engine, self.query, self.batch)
            return
        while rows := self.session.exec_driver_sql(
                f"FETCH FORWARD {int(self.batch)} FROM {self.CURSOR}").all():
            yield rows


class _Writes:
    """The write steps, in batches, each batch its own transaction.

    Rows are reached by their physical address (PostgreSQL's `ctid`, SQLite's `rowid`):
    a batch fetches its rows directly, in table order, instead of one index probe per id.
    An address is only a way in: every batch also matches the ids it was given and
    re-checks its step's condition, so a row moved or changed meanwhile is skipped (and
    left to the next run).  Every write returns the ids it changed: a step's samples are
    the smallest of them, as a dry run names the smallest candidates."""

    def __init__(self, ctx: JobContext, rules: _Rules) -> None:
        self.ctx = ctx
        self.rules = rules
        self.engine = ctx.engine
        self.postgres = ctx.engine.dialect.name == "postgresql"
        self.address = _address(ctx.engine.dialect.name)
        self.samples: dict[str, list[str]] = {}

    # --- plumbing
    def _at(self, addresses: Sequence[Any], ids: Sequence[Any], dialect: sa.Dialect
            ) -> sa.ColumnElement[bool]:
        if self.postgres:
            at = self.address == sa.any_(sa.cast(
                sa.bindparam(None, [str(a) for a in addresses], type_=postgresql.ARRAY(sa.Text)),
                postgresql.ARRAY(_Tid())))
        else:
            at = self.address.in_(addresses)
        return sa.and_(at, keys_in(codes.c.id, ids, dialect))

    def _transaction(self, isolation: str | None) -> AbstractContextManager[Connection]:
        if isolation is None or not self.postgres:
            return self.engine.begin()
        return _begin_at(self.engine, isolation)

    def _apply(self, step: str, statements: Iterator[Callable[[Connection], Any]], *,
               isolation: str | None = None) -> int:
        """Run each statement in its own transaction; count and sample the ids changed."""
        changed = 0
        smallest: list[Any] = []
        for statement in statements:
            with self._transaction(isolation) as conn:
                if self.postgres:
                    # No wait for each batch's WAL flush: the run's log row, committed
                    # last and synchronously, flushes them all.  A crash before it loses
                    # whole batches only (a delete with its archive rows): the next run
                    # does them again.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                ids = list(statement(conn))
            changed += len(ids)
            smallest = heapq.nsmallest(SAMPLES, [*smallest, *ids])
        self.samples[step] = [str(key) for key in smallest]
        return changed

    def _batched(self, batches: Iterator[Sequence[Any]], write: Write
                 ) -> Iterator[Callable[[Connection], Any]]:
        for rows in batches:
            yield functools.partial(self._write_at, write, [row.address for row in rows],
                                    [row.id for row in rows])

    def _write_at(self, write: Write, addresses: Sequence[Any], ids: Sequence[Any],
                  conn: Connection) -> Any:
        return write(conn, self._at(addresses, ids, conn.dialect))

    def _candidates(self, source: sa.FromClause, where: sa.ColumnElement[bool]
                    ) -> Iterator[Sequence[Any]]:
        query = (sa.select(self.address.label("address"), codes.c.id).select_from(source)
                 .where(where).order_by(self.address))
        return stream_rows(self.engine, query, self.ctx.settings.batch_size)

    def _ranges(self, population: int, affected: int, write: Write
                ) -> Iterator[Callable[[Connection], Any]]:
        """The whole table in address ranges, one statement each.  A range is sized to
        hold about a batch of candidates (from the plan's share of them), and never more
        than `RANGE_BATCHES` batches of rows: however the candidates cluster, a statement
        changes at most that many."""
        batch = self.ctx.settings.batch_size
        rows = min(RANGE_BATCHES * batch, max(batch, batch * population // max(affected, 1)))
        with self.engine.connect() as conn:
            if self.postgres:
                pages = int(conn.execute(sa.text(
                    "SELECT pg_relation_size(CAST(:t AS regclass)) / "
                    "current_setting('block_size')::int"), {"t": codes.name}).scalar_one())
                first, last = 0, pages
                step = max(1, rows * pages // max(population, 1))
            else:
                low, high = conn.execute(sa.select(sa.func.min(self.address),
                                                   sa.func.max(self.address))
                                         .select_from(codes)).one()
                first, last = int(low or 0), int(high or -1) + 1
                step = rows
        for start in range(first, last, step):
            if self.postgres:
                low, high = (sa.cast(sa.literal(f"({page},0)"), _Tid())
                             for page in (start, start + step))
                at = sa.and_(self.address >= low, self.address < high)
            else:
                at = sa.and_(self.address >= start, self.address < start + step)
            yield functools.partial(_call, write, at)

    # --- the steps
    def raise_counts(self) -> int:
        rows_of = _rows_per_code()
        recorded = _recorded()

        def write(conn: Connection, at: sa.ColumnElement[bool]) -> Any:
            return conn.execute(
                codes.update().where(at, _used < recorded)
                .values(used_count=recorded, updated_at=self.ctx.now)
                .returning(codes.c.id)).scalars()

        candidates = self._candidates(codes.join(rows_of, rows_of.c.code_id == codes.c.id),
                                      rows_of.c.n > _used)
        return self._apply("used_counts_raised", self._batched(candidates, write))

    def delete(self, doomed: _Doomed) -> int:
        ctx = self.ctx
        # Only the expiry is not written as an index condition: the planner then fetches
        # the batch's rows by their addresses instead of walking the expiry index.
        expired = sa.func.coalesce(codes.c.expires_at, self.rules.cutoff) < self.rules.cutoff

        def write(conn: Connection, at: sa.ColumnElement[bool]) -> Any:
            # The re-check reads the count and the rows again, not the history: that
            # would cost a scan of it per batch, and a history event only comes with a
            # redemption, which the app refuses past a code's expiry.
            moved = archive_and_delete(
                conn, codes, sa.and_(at, expired, _used == 0, ~_has_rows),
                run_id=ctx.run_id, job=ctx.task, now=ctx.now)
            return range(moved)

        # REPEATABLE READ: a redemption committed while a batch runs would be removed
        # with its code by ON DELETE CASCADE, unseen; at this level PostgreSQL fails the
        # batch instead (a serialization failure, retried), and the retry keeps the code.
        deleted = self._apply("codes_deleted", self._batched(doomed.batches(self.engine), write),
                              isolation="REPEATABLE READ")
        # The ids deleted are the ones archived under this run.
        with self.engine.connect() as conn:
            keys = conn.execute(
                sa.select(archived.c.row_key)
                .where(archived.c.run_id == ctx.run_id, archived.c.source_table == codes.name)
                .order_by(archived.c.row_key).limit(SAMPLES)).scalars()
            self.samples["codes_deleted"] = [str(uuid.UUID(key)) for key in keys]
        return deleted

    def deactivate(self, population: int, affected: int) -> int:
        def write(conn: Connection, at: sa.ColumnElement[bool]) -> Any:
            return conn.execute(
                codes.update().where(at, self.rules.to_deactivate(_used))
                .values(is_active=False, updated_at=self.ctx.now)
                .returning(codes.c.id)).scalars()

        return self._apply("codes_deactivated", self._ranges(population, affected, write))

    def lower(self) -> int:
        rows_of = _rows_per_code()
        recorded = _recorded()

        def write(conn: Connection, at: sa.ColumnElement[bool]) -> Any:
            # A code used up by its old count stays closed (the right-hand side reads
            # the row as it was).
            return conn.execute(
                codes.update().where(at, self.rules.to_lower(recorded))
                .values(used_count=recorded, updated_at=self.ctx.now,
                        is_active=sa.case((_used_up(_used), sa.false()),
                                          else_=codes.c.is_active))
                .returning(codes.c.id)).scalars()

        candidates = self._candidates(codes.join(rows_of, rows_of.c.code_id == codes.c.id),
                                      self.rules.to_lower(rows_of.c.n))
        return self._apply("used_counts_lowered", self._batched(candidates, write))


def _call(write: Write, at: sa.ColumnElement[bool], conn: Connection) -> Any:
    return write(conn, at)


@contextmanager
def _begin_at(engine: Engine, isolation: str) -> Iterator[Connection]:
    """`engine.begin()` at an isolation level of its own."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level=isolation)
        with conn.begin():
            yield conn


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


def run(ctx: JobContext) -> JobResult:
    settings = ctx.settings
    engine = ctx.engine
    now = ctx.now
    dialect = engine.dialect.name
    retention = dt.timedelta(days=settings.archive_retention_days)
    rules = _Rules(settings, now, dialect)
    model = _Model(rules, dialect)
    timings: dict[str, float] = {}
    steps: dict[str, int] = {}
    samples: dict[str, list[str]] = {}

    def model_samples(step: str) -> list[str]:
        with engine.connect() as conn:
            return model.samples(conn, step)

    started = time.monotonic()
    # The session holds step 3's candidates (a cursor, on PostgreSQL) from the plan until
    # step 3 is done, in one read-only transaction.
    with engine.connect() as session, session.begin():
        doomed = None if ctx.dry_run else _Doomed(session, rules, settings.batch_size)
        planned = _Plan(rules).read(session, doomed.counts if doomed else None)
        timings["plan"] = round(time.monotonic() - started, 3)
        brake_figures = _engage_brakes(ctx, planned, model_samples)
        if ctx.dry_run:
            for step in CODE_STEPS:
                steps[step] = planned[step]
                samples[step] = model.samples(session, step) if planned[step] else []
            steps["archive_rows_purged"] = int(session.execute(
                sa.select(sa.func.count()).select_from(archived)
                .where(archived.c.archived_at < now - retention)).scalar_one())
            by_tier = model.statistics(session)
        else:
            assert doomed is not None
            writes = _Writes(ctx, rules)
            for step, write in (
                    ("used_counts_raised", writes.raise_counts),
                    ("codes_deleted", functools.partial(writes.delete, doomed))):
                steps[step], samples[step] = 0, []
                if planned[step]:  # else skip the read
                    started = time.monotonic()
                    steps[step] = write()
                    samples[step] = writes.samples[step]
                    timings[step] = round(time.monotonic() - started, 3)
    if not ctx.dry_run:
        for step, write in (
                ("codes_deactivated", functools.partial(
                    writes.deactivate, planned["population"], planned["codes_deactivated"])),
                ("used_counts_lowered", writes.lower)):
            steps[step], samples[step] = 0, []
            if planned[step]:
                started = time.monotonic()
                steps[step] = write()
                samples[step] = writes.samples[step]
                timings[step] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        with engine.begin() as conn:
            steps["archive_rows_purged"] = purge_archive(conn, now, retention)
        timings["archive_purge"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        with engine.connect() as conn:
            by_tier = statistics(conn, now)
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
        "brakes": brake_figures,
        "counted_without_rows": planned["counted_without_rows"], "by_tier": by_tier,
        "retention_days": settings.promo_retention_days,
        "archive_retention_days": settings.archive_retention_days,
        "rows_complete": settings.promo_redemption_rows_complete,
        "timings_s": timings,
    }
    if steps["codes_deleted"] and not ctx.dry_run:
        details["restore"] = f"voyagesmart-cron restore {ctx.run_id}"
    return JobResult(records_processed=total, message=message, details=details)

