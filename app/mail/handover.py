"""The hand-over cursor write: one small database write per email, before its end-of-data
mark, that says which message a run is giving to the mail server right now.

Why it exists and what it proves is the once-only rule of app/mail/delivery.py.  This
module only makes the write cheap: a single row, no indexed column changed (PostgreSQL
updates it in place), no result rows.  The row is the run's `cron_job_log` (`mail_cursor`)
or, for one send chunk of a run whose chunks send side by side, that chunk's
`cron_run_chunk` row (`mail_cursor`, moved only by the attempt that owns the chunk,
`mail_owner`); either way on the condition that the run is still `running` or `partial`.

On PostgreSQL the write is pipelined: `claim()` sends it and returns at once, the SMTP
envelope travels meanwhile, and `Claim.result()` waits for the commit just before the
end-of-data mark.  It commits asynchronously unless `MAIL_DURABLE_CLAIMS` is set: visible
to every session at once and safe against this process dying; only a crash of the database
server itself could lose the last instant of cursor moves (whose messages could then be
sent again).  On other databases (SQLite) the write is a plain autocommit statement.
"""

from __future__ import annotations

import select
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg.pq.abc import PGresult
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Connection, Engine

from app.core.errors import TransientError
from app.core.status import RunStatus
from app.db import table_of
from app.mail.smtp import Claim
from app.models import CronJobLog, CronRunChunk

job_log = table_of(CronJobLog)
chunk_t = table_of(CronRunChunk)

# How long a cursor write may take before the run gives up on the database.
WRITE_TIMEOUT = 30.0


class Handover(Protocol):
    def claim(self, row_id: int) -> Claim: ...

    def close(self) -> None: ...


class _Done:
    def __init__(self, won: bool) -> None:
        self.won = won

    def result(self) -> bool:
        return self.won


@dataclass(frozen=True)
class Lane:
    """Whose cursor a sender moves: its run's (`seq` None), or chunk `seq`'s, held by the
    chunk's attempt `owner` (a later attempt of the chunk takes it over)."""

    run_id: uuid.UUID
    seq: int | None = None
    owner: uuid.UUID | None = None


def _open(run: object) -> sa.ColumnElement[bool]:
    status = job_log.c.status
    return sa.and_(job_log.c.run_id == run,
                   sa.or_(status == RunStatus.RUNNING, status == RunStatus.PARTIAL))


def _write(cursor: object, run: object, seq: object = None, owner: object = None
           ) -> sa.Update:
    """The one write: the cursor moves to `cursor` while the run is still `running`, or
    `partial` (between calls, queue workers go on with its chunks: app/queue/).

    A chunk's cursor (`seq` given) moves while its attempt `owner` holds it; the run's
    row is then read FOR SHARE, so that the write and the run's closing as abandoned
    cannot cross: whoever comes second sees the other (PostgreSQL; SQLite has one writer
    at a time)."""
    if seq is None:
        return job_log.update().where(_open(run)).values(mail_cursor=cursor)
    live = sa.exists(sa.select(job_log.c.run_id).where(_open(run))
                     .with_for_update(read=True))
    return (chunk_t.update()
            .where(chunk_t.c.run_id == run, chunk_t.c.seq == seq,
                   chunk_t.c.mail_owner == owner, live)
            .values(mail_cursor=cursor))


def _params(lane: Lane, row_id: int) -> dict[str, object]:
    return {"cursor": row_id, "run": lane.run_id, "chunk_seq": lane.seq,
            "chunk_owner": lane.owner}


def _statement(lane: Lane) -> sa.Update:
    """The write with bound parameters, for `lane`'s kind of row."""
    cursor = sa.bindparam("cursor", type_=job_log.c.mail_cursor.type)
    run = sa.bindparam("run", type_=job_log.c.run_id.type)
    if lane.seq is None:
        return _write(cursor, run)
    return _write(cursor, run, sa.bindparam("chunk_seq", type_=chunk_t.c.seq.type),
                  sa.bindparam("chunk_owner", type_=chunk_t.c.mail_owner.type))


class _SqlHandover:
    """Any SQLAlchemy database: one autocommit statement per email, run synchronously."""

    def __init__(self, engine: Engine, lane: Lane) -> None:
        self.conn: Connection = engine.connect().execution_options(
            isolation_level="AUTOCOMMIT")
        self.lane = lane
        self.stmt = _statement(lane)

    def claim(self, row_id: int) -> Claim:
        result = self.conn.execute(self.stmt, _params(self.lane, row_id))
        return _Done(result.rowcount == 1)

    def close(self) -> None:
        self.conn.close()


_STATEMENT = "vsc_mail_handover"


def _prepared(lane: Lane) -> tuple[str, tuple[str, ...], dict[str, bytes]]:
    """The write as PostgreSQL's own `$n` placeholders (for PREPARE), the parameter names
    in their order, and the values the statement fixes itself (the open statuses)."""
    dialect = PGDialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
    compiled = _statement(lane).compile(dialect=dialect)
    fixed = {name: str(value).encode() for name, value in compiled.params.items()
             if value is not None}
    return str(compiled), tuple(compiled.positiontup or ()), fixed


def _literal(row_id: int, lane: Lane) -> str:
    """The write with its values written in (ints and UUIDs): for a transaction pooler,
    where no statement may be prepared."""
    seq = None if lane.seq is None else sa.literal(int(lane.seq), chunk_t.c.seq.type)
    owner = (None if lane.seq is None
             else sa.literal(lane.owner, chunk_t.c.mail_owner.type))
    stmt = _write(sa.literal(int(row_id), job_log.c.mail_cursor.type),
                  sa.literal(lane.run_id, job_log.c.run_id.type), seq, owner)
    return str(stmt.compile(dialect=PGDialect(),  # type: ignore[no-untyped-call]
                            compile_kwargs={"literal_binds": True}))


class _PgClaim:
    def __init__(self, owner: _PgHandover) -> None:
        self.owner = owner
        self.won: bool | None = None

    def result(self) -> bool:
        if self.won is None:
            self.won = self.owner.collect()
        return self.won


class _PgHandover:
    """PostgreSQL: the write goes out at once and is collected before the end-of-data mark.

    A connection of its own (detached from the pool and closed afterwards, so its prepared
    statement and settings never reach another user), driven through libpq's asynchronous
    calls: `claim()` sends, `_PgClaim.result()` reads.  Claims are strictly sequential; a
    claim is always collected before the next one is sent.

    Behind a transaction pooler (the engine turned psycopg's prepared statements off) each
    write must stand alone: no PREPARE and no session setting, since the next write may
    reach another server connection.  Each write is then one simple query, with its own
    `SET LOCAL` when commits are asynchronous.
    """

    def __init__(self, engine: Engine, lane: Lane, *, durable: bool) -> None:
        raw = engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()
        assert isinstance(conn, psycopg.Connection)
        self._conn = conn
        conn.autocommit = True
        self._pooled = conn.prepare_threshold is None
        self._async_commit = "SET LOCAL synchronous_commit = off; " if not durable else ""
        if not self._pooled:
            if not durable:
                conn.execute("SET synchronous_commit = off")
            sql, self._names, fixed = _prepared(lane)
            conn.execute(f"PREPARE {_STATEMENT} AS {sql}")
            self._fixed = {**fixed, "run": str(lane.run_id).encode(),
                           "chunk_seq": str(lane.seq).encode(),
                           "chunk_owner": str(lane.owner).encode()}
        self.pg = conn.pgconn
        self.lane = lane
        self._poll = select.poll()
        self._poll.register(self.pg.socket, select.POLLIN)
        self._in_flight = False
        self._broken = False

    def claim(self, row_id: int) -> Claim:
        if self._broken:
            raise TransientError("the hand-over connection was lost")
        if self._in_flight:
            self.collect()
        try:
            if self._pooled:  # one simple query: SET LOCAL and the write in one transaction
                self.pg.send_query(f"{self._async_commit}{_literal(row_id, self.lane)}"
                                   .encode())
            else:
                values = {**self._fixed, "cursor": str(row_id).encode()}
                self.pg.send_query_prepared(_STATEMENT.encode(),
                                            [values[name] for name in self._names])
            while self.pg.flush():  # nonblocking connection: the rest goes when writable
                self._wait(select.POLLOUT)
        except psycopg.Error as exc:
            self._broken = True
            raise TransientError(f"could not record the hand-over: {exc}") from exc
        self._in_flight = True
        return _PgClaim(self)

    def _wait(self, events: int) -> None:
        self._poll.modify(self.pg.socket, events)
        try:
            if not self._poll.poll(WRITE_TIMEOUT * 1000):
                self._broken = True
                raise TransientError(
                    f"the database did not answer a hand-over write in {WRITE_TIMEOUT:.0f} s")
        finally:
            self._poll.modify(self.pg.socket, select.POLLIN)

    def collect(self) -> bool:
        """Read the pending write's outcome: True when it updated the run's row."""
        if not self._in_flight:
            raise RuntimeError("no hand-over write is in flight")
        self._in_flight = False
        results: list[PGresult] = []
        try:
            while True:
                while self.pg.is_busy():
                    self._wait(select.POLLIN)
                    self.pg.consume_input()
                res = self.pg.get_result()
                if res is None:
                    break
                results.append(res)
        except psycopg.Error as exc:
            self._broken = True
            raise TransientError(f"could not record the hand-over: {exc}") from exc
        failed = next((r for r in results if r.status != pq.ExecStatus.COMMAND_OK), None)
        if not results or failed is not None:
            self._broken = True
            detail = failed.error_message.decode(errors="replace") if failed else "no answer"
            raise TransientError(f"could not record the hand-over: {detail.strip()}")
        return results[-1].command_tuples == 1  # the UPDATE's (after any SET LOCAL)

    def close(self) -> None:
        try:
            if self._in_flight and not self._broken:
                self.collect()
        finally:
            self._conn.close()


@contextmanager
def handover_log(engine: Engine, lane: Lane | uuid.UUID, *, durable: bool = False
                 ) -> Iterator[Handover]:
    """`with handover_log(engine, run_id) as log: log.claim(row_id).result()`; a `Lane`
    for one chunk's cursor."""
    lane = lane if isinstance(lane, Lane) else Lane(lane)
    log: Handover
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        log = _PgHandover(engine, lane, durable=durable)
    else:
        log = _SqlHandover(engine, lane)
    try:
        yield log
    finally:
        log.close()
