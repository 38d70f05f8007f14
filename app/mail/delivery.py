"""At-most-once user email: plan each email once, send it at most once, never lose track.

This module is the one place the rule is written; the transport (app/mail/smtp.py), the
hand-over write (app/mail/handover.py) and the jobs rely on it and point here.

Every user email is a `cron_notification` row with a unique `dedupe_key` (for a trip
reminder: kind, trip, user and trip start date), inserted `pending` before anything is sent.
Its `status` moves only through conditional UPDATEs, so the database, not a Python flag,
decides who sends what:

    pending --250--> sent        pending --5xx--> failed
    pending --reply lost, or the run died with it in flight--> unconfirmed
    pending --no longer relevant (trip started, user came back, user unsubscribed)--> expired

1. **Plan.** `plan` inserts a row per new key (ON CONFLICT DO NOTHING), claimed by this run
   (`run_id`), and counts the known ones, all in one transaction, and asks the job's brake
   (app/core/safety.py) before it commits: a tripped brake leaves nothing planned.  A dry
   run counts the same keys and asks the same brake.  `resolve_unknown` first settles what
   a dead run left behind (below).
2. **Claim.** `deliver` takes a batch of this run's pending rows (those it planned, plus
   unclaimed ones it claims with a conditional UPDATE on `run_id`, so racing runs get
   disjoint shares).
3. **Send.** The batch goes one message at a time, in ascending id order, over one mail
   connection.  Before each SMTP end-of-data mark the sender writes the message's id into
   its hand-over cursor (app/mail/handover.py): the run's `cron_job_log.mail_cursor`, or,
   for a send chunk (one id range of the run's messages; a run's chunks go side by side on
   queue workers), that chunk's `cron_run_chunk.mail_cursor`, which only the chunk's
   latest attempt may move (`mail_owner`).  The write is conditional on the run still
   being `running` (or `partial`, its chunks in the queue): committed before the server
   can take the message, and refused once the runner has closed the run as abandoned, so
   a run declared dead cannot hand over one more message.  Every outcome other than a 250
   (refused, reply lost, not taken) is written before the cursor moves on.
4. **Settle.** The 250s are written for the whole batch in one statement when it ends
   (`_settle`).  A process that fails without dying (an exception, SIGTERM) settles its
   batch itself.

So after a crash, a batch is read off its cursor `C`: its still-`pending` rows below `C`
(within the chunk's range, for a chunk's cursor) had their 250 (`sent`), `C` was in
flight (`unconfirmed`: it may or may not have been taken), and the rows above `C` were
never handed over (sent by the chunk's next attempt, or released and sent by the next
run).  A chunk's next attempt reads its cursor before it sends (`_take_chunk`); the next
run reads a dead run's cursors, its chunks' and its own (`resolve_unknown`).

That is **at-most-once**: in the one ambiguous window (cursor committed, reply not yet
read) we prefer a possibly-missing reminder, made visible, over a duplicate in a user's
inbox.  The window is one message of one SMTP transaction per crash, and it is reported:
an `unconfirmed` row makes the run end as `warning`.

The module runs a little over 400 lines on purpose: the rule and every statement that
enforces it stay together.  Bulk SQL that only makes planning fast is app/mail/ledger.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.core import chunks
from app.core.context import JobContext
from app.core.errors import JobRefused
from app.core.status import JobStatus, RunStatus
from app.db import table_of
from app.mail import ledger
from app.mail.compose import NotificationMessages
from app.mail.handover import Handover, Lane, handover_log
from app.mail.ledger import notifications as notifications  # the table, for callers
from app.mail.recipients import valid_address
from app.mail.smtp import Claim, Mailer, MailTransport
from app.models import CronJobLog, CronRunChunk

job_log = table_of(CronJobLog)
chunk_t = table_of(CronRunChunk)

DELIVERED = ("sent", "unconfirmed")
# Messages per batch: one claiming read and one settling write each.
CLAIM_BATCH = 1000
# A run stops claiming new messages once this share of its time budget is spent, leaving
# the rest `pending` for the next run instead of being killed mid-batch.
BUDGET_SHARE = 0.9
# Messages per batch inside a chunk: the chunk looks at its invocation's time between them.
CHUNK_BATCH = 200
UNCONFIRMED_NOTE = ("outcome unknown: the run stopped while handing the message to the mail "
                    "server; presumed delivered, not sent again")


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
    withdrawn: int = 0  # pending when the user unsubscribed: expired, not sent
    taken_by_other_run: int = 0  # left when this run was closed as abandoned under it
    left_pending: int = 0
    errors: list[str] = field(default_factory=list)
    # Wall time per step, for operators (and the benchmark) to see where a run goes.
    timings_ms: dict[str, int] = field(default_factory=dict)

    def timed(self, step: str, started: float) -> None:
        self.timings_ms[step] = (self.timings_ms.get(step, 0)
                                 + int((time.perf_counter() - started) * 1000))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["errors"] = self.errors[:20]
        return out


# --- planning ------------------------------------------------------------------------------


# Asked once planning is counted, before it commits: raises (app/core/safety.py's
# BrakeTripped) to leave nothing planned.
BrakeCheck = Callable[[Tally], None]


def plan(ctx: JobContext, kind: str, planned: Iterable[Planned], tally: Tally,
         brake: BrakeCheck | None = None, *, count_only: bool = False) -> None:
    """Insert a `pending` row per new key (batched, ON CONFLICT DO NOTHING); count the rest.

    One transaction for the whole plan, so that `brake`, asked with the counts before the
    commit, can undo it all.  New rows are claimed by this run from the start (`run_id`),
    so sending them costs no claiming write; if the run dies, the next one releases them.
    A dry run (or `count_only`: a run that decides its brake before planning) only looks
    the keys up, and asks the same brake.
    """
    started = time.perf_counter()
    engine = ctx.engine
    look_only = ctx.dry_run or count_only
    with engine.connect() if look_only else engine.begin() as conn:
        for chunk in ledger.chunks(planned, min(ctx.settings.batch_size, 1000)):
            if look_only:
                known = ledger.statuses(conn, [item.key for item in chunk])
                tally.new += len(chunk) - len(known)
            else:
                rows = [{"dedupe_key": item.key, "user_id": item.user_id,
                         "recipient": item.recipient, "trip_id": item.trip_id,
                         "reference_date": item.reference_date,
                         "payload": {**item.payload, "language": item.language}}
                        for item in chunk]
                inserted = ledger.insert_planned(conn, kind, rows, ctx.now, ctx.run_id)
                tally.new += len(inserted)
                rest = [item.key for item in chunk if item.key not in inserted]
                known = ledger.statuses(conn, rest) if rest else []
            for status in known:
                if status in DELIVERED:
                    tally.already_sent += 1
                elif status == "failed":
                    tally.already_failed += 1
                elif status == "pending":
                    tally.resumed += 1  # a run stopped early, or a racing run planned it
        if brake is not None:
            brake(tally)
    tally.timed("plan", started)


def expire(ctx: JobContext, kind: str, stale: sa.ColumnElement[bool], tally: Tally, *,
           reason: str = "no longer relevant when it could be sent",
           withdrawn: bool = False) -> None:
    """Unclaimed pending rows that no longer make sense (`stale`) become `expired`.

    Counted as `expired` (a message that should have gone and did not: the run ends as
    `warning`), or as `withdrawn` when the user no longer wants it (not a problem).
    """
    condition = sa.and_(notifications.c.kind == kind, notifications.c.status == "pending",
                        notifications.c.run_id.is_(None), stale)
    if ctx.dry_run:
        with ctx.engine.connect() as conn:
            count = int(conn.execute(
                sa.select(sa.func.count()).select_from(notifications).where(condition)
            ).scalar_one())
    else:
        with ctx.engine.begin() as conn:
            count = conn.execute(
                notifications.update().where(condition).values(
                    status="expired", updated_at=ctx.now, error=reason)
            ).rowcount
    if withdrawn:
        tally.withdrawn += count
    else:
        tally.expired += count


# --- settling a batch ----------------------------------------------------------------------


def _settle(conn: Connection, run_id: uuid.UUID, *, kind: str | sa.ScalarSelect[Any],
            sent_below: int | None, in_flight: int | None, release: bool,
            sent_at: dt.datetime, now: dt.datetime, lane: Lane | None = None,
            first: int | None = None) -> int:
    """Write the outcome of `run_id`'s batch (of `kind`) and clear its cursor; the number
    of rows it made `unconfirmed`.

    `sent_below`: its pending rows with a lower id (from `first`, the start of a send
    chunk's range, when the batch is one chunk's) had their 250.  `in_flight`: that row
    may or may not have been taken.  `release`: the run is gone; its other pending rows
    were never handed over and go back to any run.  `lane`: a chunk's cursor (cleared
    only while its attempt `owner` holds it) rather than the run's.
    """
    c = notifications.c
    mine = sa.and_(c.run_id == run_id, c.status == "pending")
    unconfirmed = 0
    if sent_below is not None:
        conn.execute(
            notifications.update().where(mine, c.kind == kind, c.id < sent_below,
                                         sa.true() if first is None else c.id >= first)
            .values(status="sent", sent_at=sent_at, attempts=c.attempts + 1, updated_at=now))
    if in_flight is not None:
        unconfirmed = conn.execute(
            notifications.update().where(mine, c.id == in_flight)
            .values(status="unconfirmed", attempts=c.attempts + 1, updated_at=now,
                    error=UNCONFIRMED_NOTE)
        ).rowcount
    if release:
        conn.execute(notifications.update().where(mine).values(run_id=None, updated_at=now))
    if lane is None or lane.seq is None:
        conn.execute(job_log.update().where(job_log.c.run_id == run_id)
                     .values(mail_cursor=None))
    else:
        conn.execute(chunk_t.update()
                     .where(chunk_t.c.run_id == run_id, chunk_t.c.seq == lane.seq,
                            sa.true() if lane.owner is None
                            else chunk_t.c.mail_owner == lane.owner)
                     .values(mail_cursor=None))
    return unconfirmed


def _chunk_cursors(conn: Connection, run_id: uuid.UUID, now: dt.datetime, sent_at: dt.datetime
                   ) -> int:
    """Settle the send chunks of a stopped run `run_id` off their own cursors, each within
    its range; the number of rows made `unconfirmed`."""
    unconfirmed = 0
    c = notifications.c
    for seq, cursor, args in conn.execute(
            sa.select(chunk_t.c.seq, chunk_t.c.mail_cursor, chunk_t.c.args)
            .where(chunk_t.c.run_id == run_id, chunk_t.c.mail_cursor.is_not(None))).all():
        first = (args or {}).get("first")
        unconfirmed += _settle(
            conn, run_id, kind=sa.select(c.kind).where(c.id == cursor).scalar_subquery(),
            sent_below=cursor, in_flight=cursor, release=False, sent_at=sent_at, now=now,
            lane=Lane(run_id, int(seq)), first=None if first is None else int(first))
    return unconfirmed


def _take_chunk(ctx: JobContext, kind: str, seq: int, first: int | None) -> Lane:
    """Send chunk `seq` of this run, taken by a new attempt: what an earlier attempt left
    mid-batch (a process that died, or a worker judged stalled) is settled off the
    chunk's cursor, and the chunk's cursor is this attempt's from now on (an earlier
    attempt still alive can no longer hand a message over)."""
    owner = uuid.uuid4()
    with ctx.engine.begin() as conn:
        cursor = conn.execute(
            sa.select(chunk_t.c.mail_cursor)
            .where(chunk_t.c.run_id == ctx.run_id, chunk_t.c.seq == seq)
            .with_for_update()).scalar()
        if cursor is not None:
            _settle(conn, ctx.run_id, kind=kind, sent_below=cursor, in_flight=cursor,
                    release=False, sent_at=ctx.now, now=ctx.now, lane=Lane(ctx.run_id, seq),
                    first=first)
        conn.execute(chunk_t.update()
                     .where(chunk_t.c.run_id == ctx.run_id, chunk_t.c.seq == seq)
                     .values(mail_owner=owner))
    return Lane(ctx.run_id, seq, owner)


def resolve_unknown(ctx: JobContext, kind: str, tally: Tally, *, light: bool = False
                    ) -> None:
    """Settle what runs no longer running left behind, and this run's interrupted attempt.

    A dead run's batch is read off its hand-over cursor (see the module docstring; the
    cursor row's kind is the batch's) and the rest of its rows are released, as are the
    rows of a run that left no log row at all.  This run's own rows stay claimed: an
    earlier attempt that could not settle its batch left only its cursor to read.

    `light` (each invocation of a chunked run after its first): the stopped runs are found
    from this job's log rows, through the notifications' run index, instead of walking
    every pending row (which the plan and the closing sweep still do).
    """
    if ctx.dry_run:
        return
    c = notifications.c
    gone = ~sa.exists().where(job_log.c.run_id == c.run_id, job_log.c.status == RunStatus.RUNNING)
    with ctx.engine.begin() as conn:
        if light:
            runs = set(conn.execute(
                sa.select(job_log.c.run_id)
                .where(job_log.c.job_name == ctx.task, job_log.c.status != RunStatus.RUNNING,
                       sa.exists().where(c.run_id == job_log.c.run_id, c.kind == kind,
                                         c.status == "pending"))
            ).scalars())
        else:
            runs = set(conn.execute(
                sa.select(c.run_id).distinct()
                .where(c.kind == kind, c.status == "pending", c.run_id.is_not(None), gone)
            ).scalars())
        runs.add(ctx.run_id)
        for run_id in runs:
            log = conn.execute(
                sa.select(job_log.c.mail_cursor, job_log.c.started_at)
                .where(job_log.c.run_id == run_id)
            ).first()
            cursor = log.mail_cursor if log is not None else None
            own = run_id == ctx.run_id
            sent_at = log.started_at if log is not None else ctx.now
            if not own:  # its send chunks first, within their ranges, then the rest
                tally.unconfirmed += _chunk_cursors(conn, run_id, ctx.now, sent_at)
            if own and cursor is None:
                continue
            batch_kind = (sa.select(c.kind).where(c.id == cursor).scalar_subquery())
            unconfirmed = _settle(conn, run_id, kind=batch_kind, sent_below=cursor,
                                  in_flight=cursor, release=not own, sent_at=sent_at,
                                  now=ctx.now)
            if not own:  # this run's own rows are counted by `deliver`
                tally.unconfirmed += unconfirmed


# --- delivering ----------------------------------------------------------------------------


def _claim_batch(conn: Connection, kind: str, run_id: uuid.UUID, now: dt.datetime,
                 after: int, size: int, last: int | None = None
                 ) -> tuple[list[sa.Row[Any]], int | None]:
    """This run's next `size` pending rows with an id above `after`, claiming loose ones.

    Returns the rows, in id order, and the last candidate id (None: nothing left above
    `after`, or up to `last` when given).  Rows this run planned are its own already
    (`plan` inserts them claimed);
    unclaimed ones (left by a run that stopped) are taken by a conditional UPDATE checked
    again on each row as it is updated, so two runs racing for them get disjoint shares.
    The candidates are read first, by an ordered range scan of the pending index, rather
    than inside the UPDATE: PostgreSQL plans `UPDATE … WHERE id IN (SELECT … LIMIT)` as a
    nested loop over the whole pending set when the table's statistics are not yet there
    (right after planning thousands of rows).
    """
    c = notifications.c
    candidates: list[sa.Row[Any]] = [*conn.execute(
        sa.select(c.id, c.run_id, c.dedupe_key, c.user_id, c.recipient, c.payload)
        .where(c.kind == kind, c.status == "pending", c.id > after,
               sa.or_(c.run_id.is_(None), c.run_id == run_id),
               sa.true() if last is None else c.id <= last)
        .order_by(c.id).limit(size)
    )]
    if not candidates:
        return [], None
    loose = [row.id for row in candidates if row.run_id is None]
    won: set[int] = set()
    if loose:
        won = set(conn.execute(
            notifications.update()
            .where(ledger.one_of(conn.dialect, c.id, loose), c.run_id.is_(None),
                   c.status == "pending")
            .values(run_id=run_id, updated_at=now)
            .returning(c.id)
        ).scalars())
    mine = [row for row in candidates if row.run_id == run_id or row.id in won]
    return mine, int(candidates[-1].id)


class _Batch:
    """One claimed batch on its way out: what is known of each message so far."""

    def __init__(self, ctx: JobContext, kind: str, handover: Handover, tally: Tally,
                 lane: Lane, first: int | None) -> None:
        self.ctx = ctx
        self.kind = kind
        self.handover = handover
        self.tally = tally
        self.lane = lane
        self.first = first  # a send chunk's range starts here: what it settles too
        self.last_sent: int | None = None  # the last 250; every pending row below had one
        self.current = 0

    def claim(self) -> Claim:
        return self.handover.claim(self.current)

    def record(self, row_id: int, status: str, detail: str) -> None:
        """A refusal or a lost reply, written before the cursor moves past the row."""
        c = notifications.c
        with self.ctx.engine.begin() as conn:
            conn.execute(
                notifications.update()
                .where(c.id == row_id, c.run_id == self.ctx.run_id, c.status == "pending")
                .values(status=status, error=detail or None, updated_at=self.ctx.now,
                        attempts=c.attempts + 1)
            )

    def settle(self, in_flight: int | None = None) -> None:
        """The batch's outcome; rows it did not reach stay this run's, for its next
        batch or attempt."""
        with self.ctx.engine.begin() as conn:
            _settle(conn, self.ctx.run_id, kind=self.kind,
                    sent_below=None if self.last_sent is None else self.last_sent + 1,
                    in_flight=in_flight, release=False, sent_at=self.ctx.now,
                    now=self.ctx.now, lane=self.lane, first=self.first)


def _send_batch(transport: MailTransport, batch: _Batch, composer: NotificationMessages,
                rows: list[sa.Row[Any]]) -> bool:
    """Send `rows` in order; False when the run lost the right to send (stop)."""
    tally = batch.tally
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        # A row no message can be made for fails alone, before any SMTP exchange (nothing
        # is handed over), instead of stopping the run on it every time.
        if not valid_address(row.recipient):
            batch.record(int(row.id), "failed", "not an address this service can send to")
            tally.errors.append(f"{row.dedupe_key}: not an address this service can send to")
            continue
        try:
            message = composer.take(row)
        except Exception as exc:
            detail = f"the message could not be composed: {type(exc).__name__}: {exc}"[:300]
            batch.record(int(row.id), "failed", detail)
            tally.errors.append(f"{row.dedupe_key}: {detail}")
            continue
        batch.current = int(row.id)
        result = transport.deliver(
            message, batch.claim,
            None if following is None else functools.partial(composer.prepare, following))
        if result.status == "sent":
            batch.last_sent = batch.current
        elif result.status == "rejected":
            batch.record(batch.current, "failed", result.detail)
            tally.errors.append(f"{row.dedupe_key}: {result.detail}")
        elif result.status == "unconfirmed":
            batch.record(batch.current, "unconfirmed", result.detail)
        else:  # lost_claim: the runner closed this run as abandoned; another run takes over
            tally.taken_by_other_run += len(rows) - rows.index(row)
            return False
    return True


def ranges(ctx: JobContext, kind: str, size: int = CLAIM_BATCH) -> list[dict[str, Any]]:
    """The pending rows of `kind` this run may send, as consecutive id ranges of `size`
    rows ({"first": id, "last": id}): the chunks of a mail job's run (app/core/chunks.py).
    One grouped read of the pending index, numbering the rows rather than loading them."""
    c = notifications.c
    numbered = (
        sa.select(c.id, sa.func.row_number().over(order_by=c.id).label("n"))
        .where(c.kind == kind, c.status == "pending",
               sa.or_(c.run_id.is_(None), c.run_id == ctx.run_id))
        .subquery()
    )
    group = ((numbered.c.n - 1) // max(1, size)).label("g")
    with ctx.engine.connect() as conn:
        return [{"first": int(first), "last": int(last)} for _, first, last in conn.execute(
            sa.select(group, sa.func.min(numbered.c.id), sa.func.max(numbered.c.id))
            .group_by(group).order_by(group))]


# A mail job's send stage: chunks of one id range each go side by side (each moves its
# own hand-over cursor), and the closing sweep goes alone, once they are all done.
SEND_STEPS = frozenset({"send"})
MAIL_STEPS = frozenset({"send", "sweep"})


def send_chunks(ctx: JobContext, kind: str, size: int | None = None) -> list[dict[str, Any]]:
    """The send stage of a mail job's run: a chunk per id range of its pending rows
    (`ranges`), then the closing sweep, which sends what is left anywhere (rows that a run
    which died meanwhile released)."""
    spans = ranges(ctx, kind) if size is None else ranges(ctx, kind, size)
    return [*({"step": "send", **span} for span in spans),
            {"step": "sweep", "first": None, "last": None}]


def deliver(ctx: JobContext, kind: str, template: str, tally: Tally,
            mailer: Mailer | None = None, *, first: int | None = None,
            last: int | None = None) -> None:
    """Send every pending row of `kind` this run can claim, over one mail connection; with
    `first` and `last`, those with an id in that range only (one chunk of the run: the
    run's chunks watch its time, so the range is sent whole)."""
    if ctx.dry_run:
        return
    bounded = last is not None
    clock = time.perf_counter()
    mailer = mailer or Mailer(ctx.settings)
    started = time.monotonic()
    budget = ctx.seconds_left(ctx.now)
    transport: MailTransport
    composer = NotificationMessages(mailer, template, kind)
    if not composer.links.configured:  # settings refuse this in production already
        raise JobRefused("UNSUBSCRIBE_SECRET is not set: user emails cannot carry their "
                         "unsubscribe link, so none is sent")
    after, swept = (first - 1 if first is not None else 0), False
    batch_s = 0.0  # the longest batch so far: the next one must fit in the time left
    durable = ctx.settings.mail_durable_claims
    # A send chunk of a run moves its own cursor (the run's chunks send side by side);
    # any other sender, the run's.
    lane = (_take_chunk(ctx, kind, ctx.chunk, first) if bounded and ctx.chunk is not None
            else Lane(ctx.run_id))
    with mailer.connection() as transport, handover_log(ctx.engine, lane,
                                                        durable=durable) as handover:
        while True:
            if (not bounded and budget is not None
                    and time.monotonic() - started > budget * BUDGET_SHARE):
                tally.left_pending += ledger.count_pending(ctx.engine, kind)
                break
            if bounded and after >= (first or 0) and chunks.out_of_time(ctx, batch_s):
                # Between batches, everything settled: the chunk resumes from here.
                raise chunks.OutOfTime
            with ctx.engine.begin() as conn:
                rows, top = _claim_batch(conn, kind, ctx.run_id, ctx.now, after,
                                         CHUNK_BATCH if bounded else CLAIM_BATCH, last)
            if top is None:
                if after == 0 or swept or bounded:
                    break
                # One last sweep from the start: rows released behind the walk (a run that
                # died meanwhile).  Once only, so the loop always ends.
                resolve_unknown(ctx, kind, tally)
                after, swept = 0, True
                continue
            after = top
            if not rows:
                continue  # a racing run took these candidates
            batch = _Batch(ctx, kind, handover, tally, lane, first)
            batch_started = time.monotonic()
            try:
                going_on = _send_batch(transport, batch, composer, rows)
            except BaseException:
                # SIGTERM or a failure: a message the server may hold is unconfirmed, the
                # rest stays pending.  If even that write fails, the next run reads the
                # batch off the cursor.
                with suppress(Exception):
                    batch.settle(in_flight=batch.current if transport.in_doubt else None)
                raise
            batch.settle()
            batch_s = max(batch_s, time.monotonic() - batch_started)
            if not going_on:
                break
    # Across the runner's attempts of this run, not only this attempt's share.
    with ctx.engine.connect() as conn:
        mine: dict[str, int] = dict(conn.execute(
            sa.select(notifications.c.status, sa.func.count())
            .where(notifications.c.run_id == ctx.run_id, notifications.c.kind == kind,
                   sa.true() if first is None else notifications.c.id >= first,
                   sa.true() if last is None else notifications.c.id <= last)
            .group_by(notifications.c.status)
        ).all())
    tally.sent = int(mine.get("sent", 0))
    tally.failed = int(mine.get("failed", 0))
    tally.unconfirmed += int(mine.get("unconfirmed", 0))
    tally.timed("deliver", clock)


# One count or plan chunk of a mail job: (ctx, args, count_only) -> counters.
Screened = Callable[[JobContext, dict[str, Any], bool], dict[str, Any]]


def chunk_steps(kind: str, template: str, screened: Screened) -> tuple[
        Callable[[JobContext, dict[str, Any]], None],
        Callable[[JobContext, dict[str, Any]], dict[str, Any]]]:
    """A mail job's `prepare` and `work` (app/core/chunks.py).  Its run goes in three
    stages (`notes["stage"]`): `count` chunks look the recipients up and write nothing,
    so that the brake is decided on them all; `plan` chunks insert the pending rows; the
    `send` chunks are the id ranges of `ranges` and a closing sweep ({"first": None,
    "last": None}).  `screened(ctx, args, count_only)` is the job's count or plan chunk.

    `prepare`, each invocation of the send stage: settle what a dead run (or this run's
    interrupted attempt) left mid-batch, off its hand-over cursor, before sending again;
    the runs found from the log, not by walking every pending row.  (While counting and
    planning nothing is sent; the step between plan and send settles them with the run's
    tally, their unconfirmed messages counted.)  `work`: one chunk of any stage; a send
    chunk sends the pending rows with an id in its range."""

    def prepare(ctx: JobContext, notes: dict[str, Any]) -> None:
        if notes.get("stage", "send") == "send":
            resolve_unknown(ctx, kind, Tally(), light=True)

    def work(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
        step = args.get("step")
        if step in ("count", "plan"):
            return screened(ctx, args, step == "count")
        tally = Tally()
        deliver(ctx, kind, template, tally, first=args["first"], last=args["last"])
        return {"records": tally.sent, "taken_by_other_run": tally.taken_by_other_run,
                "errors": tally.errors}

    return prepare, work


def tallied(counts: dict[str, Any]) -> Tally:
    """The planning counts of a count or plan chunk's counters, summed, as a Tally."""
    return Tally(new=int(counts.get("new", 0)), resumed=int(counts.get("resumed", 0)),
                 already_sent=int(counts.get("already_sent", 0)),
                 already_failed=int(counts.get("already_failed", 0)))


def planning_counts(tally: Tally) -> dict[str, int]:
    return {"new": tally.new, "resumed": tally.resumed, "already_sent": tally.already_sent,
            "already_failed": tally.already_failed}


def count_run(ctx: JobContext, kind: str, tally: Tally) -> None:
    """The outcome of every message of `kind` this run claimed, across its invocations and
    attempts: what its closing summary reports."""
    c = notifications.c
    with ctx.engine.connect() as conn:
        mine: dict[str, int] = dict(conn.execute(
            sa.select(c.status, sa.func.count())
            .where(c.run_id == ctx.run_id, c.kind == kind).group_by(c.status)).all())
    tally.sent = int(mine.get("sent", 0))
    tally.failed = int(mine.get("failed", 0))
    tally.unconfirmed += int(mine.get("unconfirmed", 0))


def outcome_status(tally: Tally) -> JobStatus:
    """`warning` when a message failed, is unconfirmed, expired or was left for later."""
    troubled = (tally.failed + tally.unconfirmed + tally.expired + tally.left_pending
                + tally.taken_by_other_run)
    return RunStatus.WARNING if troubled else RunStatus.SUCCESS
