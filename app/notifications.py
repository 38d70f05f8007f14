"""The notification record: plan each email once, send it at most once, never lose track.

Every user email is a `cron_notification` row with a unique `dedupe_key` (for a trip
reminder: kind, trip, user and trip start date).  The row is inserted before anything is
sent, and its `status` moves only through conditional UPDATEs, so the database, not a
Python flag, decides who sends what:

    pending --claim--> sending --250--> sent
                        sending --5xx--> failed        (pending --5xx at RCPT--> failed)
                        sending --4xx--> pending       (the server said "not taken")
                        sending --reply lost / run died--> unconfirmed
    pending --no longer relevant (trip started, user came back)--> expired

The claim (`pending -> sending`, `WHERE status = 'pending' AND run_id = <this run>`,
committed) is started when the SMTP transaction starts, runs on the database while the
envelope and the message travel, and must have committed before the SMTP end-of-data
mark that makes the server take the message is written (app/mail.py `deliver`).  A
failure before that mark (a disconnect, a 4xx) gives the claim back (`sending ->
pending`): nothing was taken.  So:

* a row still `pending` was certainly not delivered: it is sent by the next attempt or run
  (a crash or a disconnect before the claim commits drops nothing);
* a row `sending` whose run is gone was claimed by a process that died before recording
  the outcome: at most one such row per dead run (one message is in flight at a time;
  plus, at most, the previous message, whose 250 is written with the next claim).  Its
  message may or may not have been taken, so it is resolved to `unconfirmed`, counted as
  delivered, never sent again, and reported (the run ends with status `warning`).

That is **at-most-once**: in the one ambiguous window (claim committed, reply not yet
recorded) we prefer a possibly-missing reminder, made visible, over a duplicate in a
user's inbox.  The window is one message of one SMTP transaction per crash; a process
that fails without dying (an exception) gives back whatever it had not handed over.

Rows are claimed in batches (`run_id` set to this run) so two live runs do not contend for
the same rows; a claim held by a run that is no longer `running` in `cron_job_log` (the
runner closes dead runs as abandoned) is taken over.  The per-message claim still checks
`run_id`, so even a stolen batch never sends twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.db import table_of, upsert
from app.jobs.context import JobContext
from app.mail import Mailer, MailTransport, Outgoing
from app.models import CronJobLog, CronNotification

notifications = table_of(CronNotification)
job_log = table_of(CronJobLog)

_T = TypeVar("_T")

DELIVERED = ("sent", "unconfirmed")
# Claims and messages per claim round: small enough that a stolen batch wastes little.
CLAIM_BATCH = 200
# A run stops claiming new messages once this share of its time budget is spent, leaving
# the rest `pending` for the next run instead of being killed mid-batch.
BUDGET_SHARE = 0.9


@dataclass(frozen=True)
class Planned:
    """One email a job wants sent; `payload` is the template context."""

    key: str
    user_id: uuid.UUID
    recipient: str
    language: str
    payload: dict[str, Any]
    trip_id: uuid.UUID | None = None
    reference_date: dt.date | None = None


@dataclass
class Tally:
    new: int = 0  # planned now for the first time
    resumed: int = 0  # planned before, still pending (a run stopped early)
    already_sent: int = 0
    already_failed: int = 0
    sent: int = 0
    failed: int = 0
    unconfirmed: int = 0
    expired: int = 0
    taken_by_other_run: int = 0
    left_pending: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["errors"] = self.errors[:20]
        return out


def _chunks(items: Iterable[Planned], size: int) -> Iterator[list[Planned]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def plan(ctx: JobContext, kind: str, planned: Iterable[Planned], tally: Tally) -> None:
    """Insert a `pending` row per new key (batched, ON CONFLICT DO NOTHING); count the rest.

    A dry run only looks the keys up.
    """
    engine = ctx.engine
    batch = min(ctx.settings.batch_size, 1000)
    for chunk in _chunks(planned, batch):
        keys = [item.key for item in chunk]
        with engine.connect() as conn:
            existing = dict(conn.execute(
                sa.select(notifications.c.dedupe_key, notifications.c.status)
                .where(notifications.c.dedupe_key.in_(keys))
            ).all())
        for status in existing.values():
            if status in DELIVERED:
                tally.already_sent += 1
            elif status == "failed":
                tally.already_failed += 1
            elif status in ("pending", "sending"):
                tally.resumed += 1
        fresh = [item for item in chunk if item.key not in existing]
        if ctx.dry_run or not fresh:
            tally.new += len(fresh)
            continue
        rows = [
            {"kind": kind, "dedupe_key": item.key, "user_id": item.user_id,
             "recipient": item.recipient, "status": "pending", "run_id": None, "attempts": 0,
             "trip_id": item.trip_id, "reference_date": item.reference_date,
             "payload": {**item.payload, "language": item.language},
             "created_at": ctx.now, "updated_at": ctx.now}
            for item in fresh
        ]
        with engine.begin() as conn:
            inserted = conn.execute(
                upsert(engine.dialect, notifications)
                .on_conflict_do_nothing(index_elements=["dedupe_key"])
                .returning(notifications.c.id),
                rows,
            ).all()
        tally.new += len(inserted)
        # A racing run inserted the others a moment ago; it owns them until it finishes.
        tally.resumed += len(fresh) - len(inserted)


def expire(ctx: JobContext, kind: str, stale: sa.ColumnElement[bool], tally: Tally) -> None:
    """Pending rows that no longer make sense (`stale`) become `expired`, not sent late."""
    condition = sa.and_(notifications.c.kind == kind, notifications.c.status == "pending",
                        stale)
    if ctx.dry_run:
        with ctx.engine.connect() as conn:
            tally.expired += int(conn.execute(
                sa.select(sa.func.count()).select_from(notifications).where(condition)
            ).scalar_one())
        return
    with ctx.engine.begin() as conn:
        tally.expired += conn.execute(
            notifications.update().where(condition).values(
                status="expired", updated_at=ctx.now,
                error="no longer relevant when it could be sent")
        ).rowcount


def _run_is_live() -> sa.Exists:
    return sa.exists().where(job_log.c.run_id == notifications.c.run_id,
                             job_log.c.status == "running")


def resolve_unknown(ctx: JobContext, kind: str, tally: Tally) -> None:
    """`sending` rows of a run that is gone (or of this run's failed attempt): unconfirmed."""
    condition = sa.and_(
        notifications.c.kind == kind, notifications.c.status == "sending",
        sa.or_(notifications.c.run_id == ctx.run_id, notifications.c.run_id.is_(None),
               ~_run_is_live()),
    )
    if ctx.dry_run:
        return
    with ctx.engine.begin() as conn:
        tally.unconfirmed += conn.execute(
            notifications.update().where(condition).values(
                status="unconfirmed", updated_at=ctx.now,
                error="outcome unknown: the run stopped after handing the message to the "
                "mail server; presumed delivered, not sent again")
        ).rowcount


def _claimable(kind: str, run_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.and_(
        notifications.c.kind == kind, notifications.c.status == "pending",
        sa.or_(notifications.c.run_id.is_(None), notifications.c.run_id == run_id,
               ~_run_is_live()),
    )


def _claim_batch(conn: Connection, kind: str, run_id: uuid.UUID, now: dt.datetime,
                 after: int, size: int) -> list[sa.Row[Any]]:
    """Take the next `size` claimable rows with an id above `after`, in one statement.

    Walking forward by id keeps each batch an index range scan instead of a scan over
    every row already sent; `deliver` sweeps once more from the start at the end.
    """
    candidates = (sa.select(notifications.c.id)
                  .where(_claimable(kind, run_id), notifications.c.id > after)
                  .order_by(notifications.c.id).limit(size))
    taken = conn.execute(
        notifications.update()
        .where(notifications.c.id.in_(candidates), _claimable(kind, run_id))
        .values(run_id=run_id, updated_at=now)
        .returning(notifications.c.id, notifications.c.dedupe_key,
                   notifications.c.recipient, notifications.c.payload)
    ).all()
    return sorted(taken, key=lambda row: int(row.id))


def _claim_statement() -> sa.Update:
    """Built once (it runs once per email): take `cur`, mark `done` (the previous 250) sent.

    Scalar parameters only: an expanding IN list is re-rendered on every execution, and
    this statement's client-side cost is a good part of an email's.
    """
    c = notifications.c
    cur = sa.bindparam("cur", type_=c.id.type)
    done = sa.bindparam("done", type_=c.id.type)
    me = sa.bindparam("me", type_=c.run_id.type)
    now = sa.bindparam("now", type_=c.updated_at.type)
    this = c.id == cur
    return (
        notifications.update()
        .where(c.run_id == me, sa.or_(
            sa.and_(this, c.status == "pending"),
            sa.and_(c.id == done, c.status == "sending"),
        ))
        .values(status=sa.case((this, "sending"), else_="sent"),
                attempts=sa.case((this, c.attempts + 1), else_=c.attempts),
                sent_at=sa.case((this, c.sent_at), else_=now),
                updated_at=now)
        .returning(c.id)
    )


_CLAIM = _claim_statement()


class _Sender:
    """Owns this run's transitions; `claim` is the `Handover` app/mail.py calls.

    It holds one autocommit connection, used only from its own worker thread, so that a
    claim runs on the database while the SMTP envelope and message travel (the transport
    waits for it before the end-of-data mark).  Each claim is one statement: it takes
    this message (`pending -> sending`) and marks the 250s received since the previous
    claim `sent`, so the `sent` writes are set-based and cost no round trip of their own.
    On PostgreSQL the connection commits asynchronously unless `MAIL_DURABLE_CLAIMS` is
    set: the commit is visible to every other session at once, and a crash of this
    process loses nothing, but a crash of the database server itself can lose the last
    fraction of a second of claims (whose messages could then be sent again).  A
    synchronous WAL flush per email costs more than the email does.
    """

    def __init__(self, ctx: JobContext, tally: Tally) -> None:
        self.engine = ctx.engine
        self.durable = ctx.settings.mail_durable_claims
        self.run_id = ctx.run_id
        self.now = ctx.now
        self.tally = tally
        self.row_id = 0
        # The 250 not yet written (one message at most: each claim writes the previous
        # one's).  A crash leaves it `sending`, i.e. `unconfirmed`: still never resent.
        self.confirmed: int | None = None
        self._conn: Connection | None = None
        self._async = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claims")

    def _on_worker(self, work: Callable[[Connection], _T]) -> _T:
        return self._worker.submit(lambda: work(self.conn)).result()

    def __enter__(self) -> _Sender:
        def connect() -> None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if conn.dialect.name == "postgresql" and not self.durable:
                conn.exec_driver_sql("SET synchronous_commit = off")
                self._async = True
            self._conn = conn

        try:
            self._worker.submit(connect).result()
        except BaseException:
            self._worker.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                self._flush(conn)
                if self._async:
                    conn.exec_driver_sql("RESET synchronous_commit")  # pooled connection
            finally:
                conn.close()

        try:
            self._worker.submit(close).result()
        finally:
            self._worker.shutdown()

    @property
    def conn(self) -> Connection:
        assert self._conn is not None
        return self._conn

    def _mine(self, row_id: int, status: str | Sequence[str]) -> sa.ColumnElement[bool]:
        statuses = [status] if isinstance(status, str) else list(status)
        return sa.and_(notifications.c.id == row_id,
                       notifications.c.run_id == self.run_id,
                       notifications.c.status.in_(statuses))

    def _flush(self, conn: Connection) -> None:
        if self.confirmed is not None:
            done, self.confirmed = self.confirmed, None
            conn.execute(notifications.update().where(self._mine(done, "sending"))
                         .values(status="sent", sent_at=self.now, updated_at=self.now))

    def flush(self) -> None:
        self._on_worker(self._flush)

    def confirm(self, row_id: int) -> None:
        """The server took `row_id` (250): written by the next claim, or now if one waits."""
        if self.confirmed is not None:
            self.flush()
        self.confirmed = row_id

    def claim(self) -> Future[bool]:
        row_id = self.row_id
        params = {"cur": row_id, "me": self.run_id, "done": self.confirmed, "now": self.now}
        self.confirmed = None
        return self._worker.submit(
            lambda: row_id in {row[0] for row in self.conn.execute(_CLAIM, params)})

    def undo(self) -> None:
        row_id = self.row_id
        self._on_worker(lambda conn: conn.execute(
            notifications.update().where(self._mine(row_id, "sending"))
            .values(status="pending", updated_at=self.now)))

    def record(self, status: str, detail: str) -> None:
        row_id = self.row_id

        def write(conn: Connection) -> None:
            self._flush(conn)
            conn.execute(
                notifications.update().where(self._mine(row_id, ("pending", "sending")))
                .values(status=status, error=detail or None, updated_at=self.now,
                        attempts=notifications.c.attempts + (1 if status == "failed" else 0))
            )

        self._on_worker(write)


def deliver(ctx: JobContext, kind: str, template: str, tally: Tally,
            mailer: Mailer | None = None) -> None:
    """Send every pending row of `kind` this run can claim, over one mail connection."""
    if ctx.dry_run:
        return
    mailer = mailer or Mailer(ctx.settings)
    started = time.monotonic()
    budget = ctx.seconds_left(ctx.now)
    transport: MailTransport
    composer = _Composer(mailer, template)
    after, swept = 0, False
    with mailer.connection() as transport, _Sender(ctx, tally) as sender:
        while True:
            if budget is not None and time.monotonic() - started > budget * BUDGET_SHARE:
                tally.left_pending += _count_pending(ctx.engine, kind)
                break
            with ctx.engine.begin() as conn:
                rows = _claim_batch(conn, kind, ctx.run_id, ctx.now, after, CLAIM_BATCH)
            if not rows:
                if after == 0 or swept:
                    break
                # One last sweep from the start: rows that became claimable behind the
                # walk (a dead run's batch).  Once only, so the loop always ends.
                after, swept = 0, True
                continue
            after = int(rows[-1].id)
            for row, following in zip(rows, [*rows[1:], None], strict=True):
                _deliver_one(transport, sender, composer, row, following, tally)
            sender.flush()
    # Across the runner's attempts of this run, not only this attempt's share.
    with ctx.engine.connect() as conn:
        mine: dict[str, int] = dict(conn.execute(
            sa.select(notifications.c.status, sa.func.count())
            .where(notifications.c.kind == kind, notifications.c.run_id == ctx.run_id)
            .group_by(notifications.c.status)
        ).all())
    tally.sent = int(mine.get("sent", 0))
    tally.failed = int(mine.get("failed", 0))


class _Composer:
    """Renders a row's message; `prepare` does it ahead, while the mail server is busy."""

    def __init__(self, mailer: Mailer, template: str) -> None:
        self.mailer = mailer
        self.template = template
        self._ready: tuple[int, Outgoing] | None = None

    def _compose(self, row: sa.Row[Any]) -> Outgoing:
        payload: dict[str, Any] = dict(row.payload or {})
        return self.mailer.compose(self.template, row.recipient,
                                   str(payload.get("language", "en")), payload,
                                   key=row.dedupe_key)

    def prepare(self, row: sa.Row[Any]) -> None:
        try:
            self._ready = (int(row.id), self._compose(row))
        except Exception:  # `take` composes it again and raises, outside the SMTP exchange
            self._ready = None

    def take(self, row: sa.Row[Any]) -> Outgoing:
        ready, self._ready = self._ready, None
        if ready is not None and ready[0] == row.id:
            return ready[1]
        return self._compose(row)


def _deliver_one(transport: MailTransport, sender: _Sender, composer: _Composer,
                 row: sa.Row[Any], following: sa.Row[Any] | None, tally: Tally) -> None:
    message = composer.take(row)
    sender.row_id = row.id
    result = transport.deliver(
        message, sender,
        None if following is None else functools.partial(composer.prepare, following))
    if result.status == "sent":
        sender.confirm(row.id)
        tally.sent += 1
    elif result.status == "rejected":
        sender.record("failed", result.detail)
        tally.failed += 1
        tally.errors.append(f"{row.recipient}: {result.detail}")
    elif result.status == "unconfirmed":
        sender.record("unconfirmed", result.detail)
        tally.unconfirmed += 1
    else:
        tally.taken_by_other_run += 1


def _count_pending(engine: Engine, kind: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(notifications)
            .where(notifications.c.kind == kind, notifications.c.status == "pending")
        ).scalar_one())


def outcome_status(tally: Tally) -> str:
    """`warning` when a message failed, is unconfirmed, expired or was left for later."""
    troubled = tally.failed + tally.unconfirmed + tally.expired + tally.left_pending
    return "warning" if troubled else "success"
