"""Bounded-memory, bounded-lock bulk writes shared by the jobs.

The pattern: stream the candidate keys with one read (a server-side cursor on PostgreSQL,
so memory stays flat), then apply the write in batches of keys, each batch its own short
transaction that re-checks the condition.  The read takes only the lock a plain SELECT
takes, which never blocks application reads or writes; each write statement touches at
most `batch` rows, so no row lock is held for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row


def stream_rows(engine: Engine, stmt: sa.Select[Any], batch: int) -> Iterator[Sequence[Row[Any]]]:
    """Yield `stmt`'s rows `batch` at a time, without loading them all (a server-side
    cursor on PostgreSQL)."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
        yield from result.partitions(batch)


def stream_keys(engine: Engine, stmt: sa.Select[Any], batch: int) -> Iterator[list[Any]]:
    """Yield the first column of `stmt`'s rows, `batch` at a time, without loading them all."""
    for part in stream_rows(engine, stmt, batch):
        yield [row[0] for row in part]


def apply_in_batches(
    engine: Engine,
    keys: Iterator[Sequence[Any]],
    write: Callable[[Connection, Sequence[Any]], int],
) -> int:
    """Run `write(conn, keys)` once per batch, each in its own transaction; sum rowcounts."""
    total = 0
    for chunk in keys:
        if not chunk:
            continue
        with engine.begin() as conn:
            total += write(conn, chunk)
    return total


def keys_in(column: sa.ColumnElement[Any], keys: Sequence[Any], dialect: sa.Dialect
            ) -> sa.ColumnElement[bool]:
    """`column IN keys` for a batch of keys.  On PostgreSQL one array parameter
    (`= ANY(:keys)`): a 5,000-element IN list costs more to bind and plan than the write."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.bindparam(None, list(keys), type_=ARRAY(column.type)))
    return column.in_(keys)


def count(engine: Engine, stmt: sa.Select[Any]) -> int:
    """Rows `stmt` would return, counted by the database."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.count()).select_from(stmt.subquery())).scalar()
    return int(value or 0)
