"""The notification ledger (`cron_notification`): the bulk statements planning needs.

What the rows mean and how their status may move is app/mail/delivery.py's rule; this module
only writes and reads many rows at once, fast on PostgreSQL: one array or JSON parameter per
statement instead of one placeholder per value, which psycopg would rewrite in Python.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from app.db import UTCDateTime, table_of, upsert
from app.models import CronNotification

notifications = table_of(CronNotification)

_T = TypeVar("_T")

# The columns a planned row brings; the rest are filled in by `insert_planned`.
PLANNED_COLUMNS = ("dedupe_key", "user_id", "recipient", "trip_id", "reference_date",
                   "payload")


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def one_of(dialect: sa.Dialect, column: sa.Column[Any], values: Sequence[Any]
           ) -> sa.ColumnElement[bool]:
    """`column IN values`; on PostgreSQL one array parameter instead of one per value."""
    if dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(
            f"{column.name}_values", list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def statuses(conn: Connection, keys: Sequence[str]) -> list[str]:
    """The status of each known row among `keys`."""
    c = notifications.c
    return list(conn.execute(
        sa.select(c.status).where(one_of(conn.dialect, c.dedupe_key, keys))
    ).scalars())


def _insert_pg(conn: Connection, kind: str, rows: list[dict[str, Any]],
               now: dt.datetime, run_id: uuid.UUID) -> set[str]:
    """The whole chunk as one JSON parameter, unpacked by the server: one statement, no
    per-value placeholders for psycopg to rewrite."""
    record = (
        sa.func.jsonb_to_recordset(sa.bindparam("rows", type_=postgresql.JSONB))
        .table_valued(*(sa.column(name, notifications.c[name].type)
                        for name in PLANNED_COLUMNS))
        .render_derived(name="planned", with_types=True)
    )
    stamp = sa.bindparam("now", now, type_=UTCDateTime)
    source = sa.select(
        *(record.c[name] for name in PLANNED_COLUMNS),
        sa.literal(kind), sa.literal("pending"), sa.literal(0), stamp, stamp,
        sa.literal(run_id, notifications.c.run_id.type),
    )
    stmt = (
        postgresql.insert(notifications)
        .from_select([*PLANNED_COLUMNS, "kind", "status", "attempts", "created_at",
                      "updated_at", "run_id"], source)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(notifications.c.dedupe_key)
    )
    records = [{name: _json_value(value) for name, value in row.items()} for row in rows]
    return set(conn.execute(stmt, {"rows": records}).scalars())


def _json_value(value: Any) -> Any:
    """Ids and dates as the text PostgreSQL casts back (`jsonb_to_recordset`)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _insert_generic(conn: Connection, kind: str, rows: list[dict[str, Any]],
                    now: dt.datetime, run_id: uuid.UUID) -> set[str]:
    values = [{**row, "kind": kind, "status": "pending", "attempts": 0, "created_at": now,
               "updated_at": now, "run_id": run_id} for row in rows]
    return set(conn.execute(
        upsert(conn.dialect, notifications)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(notifications.c.dedupe_key),
        values,
    ).scalars())


def insert_planned(conn: Connection, kind: str, rows: list[dict[str, Any]],
                   now: dt.datetime, run_id: uuid.UUID) -> set[str]:
    """Insert `rows` (`PLANNED_COLUMNS`) `pending` and claimed by `run_id`, skipping the
    keys already known; the keys inserted."""
    insert = _insert_pg if conn.dialect.name == "postgresql" else _insert_generic
    return insert(conn, kind, rows, now, run_id)


def count_pending(engine: Engine, kind: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(notifications)
            .where(notifications.c.kind == kind, notifications.c.status == "pending")
        ).scalar_one())
