"""The hand-over record: which email a run is giving to the mail server right now.

Before the SMTP end-of-data mark that makes a server take a message, the run writes the
message's `cron_notification.id` into its own `cron_job_log.mail_cursor`, on the condition
that the run is still `running`.  One write per email, and a cheap one: a single row,
no indexed column changed (PostgreSQL updates it in place), no result rows.

What the cursor proves (app/mail/delivery.py relies on it):

* a run sends its claimed batch one message at a time, in ascending id order, and records
  every outcome other than a 250 (refused, reply lost, not taken) before it moves the cursor
  on.  So when the cursor says `C`, every still-`pending` row of the run's batch below `C`
  was accepted with a 250, `C` itself is in flight, and every row above `C` was never
  handed over;
* the write fails (zero rows) once the runner has closed the run as abandoned, so a run
  that was declared dead cannot hand over one more message: the database, not the process,
  decides.

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
from typing import Protocol

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg.pq.abc import PGresult
from sqlalchemy.engine import Connection, Engine

from app.core.errors import TransientError
from app.core.status import RunStatus
from app.db import table_of
from app.mail.transport import Claim
from app.models import CronJobLog

job_log = table_of(CronJobLog)

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


class _SqlHandover:
    """Any SQLAlchemy database: one autocommit statement per email, run synchronously."""

    def __init__(self, engine: Engine, run_id: uuid.UUID) -> None:
        self.conn: Connection = engine.connect().execution_options(
            isolation_level="AUTOCOMMIT")
        self.stmt = (job_log.update()
                     .where(job_log.c.run_id == run_id, job_log.c.status == RunStatus.RUNNING)
                     .values(mail_cursor=sa.bindparam("cursor")))

    def claim(self, row_id: int) -> Claim:
        return _Done(self.conn.execute(self.stmt, {"cursor": row_id}).rowcount == 1)

    def close(self) -> None:
        self.conn.close()


_STATEMENT = "vsc_mail_handover"
_SQL = ("UPDATE cron_job_log SET mail_cursor = $1 WHERE run_id = $2 "
        f"AND status = '{RunStatus.RUNNING}'")


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
    """

    def __init__(self, engine: Engine, run_id: uuid.UUID, *, durable: bool) -> None:
        raw = engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()
        assert isinstance(conn, psycopg.Connection)
        self._conn = conn
        conn.autocommit = True
        if not durable:
            conn.execute("SET synchronous_commit = off")
        conn.execute(f"PREPARE {_STATEMENT} (bigint, uuid) AS {_SQL}")
        self.pg = conn.pgconn
        self.run = str(run_id).encode()
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
            self.pg.send_query_prepared(_STATEMENT.encode(), [str(row_id).encode(), self.run])
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
        first: PGresult | None = None
        try:
            while True:
                while self.pg.is_busy():
                    self._wait(select.POLLIN)
                    self.pg.consume_input()
                res = self.pg.get_result()
                if res is None:
                    break
                first = first or res
        except psycopg.Error as exc:
            self._broken = True
            raise TransientError(f"could not record the hand-over: {exc}") from exc
        if first is None or first.status != pq.ExecStatus.COMMAND_OK:
            self._broken = True
            detail = first.error_message.decode(errors="replace") if first else "no answer"
            raise TransientError(f"could not record the hand-over: {detail.strip()}")
        return first.command_tuples == 1

    def close(self) -> None:
        try:
            if self._in_flight and not self._broken:
                self.collect()
        finally:
            self._conn.close()


@contextmanager
def handover_log(engine: Engine, run_id: uuid.UUID, *, durable: bool = False
                 ) -> Iterator[Handover]:
    """`with handover_log(engine, run_id) as log: log.claim(row_id).result()`."""
    log: Handover
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        log = _PgHandover(engine, run_id, durable=durable)
    else:
        log = _SqlHandover(engine, run_id)
    try:
        yield log
    finally:
        log.close()
