"""Deleted rows are archived, and one run's deletions can be put back.

A job never deletes a VoyageSmart row outright: `archive_and_delete` moves it, whole, into
`cron_archived_row` with the run's id, in one transaction and set-based (PostgreSQL: one
`DELETE … RETURNING` feeding the archive `INSERT`; SQLite, which holds the write lock for
the transaction, an `INSERT … SELECT` then the `DELETE`).  Every column is kept, including
columns the service's models do not know: PostgreSQL archives `to_jsonb(row)`, SQLite reads
the table's real columns.

`restore_rows` puts back the rows one run archived, parents before children (the reverse of
the order they were deleted in).  A row whose key, or another unique value, exists again is
left in the archive and reported, never overwritten.  Restoring twice restores nothing the
second time.  `purge_archive` drops archived rows past their retention.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.db import table_of
from app.models import CronArchivedRow

archive_t = table_of(CronArchivedRow)


@dataclass
class RestoreReport:
    restored: dict[str, int] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # key or unique value taken again

    @property
    def total(self) -> int:
        return sum(self.restored.values())


def _key_column(table: sa.Table) -> sa.Column[object]:
    keys = list(table.primary_key.columns)
    if len(keys) != 1:
        raise ValueError(f"{table.name}: archiving needs a single-column primary key")
    return keys[0]


def _real_table(conn: Connection, name: str) -> sa.Table:
    """The table as the database has it (columns the models may not know included)."""
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def archive_and_delete(conn: Connection, table: sa.Table, where: sa.ColumnElement[bool], *,
                       run_id: uuid.UUID, job: str, now: dt.datetime) -> list[str]:
    """Move the rows of `table` matching `where` into the archive; the keys moved (as
    text).  On PostgreSQL one statement (the delete, its archive rows and the keys);
    elsewhere the keys are read first, then the rows copied and deleted, in the caller's
    transaction (SQLite has one writer: nothing changes between them)."""
    key = _key_column(table)
    if conn.dialect.name == "postgresql":
        gone = table.delete().where(where).returning(*table.c).cte("gone")
        select = sa.select(
            sa.literal(run_id, archive_t.c.run_id.type), sa.literal(job),
            sa.literal(table.name), sa.cast(gone.c[key.name], sa.Text),
            sa.func.to_jsonb(gone.table_valued()), sa.literal(now, archive_t.c.archived_at.type),
        )
        moved = archive_t.insert().from_select(
            ["run_id", "job_name", "source_table", "row_key", "row_data", "archived_at"],
            select).returning(archive_t.c.row_key).cte("moved")
        return [str(k) for k in conn.execute(sa.select(moved.c.row_key)).scalars()]
    keys = [str(k) for k in conn.execute(sa.select(table.c[key.name]).where(where)).scalars()]
    if not keys:
        return []
    # The columns the database has, named on `table` so `where` applies to the same rows.
    real = _real_table(conn, table.name)
    prep = conn.dialect.identifier_preparer
    named = prep.format_table(table)
    pairs: list[sa.ColumnElement[object]] = []
    for column in real.c:
        pairs += [sa.literal(column.name), sa.literal_column(f"{named}.{prep.quote(column.name)}")]
    select = sa.select(
        sa.literal(run_id, archive_t.c.run_id.type), sa.literal(job), sa.literal(table.name),
        sa.cast(table.c[key.name], sa.Text), sa.func.json_object(*pairs),
        sa.literal(now, archive_t.c.archived_at.type),
    ).select_from(table).where(where)
    conn.execute(archive_t.insert().from_select(
        ["run_id", "job_name", "source_table", "row_key", "row_data", "archived_at"], select))
    conn.execute(table.delete().where(where))
    return keys


def _archived(run_id: uuid.UUID, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(archive_t.c.run_id == run_id, archive_t.c.source_table == name)


def _restore_table(conn: Connection, name: str, run_id: uuid.UUID, stamp: dt.datetime
                   ) -> tuple[int, int]:
    table = _real_table(conn, name)
    key = _key_column(table)
    prep = conn.dialect.identifier_preparer
    quoted = prep.format_table(table)
    columns = [prep.quote(c.name) for c in table.c]
    postgres = conn.dialect.name == "postgresql"
    if postgres:  # the archived JSON read back with the table's own column types
        source = (f"FROM cron_archived_row a CROSS JOIN LATERAL "
                  f"jsonb_populate_record(NULL::{quoted}, a.row_data) r")
    else:  # SQLite archived the stored values themselves
        source = "FROM cron_archived_row a"

    def value_of(column: str) -> str:
        if postgres:
            return f"r.{prep.quote(column)}"
        return f"json_extract(a.row_data, '$.\"{column}\"')"

    values = ", ".join(value_of(c.name) for c in table.c)
    key_value = value_of(key.name)
    insert = "INSERT INTO" if postgres else "INSERT OR IGNORE INTO"
    conflict = " ON CONFLICT DO NOTHING" if postgres else ""
    mine = "a.run_id = :run_id AND a.source_table = :name"
    exists = f"EXISTS (SELECT 1 FROM {quoted} t WHERE t.{prep.quote(key.name)} = {key_value})"
    # A row whose parent is gone (not restored, or deleted since) stays in the archive.
    parents = "".join(
        f" AND ({value_of(fk.parent.name)} IS NULL OR EXISTS (SELECT 1 FROM "
        f"{prep.format_table(fk.column.table)} p WHERE p.{prep.quote(fk.column.name)} = "
        f"{value_of(fk.parent.name)}))"
        for fk in table.foreign_keys)
    typed: tuple[sa.BindParameter[object], ...] = (
        sa.bindparam("run_id", run_id, type_=archive_t.c.run_id.type),
        sa.bindparam("name", name),
        sa.bindparam("stamp", stamp, type_=archive_t.c.restored_at.type))

    def execute(sql: str) -> None:
        conn.execute(sa.text(sql).bindparams(*typed))

    # 1. Claim the rows whose key is free; 2. insert them (a unique value taken again
    # skips the row); 3. give back the claim of every row that did not go in.
    execute(f"UPDATE cron_archived_row SET restored_at = :stamp WHERE id IN "
            f"(SELECT a.id {source} WHERE {mine} AND a.restored_at IS NULL AND NOT {exists}"
            f"{parents})")
    execute(f"{insert} {quoted} ({', '.join(columns)}) SELECT {values} {source} "
            f"WHERE {mine} AND a.restored_at = :stamp{conflict}")
    execute(f"UPDATE cron_archived_row SET restored_at = NULL WHERE id IN (SELECT a.id "
            f"{source} WHERE {mine} AND a.restored_at = :stamp AND NOT {exists})")
    restored = conn.execute(sa.select(sa.func.count()).where(
        _archived(run_id, name), archive_t.c.restored_at == stamp)).scalar_one()
    left = conn.execute(sa.select(sa.func.count()).where(
        _archived(run_id, name), archive_t.c.restored_at.is_(None))).scalar_one()
    return restored, left


def archived_tables(conn: Connection, run_id: uuid.UUID) -> list[str]:
    """Tables the run archived rows of, parents first (the reverse of deletion order)."""
    rows = conn.execute(
        sa.select(archive_t.c.source_table, sa.func.max(archive_t.c.id).label("last"))
        .where(archive_t.c.run_id == run_id)
        .group_by(archive_t.c.source_table)
        .order_by(sa.desc("last"))
    ).all()
    return [row[0] for row in rows]


def restore_rows(conn: Connection, run_id: uuid.UUID, now: dt.datetime) -> RestoreReport:
    """Put back every row `run_id` archived and is not restored yet."""
    report = RestoreReport()
    for name in archived_tables(conn, run_id):
        restored, left = _restore_table(conn, name, run_id, now)
        report.restored[name] = restored
        if left:
            report.left[name] = left
    return report


def pending_restore(conn: Connection, run_id: uuid.UUID) -> dict[str, int]:
    """Archived rows of `run_id` not restored yet, per table (what a restore would try)."""
    rows = conn.execute(
        sa.select(archive_t.c.source_table, sa.func.count())
        .where(archive_t.c.run_id == run_id, archive_t.c.restored_at.is_(None))
        .group_by(archive_t.c.source_table)
    ).all()
    return {row[0]: int(row[1]) for row in rows}


def purge_archive(conn: Connection, now: dt.datetime, retention: dt.timedelta) -> int:
    """Drop archived rows older than `retention`: past it, a deletion is final."""
    return conn.execute(
        archive_t.delete().where(archive_t.c.archived_at < now - retention)
    ).rowcount
