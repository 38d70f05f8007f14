"""db-maintenance: vacuum, analyze and reindex what needs it, then reset query statistics.

PostgreSQL, on one dedicated autocommit connection (VACUUM and REINDEX CONCURRENTLY cannot
run inside a transaction), touching only the tables of the current database's schemas
(`current_schemas(false)`):

1. Set `lock_timeout` and `statement_timeout` (MAINTENANCE_LOCK_TIMEOUT / _STATEMENT_TIMEOUT)
   so a statement never queues application traffic behind it for long.  The runner's
   lease already keeps two runs of this task apart.
2. Read `pg_stat_user_tables`: `VACUUM (ANALYZE)` tables whose dead tuples reach both
   MAINTENANCE_VACUUM_MIN_DEAD and MAINTENANCE_VACUUM_DEAD_FRACTION of live tuples, and
   `ANALYZE` those modified by MAINTENANCE_ANALYZE_MOD_FRACTION since their last analyze.
   MAINTENANCE_VACUUM_ALL runs the whole-database form instead.
3. Indexes: an invalid `*_ccnew` / `*_ccold` index (the leftover of a failed concurrent
   reindex) is dropped concurrently; any other invalid index, and a btree index whose
   estimated bloat reaches MAINTENANCE_REINDEX_BLOAT_FRACTION, is rebuilt with
   `REINDEX INDEX CONCURRENTLY`.  `REINDEX DATABASE` runs only when
   MAINTENANCE_REINDEX_DATABASE asks for it.
4. `pg_stat_statements_reset()` for this database only, where the extension is installed
   and loaded; otherwise the step is reported as skipped with the reason.  The five most
   expensive statements are kept in the report before they are reset.
A table the role may not maintain is reported as skipped with the reason.  When a lock is
not granted within `lock_timeout` (or a statement reaches `statement_timeout`), the run
removes what the interrupted statement left behind and stops there: status `warning`,
finished steps reported, nothing half-done.

SQLite: `PRAGMA integrity_check`, `ANALYZE`, `PRAGMA optimize`, then `VACUUM` outside a
transaction and a WAL checkpoint so the file really shrinks; a failed integrity check
stops before anything is rewritten.

Chunks (app/core/chunks.py), so a run longer than one invocation continues at the next
call: the plan reads the statistics once and makes one chunk per table to vacuum or
analyze (one for MAINTENANCE_VACUUM_ALL), one per index worth a look (invalid, or past
MAINTENANCE_REINDEX_MIN_BYTES: it is judged when its chunk runs, on the statistics the
vacuum refreshed), then one for REINDEX DATABASE and one for the statistics reset.  A
chunk carries its table or index by name; after a give-up the chunks left do nothing but
the reset.  On SQLite the whole file is one chunk.

The report (the log row's details) names, per table and index, the action, the reason,
dead tuples and sizes before and after, and the duration.  A dry run reads the same
statistics and reports what it would do.

Longer than the usual 400 lines: one module per job, read top to bottom in the order of the
steps above; each step's SQL differs per database and is kept next to the step.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from app.core.chunks import DONE, Chunked, Counters, Plan, add
from app.core.context import JobContext, JobResult
from app.core.status import JobStatus, RunStatus
from app.db import table_of
from app.models import CronJobLog, CronRunChunk

_log = table_of(CronJobLog)
_chunk = table_of(CronRunChunk)

# Leftovers of an interrupted REINDEX CONCURRENTLY: the new copy (`_ccnew`) or, when the
# swap went through, the old one (`_ccold`); PostgreSQL adds digits on name clashes.
_LEFTOVER = re.compile(r"_cc(new|old)\d*$")
_GIVE_UP_STATES = {"55P03": "lock not granted within lock_timeout",
                   "57014": "statement cancelled (statement_timeout)"}
_PAGE = 8192
_BTREE_PAGE_OVERHEAD = 24 + 16  # page header + btree special space
_BTREE_FILLFACTOR = 0.9


class _GaveUp(Exception):
    def __init__(self, step: str, target: str, reason: str) -> None:
        super().__init__(f"{step} {target}: {reason}")
        self.step, self.target, self.reason = step, target, reason


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None)


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    detail = getattr(getattr(orig, "diag", None), "message_detail", None)
    return (f"{text} ({detail})" if detail else text)[:300]


def _ident(*parts: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@dataclass
class _Report:
    dialect: str
    dry_run: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    gave_up: dict[str, str] | None = None
    errors: list[str] = field(default_factory=list)

    def step(self, name: str, status: str, started: float | None = None, **more: Any) -> None:
        entry: dict[str, Any] = {"step": name, "status": status}
        if started is not None:
            entry["duration_ms"] = _ms(started)
        entry.update(more)
        self.steps.append(entry)

    def as_details(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "dry_run": self.dry_run, "steps": self.steps,
                "tables": self.tables, "indexes": self.indexes, "skipped": self.skipped,
                "gave_up": self.gave_up, "errors": self.errors, **self.extra}


# --- the run, in chunks -------------------------------------------------------------------

def run(ctx: JobContext) -> JobResult:
    """A run of the runner's is made of chunks (app/core/chunks.py); a call from outside
    it (a script, a test: no log row names its run) does every chunk here, in order."""
    if _recorded(ctx):
        return chunked(ctx)
    return _inline(ctx)


def plan(ctx: JobContext) -> Plan:
    """The chunks: on PostgreSQL one per table to vacuum or analyze (one for the
    whole-database form), one per index worth a look, then the whole-database reindex
    and the statistics reset; on SQLite one, the whole file (VACUUM rewrites it whole)."""
    report = _Report(ctx.engine.dialect.name, ctx.dry_run)
    keys = (f"{i:05d}" for i in itertools.count())
    if report.dialect == "postgresql":
        chunks = _plan_postgres(ctx, report, keys)
    elif report.dialect == "sqlite":
        chunks = [{"phase": "sqlite", "key": next(keys)}]
    else:  # pragma: no cover - the service runs on these two only
        report.step("maintenance", "skipped", reason=f"unsupported database {report.dialect}")
        chunks = []
    notes = _counters(report, "plan")
    notes.pop("records")
    return Plan(chunks, {"dialect": report.dialect, "report": notes})


def work(ctx: JobContext, args: Counters) -> Counters:
    # After a give-up the run stops where it was (only the statistics reset still runs):
    # an earlier chunk, maybe of an earlier invocation, says so in its result.
    stopped = (not ctx.dry_run and args["phase"] != "pg_stat_statements"
               and _gave_up_before(ctx))
    return _work(ctx, args, stopped=stopped)


def _work(ctx: JobContext, args: Counters, *, stopped: bool) -> Counters:
    report = _Report(ctx.engine.dialect.name, ctx.dry_run)
    if not stopped:
        if args["phase"] == "sqlite":
            _sqlite(ctx, report)
        else:
            _work_postgres(ctx, args, report)
    return _counters(report, args["key"])


def finish(ctx: JobContext, notes: Counters, totals: Counters) -> JobResult:
    merged = add(add({}, notes["report"]), totals)
    report = _Report(notes["dialect"], ctx.dry_run)

    def ordered(name: str) -> list[Any]:
        items: dict[str, Any] = merged.get(name, {})
        return [items[key] for key in sorted(items)]

    report.tables, report.indexes = ordered("tables"), ordered("indexes")
    report.skipped, report.errors = ordered("skipped"), ordered("errors")
    report.extra = dict(merged.get("extra", {}))
    planned = int(report.extra.pop("vacuum_planned", 0))
    stop = merged.get("gave_up")
    if stop:
        report.gave_up = {k: stop[k] for k in ("step", "target", "reason")}
    steps = ordered("steps")
    report.steps = (_postgres_steps(ctx, report, steps, stop, planned)
                    if report.dialect == "postgresql" else steps)
    return _result(ctx, report)


chunked = Chunked(plan=plan, work=work, finish=finish)


def _inline(ctx: JobContext) -> JobResult:
    whole = plan(ctx)
    totals: Counters = {}
    for args in whole.chunks:
        add(totals, _work(ctx, args, stopped=bool(totals.get("gave_up"))
                          and args["phase"] != "pg_stat_statements"))
    return finish(ctx, dict(whole.notes), totals)


def _recorded(ctx: JobContext) -> bool:
    try:
        with ctx.engine.connect() as conn:
            return conn.execute(sa.select(_log.c.run_id)
                                .where(_log.c.run_id == ctx.run_id)).first() is not None
    except sa_exc.DBAPIError:  # a database without the service's tables
        return False


def _gave_up_before(ctx: JobContext) -> bool:
    with ctx.engine.connect() as conn:
        results = conn.execute(sa.select(_chunk.c.result).where(
            _chunk.c.run_id == ctx.run_id, _chunk.c.status == DONE)).scalars().all()
    return any("gave_up" in (result or {}) for result in results)


def _counters(report: _Report, key: str) -> Counters:
    """One chunk's part of the report, as counters that add up (app/core/chunks.py):
    list items keyed by the chunk's plan position, so the totals keep every one, in
    order (a plain list would be capped)."""
    def keyed(items: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, item in enumerate(items):
            at = item.pop("_at", None) if isinstance(item, dict) else None
            out[at or f"{key}.{i:03d}"] = item
        return out

    done = [e for e in (*report.tables, *report.indexes) if e.get("status") == "done"]
    counters: Counters = {
        "records": 0 if report.dry_run else len(done),
        "tables": keyed(report.tables), "indexes": keyed(report.indexes),
        "skipped": keyed(report.skipped), "errors": keyed(report.errors),
        "steps": keyed(report.steps), "extra": report.extra}
    if report.gave_up:
        counters["gave_up"] = report.gave_up
    return counters


def _postgres_steps(ctx: JobContext, report: _Report, steps: list[dict[str, Any]],
                    stop: dict[str, Any] | None, planned: int) -> list[dict[str, Any]]:
    """The steps in the order they ran; after a give-up, the one that gave up and those
    that did not run."""
    status = "planned" if ctx.dry_run else "done"
    by_name = {step["step"]: step for step in steps}
    built = {
        "vacuum": {"step": "vacuum", "status": status,
                   "duration_ms": sum(int(t.get("duration_ms", 0)) for t in report.tables)
                   + int(report.extra.get("vacuum_all_ms", 0)),
                   "tables": planned, "whole_database": ctx.settings.maintenance_vacuum_all},
        "indexes": {"step": "indexes", "status": status,
                    "duration_ms": sum(int(i.get("duration_ms", 0)) for i in report.indexes),
                    "rebuilt_or_dropped": len(report.indexes)},
    }
    out: list[dict[str, Any]] = []
    stopped = False
    for phase in ("vacuum", "indexes", "reindex-database"):
        if stop is not None and stop.get("phase") == phase:
            out.append({"step": stop["step"], "status": "gave-up", "target": stop["target"],
                        "reason": stop["reason"]})
            stopped = True
        if stopped:
            if not any(step["step"] == phase for step in out):
                out.append({"step": phase, "status": "not-run",
                            "reason": "the run gave up before this step"})
        elif phase in built:
            out.append(built[phase])
        elif phase in by_name:
            out.append(by_name[phase])
    if "pg_stat_statements" in by_name:
        out.append(by_name["pg_stat_statements"])
    return out


def _result(ctx: JobContext, report: _Report) -> JobResult:
    acted = [t for t in report.tables if t.get("status") == "done"]
    rebuilt = [i for i in report.indexes if i.get("status") == "done"]
    verb = "would maintain" if ctx.dry_run else "maintained"
    if ctx.dry_run:
        acted = [t for t in report.tables if t.get("status") == "planned"]
        rebuilt = [i for i in report.indexes if i.get("status") == "planned"]
    message = f"{verb} {len(acted)} tables and {len(rebuilt)} indexes"
    if report.skipped:
        message += f"; skipped {len(report.skipped)} (see details)"
    status: JobStatus = RunStatus.SUCCESS
    if report.gave_up:
        message = (f"gave up at {report.gave_up['step']} {report.gave_up['target']}: "
                   f"{report.gave_up['reason']}; steps after it did not run. " + message)
        status = RunStatus.WARNING
    if report.errors:
        message += f"; {len(report.errors)} errors: " + "; ".join(report.errors[:3])
        status = RunStatus.WARNING
    records = 0 if ctx.dry_run else len(acted) + len(rebuilt)
    return JobResult(records, message[:1000], status, report.as_details())


# --- PostgreSQL ---------------------------------------------------------------------------

_TABLES_SQL = """
SELECT s.relid, s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       pg_table_size(s.relid) AS table_bytes, pg_indexes_size(s.relid) AS index_bytes,
       {can_maintain} AS can_maintain, pg_get_userbyid(c.relowner) AS owner
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = ANY (current_schemas(false)) {only}
ORDER BY s.schemaname, s.relname
"""
# Before PostgreSQL 17 only the owner (or a superuser) may vacuum or reindex a table;
# from 17 on, the MAINTAIN privilege (or the pg_maintain role) grants it.
_CAN_MAINTAIN_OLD = ("(pg_has_role(c.relowner, 'USAGE') OR "
                     "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user))")
_CAN_MAINTAIN_17 = "has_table_privilege(c.oid, 'MAINTAIN')"

_INDEXES_SQL = """
SELECT ic.oid, n.nspname, ic.relname AS index_name, c.relname AS table_name, c.oid AS relid,
       x.indisvalid AND x.indisready AS valid, am.amname, pg_relation_size(ic.oid) AS bytes,
       ic.reltuples, 0 = ANY (x.indkey::int2[]) AS has_expression,
       x.indexprs IS NULL AND x.indpred IS NULL AS plain,
       (SELECT sum(coalesce(st.avg_width, -1000000))
          FROM unnest(x.indkey::int2[]) AS k(attnum)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
          LEFT JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = c.relname
                                AND st.attname = a.attname) AS key_width,
       {can_maintain} AS can_maintain, pg_get_userbyid(c.relowner) AS owner
FROM pg_index x
JOIN pg_class ic ON ic.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_am am ON am.oid = ic.relam
WHERE n.nspname = ANY (current_schemas(false)) AND c.relkind IN ('r', 'm') {only}
ORDER BY n.nspname, ic.relname
"""


@contextmanager
def _maintenance_connection(ctx: JobContext) -> Iterator[Connection]:
    s = ctx.settings
    conn = ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        conn.exec_driver_sql(f"SET lock_timeout = {int(s.maintenance_lock_timeout * 1000)}")
        conn.exec_driver_sql(
            f"SET statement_timeout = {int(s.maintenance_statement_timeout * 1000)}")
        # Our statements show up by name in pg_stat_activity while they run.
        conn.exec_driver_sql("SET application_name = 'voyagesmart-cron:db-maintenance'")
        yield conn
    finally:
        try:
            # The connection goes back to the pool: leave no session setting behind.
            for name in ("lock_timeout", "statement_timeout", "application_name"):
                conn.exec_driver_sql(f"RESET {name}")
        except sa_exc.SQLAlchemyError:
            conn.invalidate()
        conn.close()


def _rows(conn: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.exec_driver_sql(sql, params or None)]


def _table_stats(conn: Connection, can_maintain: str, relids: list[int] | None = None
                 ) -> dict[int, dict[str, Any]]:
    only = "AND s.relid = ANY (%(relids)s)" if relids is not None else ""
    sql = _TABLES_SQL.format(can_maintain=can_maintain, only=only)
    params = {"relids": relids} if relids is not None else {}
    return {int(r["relid"]): r for r in _rows(conn, sql, **params)}


def _snapshot(row: dict[str, Any]) -> dict[str, int]:
    return {"live_tuples": int(row["n_live_tup"]), "dead_tuples": int(row["n_dead_tup"]),
            "table_bytes": int(row["table_bytes"]), "index_bytes": int(row["index_bytes"])}


def _run_statement(conn: Connection, report: _Report, step: str, target: str, sql: str,
                   cleanup: Callable[[], None] | None = None) -> str | None:
    """Execute one maintenance statement; None when done, else the error text.

    A lock or statement timeout ends the run (after `cleanup`) by raising _GaveUp.
    """
    try:
        conn.exec_driver_sql(sql)
        return None
    except sa_exc.DBAPIError as exc:
        state = _sqlstate(exc)
        if state in _GIVE_UP_STATES:
            if cleanup is not None:
                cleanup()
            raise _GaveUp(step, target, _GIVE_UP_STATES[state]) from exc
        if exc.connection_invalidated:
            raise  # a lost connection is the runner's to retry
        return _short(exc)


def _server(ctx: JobContext, conn: Connection) -> tuple[str, dict[str, Any]]:
    """The privilege test for this server's version, and what the report says about it."""
    s = ctx.settings
    version = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
    can_maintain = _CAN_MAINTAIN_17 if version >= 170000 else _CAN_MAINTAIN_OLD
    return can_maintain, {
        "database": conn.exec_driver_sql("SELECT current_database()").scalar_one(),
        "schemas": list(conn.exec_driver_sql("SELECT current_schemas(false)").scalar_one()),
        "server_version_num": version,
        "lock_timeout_s": s.maintenance_lock_timeout,
        "statement_timeout_s": s.maintenance_statement_timeout,
    }


def _plan_postgres(ctx: JobContext, report: _Report, keys: Iterator[str]) -> list[Counters]:
    """Step 2's choice of tables (from the statistics before any work) and step 3's
    candidate indexes; each is one chunk.  An index is judged when its chunk runs, on
    the statistics the vacuum chunks before it refreshed."""
    s = ctx.settings
    chunks: list[Counters] = []
    with _maintenance_connection(ctx) as conn:
        can_maintain, server = _server(ctx, conn)
        report.extra.update(server)
        stats = _table_stats(conn, can_maintain)
        report.extra["tables_checked"] = len(stats)
        whole: list[Counters] = []
        chosen = 0
        for row in stats.values():
            chose = _choose_table(ctx, row)
            if chose is None:
                continue
            chosen += 1
            action, reason = chose
            entry: dict[str, Any] = {"table": f"{row['schemaname']}.{row['relname']}",
                                     "action": action, "reason": reason,
                                     "before": _snapshot(row)}
            key = next(keys)
            if not row["can_maintain"]:
                why = (f"permission denied: only the owner ({row['owner']}), a superuser"
                       + (" or a role with MAINTAIN" if "MAINTAIN" in can_maintain else "")
                       + " may maintain it")
                entry.update(status="skipped", skipped_reason=why)
                report.tables.append({**entry, "_at": key})
                report.skipped.append({"object": entry["table"], "step": "vacuum",
                                       "reason": why, "_at": key})
                continue
            if ctx.dry_run:
                entry["status"] = "planned"
                report.tables.append({**entry, "_at": key})
                continue
            target = {"key": key, "relid": int(row["relid"]), "entry": entry,
                      "name": _ident(row["schemaname"], row["relname"])}
            if s.maintenance_vacuum_all:
                whole.append(target)
            else:
                chunks.append({"phase": "vacuum", **target})
        if whole:  # one whole-database statement: one chunk
            chunks.append({"phase": "vacuum", "key": next(keys), "whole": whole})
        report.extra["vacuum_planned"] = chosen

        rows = _rows(conn, _INDEXES_SQL.format(can_maintain=can_maintain, only=""))
        report.extra["indexes_checked"] = len(rows)
        for row in rows:
            if row["valid"] and int(row["bytes"]) < s.maintenance_reindex_min_bytes:
                continue  # (an index does not grow from a vacuum)
            chunks.append({"phase": "indexes", "key": next(keys), "schema": row["nspname"],
                           "index": row["index_name"]})
    if s.maintenance_reindex_database == "off":
        report.step("reindex-database", "skipped",
                    reason="MAINTENANCE_REINDEX_DATABASE=off (targeted reindex only)")
    else:
        chunks.append({"phase": "reindex-database", "key": next(keys)})
    chunks.append({"phase": "pg_stat_statements", "key": next(keys)})
    return chunks


def _choose_table(ctx: JobContext, row: dict[str, Any]) -> tuple[str, str] | None:
    s = ctx.settings
    live, dead, mods = (int(row["n_live_tup"]), int(row["n_dead_tup"]),
                        int(row["n_mod_since_analyze"]))
    if s.maintenance_vacuum_all:
        return "vacuum-analyze", "MAINTENANCE_VACUUM_ALL"
    if dead >= s.maintenance_vacuum_min_dead and dead >= (
            s.maintenance_vacuum_dead_fraction * live):
        return "vacuum-analyze", f"{dead} dead tuples ({dead / max(live, 1):.0%} of live)"
    if mods >= s.maintenance_vacuum_min_dead and mods >= (
            s.maintenance_analyze_mod_fraction * live):
        return "analyze", f"{mods} rows modified since the last analyze"
    return None


def _work_postgres(ctx: JobContext, args: Counters, report: _Report) -> None:
    """One chunk: a table's vacuum or analyze (or the whole-database vacuum), one index,
    the whole-database reindex, or the statistics reset."""
    phase = args["phase"]
    with _maintenance_connection(ctx) as conn:
        can_maintain, server = _server(ctx, conn)
        if phase == "pg_stat_statements":
            # Resetting statistics takes no lock worth waiting for: it runs even after a
            # give-up, so the weekly window of pg_stat_statements stays weekly.
            _statements_step(ctx, conn, report)
            return
        try:
            if phase == "vacuum" and "whole" in args:
                _vacuum_all(conn, report, can_maintain, args["whole"])
            elif phase == "vacuum":
                _maintain_table(conn, report, can_maintain, args)
            elif phase == "indexes":
                _index(ctx, conn, report, can_maintain, args["schema"], args["index"])
            else:
                report.extra["database"] = server["database"]
                _reindex_database_step(ctx, conn, report)
        except _GaveUp as stop:
            report.gave_up = {"step": stop.step, "target": stop.target, "reason": stop.reason,
                              "phase": phase}


def _maintain_table(conn: Connection, report: _Report, can_maintain: str, args: Counters
                    ) -> None:
    entry = dict(args["entry"])
    report.tables.append(entry)
    action = entry["action"]
    sql = (f"VACUUM (ANALYZE) {args['name']}" if action == "vacuum-analyze"
           else f"ANALYZE {args['name']}")
    one = time.monotonic()
    try:
        error = _run_statement(conn, report, action, entry["table"], sql)
    except _GaveUp:
        entry.update(status="gave-up", duration_ms=_ms(one))
        _after(conn, can_maintain, [(args, entry)])
        raise
    entry["duration_ms"] = _ms(one)
    entry["status"] = "error" if error else "done"
    if error:
        entry["error"] = error
        report.errors.append(f"{action} {entry['table']}: {error}")
    _after(conn, can_maintain, [(args, entry)])


def _vacuum_all(conn: Connection, report: _Report, can_maintain: str,
                targets: list[Counters]) -> None:
    entries = [(target, dict(target["entry"])) for target in targets]
    report.tables.extend(entry for _target, entry in entries)
    one = time.monotonic()
    error = _run_statement(conn, report, "vacuum-analyze", "(whole database)",
                           "VACUUM (ANALYZE)")
    for _target, entry in entries:
        entry["status"] = "error" if error else "done"
    if error:
        report.errors.append(f"VACUUM (ANALYZE): {error}")
    report.extra["vacuum_all_ms"] = _ms(one)
    _after(conn, can_maintain, entries)


def _after(conn: Connection, can_maintain: str,
           entries: list[tuple[Counters, dict[str, Any]]]) -> None:
    """Record each maintained table's statistics after the work (also after a give-up)."""
    if not entries:
        return
    after = _table_stats(conn, can_maintain, [int(target["relid"]) for target, _ in entries])
    for target, entry in entries:
        if int(target["relid"]) in after:
            entry["after"] = _snapshot(after[int(target["relid"])])


def _estimated_bloat(row: dict[str, Any]) -> float | None:
    """Share of a plain btree index that is empty space, estimated from statistics.

    Expected size: per entry a 4-byte line pointer plus an 8-byte tuple header and the
    key (its columns' average widths from pg_stats), MAXALIGNed, packed into pages at
    the default 90% leaf fill factor.  Without statistics there is no estimate.
    """
    if row["amname"] != "btree" or row["has_expression"] or not row["plain"]:
        return None
    width, tuples, size = row["key_width"], float(row["reltuples"]), int(row["bytes"])
    if width is None or width < 0 or tuples < 0 or size <= 0:
        return None
    entry = 4 + 8 * math.ceil((8 + float(width)) / 8)
    per_page = (_PAGE - _BTREE_PAGE_OVERHEAD) * _BTREE_FILLFACTOR
    expected_pages = math.ceil(tuples * entry / per_page) + 1  # + metapage
    return max(0.0, 1 - expected_pages / (size / _PAGE))


def _index(ctx: JobContext, conn: Connection, report: _Report, can_maintain: str,
           schema: str, index: str) -> None:
    """Step 3 for one index, judged on today's statistics: drop a leftover, rebuild an
    invalid or bloated index, or leave it."""
    s = ctx.settings
    found = _rows(conn, _INDEXES_SQL.format(
        can_maintain=can_maintain,
        only="AND n.nspname = %(schema)s AND ic.relname = %(index)s"),
        schema=schema, index=index)
    if not found:
        return  # gone since the plan (a leftover another chunk's cleanup dropped)
    row = found[0]
    qualified = f"{row['nspname']}.{row['index_name']}"
    action, reason = "", ""
    bloat = None
    if not row["valid"] and _LEFTOVER.search(row["index_name"]):
        action, reason = "drop", "invalid leftover of an interrupted concurrent reindex"
    elif not row["valid"]:
        action, reason = "reindex", "invalid (an earlier concurrent build failed)"
    elif int(row["bytes"]) >= s.maintenance_reindex_min_bytes:
        bloat = _estimated_bloat(row)
        if bloat is not None and bloat >= s.maintenance_reindex_bloat_fraction:
            action, reason = "reindex", f"estimated bloat {bloat:.0%}"
    if not action:
        return
    entry: dict[str, Any] = {
        "index": qualified, "table": f"{row['nspname']}.{row['table_name']}",
        "action": action, "reason": reason,
        "before": {"bytes": int(row["bytes"]), "valid": bool(row["valid"])},
    }
    if bloat is not None:
        entry["before"]["estimated_bloat"] = round(bloat, 3)
    report.indexes.append(entry)
    if not row["can_maintain"]:
        why = f"permission denied: only the owner ({row['owner']}) may rebuild it"
        entry.update(status="skipped", skipped_reason=why)
        report.skipped.append({"object": qualified, "step": "indexes", "reason": why})
        return
    if ctx.dry_run:
        entry["status"] = "planned"
        return
    name = _ident(row["nspname"], row["index_name"])
    one = time.monotonic()

    def cleanup() -> None:
        _drop_leftovers(conn, report, row)

    try:
        if action == "drop":
            error = _run_statement(conn, report, "drop-index", qualified,
                                   f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        else:
            error = _run_statement(conn, report, "reindex", qualified,
                                   f"REINDEX INDEX CONCURRENTLY {name}", cleanup)
            if error:
                cleanup()
    except _GaveUp:
        entry.update(status="gave-up", duration_ms=_ms(one))
        raise
    entry["duration_ms"] = _ms(one)
    entry["status"] = "error" if error else "done"
    if error:
        entry["error"] = error
        report.errors.append(f"{action} {qualified}: {error}")
    after = conn.exec_driver_sql(
        "SELECT pg_relation_size(x.indexrelid), x.indisvalid AND x.indisready "
        "FROM pg_index x WHERE x.indexrelid = to_regclass(%(name)s)",
        {"name": name}).first()
    entry["after"] = ({"bytes": int(after[0]), "valid": bool(after[1])} if after
                      else {"dropped": True})


def _drop_leftovers(conn: Connection, report: _Report, row: dict[str, Any]) -> None:
    """Drop the invalid `<index>_ccnew*` copy an interrupted REINDEX CONCURRENTLY left."""
    leftovers = conn.exec_driver_sql(
        "SELECT ic.relname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid "
        "WHERE x.indrelid = %(relid)s AND NOT x.indisvalid AND ic.relname ~ %(pattern)s",
        {"relid": row["relid"], "pattern": "^" + re.escape(row["index_name"]) + r"_ccnew\d*$"},
    ).scalars().all()
    for leftover in leftovers:
        try:
            # Must not wait: this runs right after a lock was refused.
            conn.exec_driver_sql(
                f"DROP INDEX CONCURRENTLY IF EXISTS {_ident(row['nspname'], leftover)}")
            report.extra.setdefault("leftovers_dropped", []).append(
                f"{row['nspname']}.{leftover}")
        except sa_exc.DBAPIError as exc:
            report.errors.append(
                f"could not drop leftover {row['nspname']}.{leftover}: {_short(exc)}; "
                "the next run drops it")


def _reindex_database_step(ctx: JobContext, conn: Connection, report: _Report) -> None:
    mode = ctx.settings.maintenance_reindex_database
    if mode == "off":
        report.step("reindex-database", "skipped",
                    reason="MAINTENANCE_REINDEX_DATABASE=off (targeted reindex only)")
        return
    if ctx.dry_run:
        report.step("reindex-database", "planned", mode=mode)
        return
    started = time.monotonic()
    database = report.extra["database"]
    sql = (f"REINDEX DATABASE CONCURRENTLY {_ident(database)}" if mode == "concurrently"
           else f"REINDEX DATABASE {_ident(database)}")
    error = _run_statement(conn, report, "reindex-database", database, sql)
    if error:
        report.errors.append(f"reindex database: {error}")
    report.step("reindex-database", "error" if error else "done", started, mode=mode,
                **({"error": error} if error else {}))


def _statements_step(ctx: JobContext, conn: Connection, report: _Report) -> None:
    started = time.monotonic()
    schema = conn.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'").scalar()
    result: dict[str, Any] = {}
    report.extra["pg_stat_statements"] = result
    if schema is None:
        result.update(status="skipped", reason="extension not installed in this database")
        report.step("pg_stat_statements", "skipped", started, reason=result["reason"])
        return
    preload = str(conn.exec_driver_sql("SHOW shared_preload_libraries").scalar() or "")
    if "pg_stat_statements" not in [p.strip() for p in preload.split(",")]:
        result.update(status="skipped", reason="extension installed but not loaded (add "
                      "pg_stat_statements to shared_preload_libraries and restart)")
        report.step("pg_stat_statements", "skipped", started, reason=result["reason"])
        return
    view = _ident(schema, "pg_stat_statements")
    try:
        result["top"] = _rows(
            conn,
            f"SELECT left(query, 200) AS query, calls, round(total_exec_time) AS total_ms, "
            f"round(mean_exec_time::numeric, 2)::float AS mean_ms, rows FROM {view} "
            f"WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            f"ORDER BY total_exec_time DESC LIMIT 5",
        )
        for item in result["top"]:
            item["total_ms"] = float(item["total_ms"])
    except sa_exc.DBAPIError as exc:
        result["top_error"] = _short(exc)
    if ctx.dry_run:
        result.update(status="planned")
        report.step("pg_stat_statements", "planned", started)
        return
    try:
        # This database only: a reset without arguments would wipe every database's.
        conn.exec_driver_sql(
            f"SELECT {_ident(schema, 'pg_stat_statements_reset')}(0, (SELECT oid FROM "
            "pg_database WHERE datname = current_database()), 0)")
        result["status"] = "reset"
        report.step("pg_stat_statements", "done", started)
    except sa_exc.DBAPIError as exc:
        state = _sqlstate(exc)
        reason = {"42501": "permission denied to reset pg_stat_statements",
                  "55000": "extension not loaded (shared_preload_libraries)"}.get(
            state or "", _short(exc))
        result.update(status="skipped", reason=reason)
        report.skipped.append({"object": "pg_stat_statements", "step": "pg_stat_statements",
                               "reason": reason})
        report.step("pg_stat_statements", "skipped", started, reason=reason)


# --- SQLite -------------------------------------------------------------------------------

def _sqlite_sizes(conn: Connection, path: str | None) -> dict[str, int]:
    page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
    pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
    sizes = {"page_size": page_size, "pages": pages, "free_pages": free,
             "database_bytes": pages * page_size}
    if path and os.path.exists(path):
        sizes["file_bytes"] = os.path.getsize(path)
        wal = path + "-wal"
        sizes["wal_bytes"] = os.path.getsize(wal) if os.path.exists(wal) else 0
    return sizes


def _sqlite(ctx: JobContext, report: _Report) -> None:
    s = ctx.settings
    path = ctx.engine.url.database
    with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Wait for another writer only as long as maintenance may wait for a lock.
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(s.maintenance_lock_timeout * 1000)}")
        try:
            before = _sqlite_sizes(conn, path)
            entry: dict[str, Any] = {"table": "(database)", "before": before}
            report.tables.append(entry)
            started = time.monotonic()
            problems = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            if problems != ["ok"]:
                report.errors.append("integrity check failed: " + "; ".join(problems[:5]))
                report.step("integrity_check", "error", started, problems=problems[:20])
                report.step("vacuum", "not-run", reason="integrity check failed: the file "
                            "is not rewritten; restore from a backup or run .recover")
                entry["status"] = "skipped"
                return
            report.step("integrity_check", "done", started, result="ok")
            entry["action"] = "analyze+optimize+vacuum"
            entry["reason"] = f"{before['free_pages']} free pages"
            if ctx.dry_run:
                entry["status"] = "planned"
                for name in ("analyze", "optimize", "vacuum"):
                    report.step(name, "planned")
                return
            whole = time.monotonic()
            for name, sql in (("analyze", "ANALYZE"), ("optimize", "PRAGMA optimize"),
                              ("vacuum", "VACUUM"),
                              ("wal_checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)")):
                started = time.monotonic()
                try:
                    conn.exec_driver_sql(sql).close()
                except sa_exc.OperationalError as exc:
                    if "locked" in str(exc.orig) or "busy" in str(exc.orig):
                        report.gave_up = {"step": name, "target": "(database)",
                                          "reason": "database locked longer than "
                                          "MAINTENANCE_LOCK_TIMEOUT"}
                        report.step(name, "gave-up", started, reason=report.gave_up["reason"])
                        entry["status"] = "gave-up"
                        return
                    raise
                report.step(name, "done", started)
            entry["status"] = "done"
            entry["duration_ms"] = _ms(whole)
            entry["after"] = _sqlite_sizes(conn, path)
        finally:
            conn.exec_driver_sql("PRAGMA busy_timeout = 15000")
