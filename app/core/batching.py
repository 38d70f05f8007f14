"""Bounded-memory, bounded-lock bulk writes shared by the jobs.

The pattern: stream the candidate keys with one read (a server-side cursor on PostgreSQL,
so memory stays flat), then apply the write in batches of keys, each batch its own short
transaction that re-checks the condition.  The read takes only the lock a plain SELECT
takes, which never blocks application reads or writes; each write statement touches at
most `batch` rows, so no row lock is held for long.
"""

from __future__ import annotations

import itertools
import uuid
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


KeyRange = tuple[str | None, str | None]


def key_ranges(engine: Engine, key: sa.ColumnElement[Any], size: int,
               where: sa.ColumnElement[bool] | None = None) -> list[KeyRange]:
    """The whole key space of the UUID column `key` in consecutive ranges (after, upto] of
    `size` keys each (of the rows matching `where`, when given), the first and last
    open-ended so that a row inserted after the split still falls in one: the chunks of a
    run over a table.  One grouped read of the key's index, numbering the keys rather
    than loading them."""
    numbering = sa.select(key.label("k"), sa.func.row_number().over(order_by=key).label("n"))
    numbered = numbering.where(sa.true() if where is None else where).subquery()
    with engine.connect() as conn:
        bounds = [str(k) for k in conn.execute(
            sa.select(numbered.c.k).where(numbered.c.n % max(1, size) == 0)
            .order_by(numbered.c.k)).scalars()]
    return list(itertools.pairwise([None, *bounds, None]))


def in_range(column: sa.ColumnElement[Any], after: str | None, upto: str | None
             ) -> sa.ColumnElement[bool]:
    """`column` in the key range (after, upto] of `key_ranges` (None: open)."""
    conditions = []
    if after is not None:
        conditions.append(column > uuid.UUID(after))
    if upto is not None:
        conditions.append(column <= uuid.UUID(upto))
    return sa.and_(sa.true(), *conditions)
