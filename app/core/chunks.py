"""Runs made of chunks: work that outlives one invocation, and is never done twice.

A job whose work can outgrow one invocation (a serverless function's max duration) is a
`Chunked(plan, work, finish)` in the registry:

1. `plan(ctx) -> Plan`, once per run, at its first invocation: the chunks, each a small
   JSON dict of arguments (a batch of planned messages, a listing page, a key range, one
   table), and notes for the closing summary.  The chunk rows (`cron_run_chunk`) and the
   notes (the log row's `checkpoint`, `chunks_total`) are committed together.
2. `prepare(ctx, notes)`, optional, at the start of every invocation: what must be settled
   before chunks run again (a dead run's mail batch).
3. `work(ctx, args) -> counters`: one chunk, given only the run's context and its own
   arguments, so another process could run it.  Its counters are written on its row in
   the transaction that marks it `done` and advances the log row's `chunks_done` and
   `records_processed` (the counter `records`): a chunk marked done is never run again.
4. `advance(ctx, notes, totals) -> Plan | None`, optional, each time every chunk is done:
   the run's next stage, when its chunks depend on what the done ones found (count the
   recipients, then decide the brake, then plan, then send).  Its chunks are appended to
   the run's, its notes replace the run's, in one transaction; None when the run is
   ready to finish.  It runs where the run is driven: the call, or in queue mode the
   worker that closes the run (app/queue/chunk_job.py), never two at once.
5. `finish(ctx, notes, totals) -> JobResult` once every chunk is done; `totals` are the
   chunks' counters summed (numbers added, lists joined, the rest the last one's).

Between chunks the driver looks at the invocation's time left (`JobContext.until`): when
the next chunk would not fit (the longest chunk of this run so far, plus `MARGIN_S` for
closing the run), it raises `RunPaused`; the runner closes the row `partial`, the call
answers 202, and the next call for the slot continues the same run (app/core/runner.py).
Every invocation starts at least one chunk, so a run always advances.  A chunk whose
work can be stopped safely part-way (a mail batch between messages) checks `out_of_time`
and raises `OutOfTime`: the chunk stays pending and is resumed, never redone.  So does an
outbound call refused for want of time (`BudgetSpent`, app/core/budget.py), raised before
the call is made.

A run whose process died leaves its chunks to the run that takes its slot up (`inherit`):
done chunks stay done, the chunk it had in flight runs again (the job's own once-only
rules, such as the mail claims, make that safe).  A dry run plans and works through every
chunk in memory: it writes no chunk rows and never pauses.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from app.core.budget import BudgetSpent
from app.core.context import JobContext, JobResult
from app.db import table_of
from app.models import CronJobLog, CronRunChunk

chunk_t = table_of(CronRunChunk)
log_t = table_of(CronJobLog)

PENDING, DONE = "pending", "done"
# Seconds of an invocation kept after its last chunk: closing the run, answering the call.
MARGIN_S = 1.0
# A chunk's lists (errors, sample keys) are kept up to this many items in the totals.
LIST_CAP = 50

Counters = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    chunks: Sequence[Counters]
    notes: Counters = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def left(self) -> int:
        return self.total - self.done


class RunPaused(Exception):
    """The invocation's time budget will not fit another chunk: close the run `partial`."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(
            f"partial: {progress.done} of {progress.total} chunks done, {progress.left} "
            "left; the next call for this slot continues the run")
        self.progress = progress


class OutOfTime(Exception):
    """Raised by a job at a safe point inside a chunk once `out_of_time(ctx)`: what the
    chunk did so far is kept by the job's own bookkeeping, the chunk stays pending, and
    the run pauses; the next invocation runs the chunk again from where it stopped."""


def out_of_time(ctx: JobContext, ahead: float = 0.0) -> bool:
    """Would work taking `ahead` seconds more (with a fifth to spare) end past this
    invocation's time for work?  (Never, when it has no budget.)"""
    return ctx.until is not None and time.monotonic() + ahead * 1.2 >= ctx.until


def add(totals: Counters, counters: Counters) -> Counters:
    """Fold one chunk's counters into `totals` (in place; returned for chaining)."""
    for key, value in counters.items():
        seen = totals.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | list | dict):
            totals[key] = value
        elif isinstance(value, int | float):
            totals[key] = (seen if isinstance(seen, int | float) else 0) + value
        elif isinstance(value, list):
            totals[key] = ([*seen] if isinstance(seen, list) else []) + value
            totals[key] = totals[key][:LIST_CAP]
        else:
            totals[key] = add(dict(seen) if isinstance(seen, dict) else {}, value)
    return totals


def split(items: Sequence[Any], size: int) -> list[list[Any]]:
    """`items` in consecutive slices of at most `size` (a plan's usual shape)."""
    size = max(1, size)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Chunked:
    plan: Callable[[JobContext], Plan]
    work: Callable[[JobContext, Counters], Counters]
    finish: Callable[[JobContext, Counters, Counters], JobResult]
    prepare: Callable[[JobContext, Counters], None] | None = None
    advance: Callable[[JobContext, Counters, Counters], Plan | None] | None = None
    # The chunks' `step`s that may run alongside the run's other chunks of that step, on
    # several queue workers at once (app/queue/broker.py); the others go one at a time.
    parallel: frozenset[str] = frozenset()
    # The steps whose chunks hold an SMTP connection: in the queue, no more of them run at
    # once across the fleet than SMTP_MAX_CONNECTIONS (app/queue/broker.py).
    mailing: frozenset[str] = frozenset()

    def alongside(self, args: Counters) -> bool:
        """May this chunk run while others of its run do?"""
        return str(args.get("step")) in self.parallel

    def mails(self, args: Counters) -> bool:
        """Does this chunk send mail?"""
        return str(args.get("step")) in self.mailing

    def __call__(self, ctx: JobContext) -> JobResult:
        if ctx.dry_run:
            return self._rehearse(ctx)
        notes = _notes(ctx)
        if notes is None:
            plan = self.plan(ctx)
            notes = plan.notes
            _save(ctx, plan)
        queued = ctx.settings.execution_mode == "queue"
        if self.prepare is not None and not queued:
            self.prepare(ctx, notes)
        worked = False
        while True:
            if queued:
                # The chunks go to the queue's workers, this call among them (app/queue/).
                from app.queue import dispatch

                worked = dispatch.drive(ctx) or worked
            else:
                worked = self._work_through(ctx, worked)
            if self.advance is None:
                break
            # A stage's gate is set-based and short: it needs only the closing margin.
            if worked and not has_room(ctx, 0.0):
                raise RunPaused(progress(ctx.engine, ctx.run_id))
            stage = self.next_stage(ctx, notes)
            if stage is None:
                break
            notes = stage.notes
        return self.finish(ctx, notes, totals(ctx))

    def _work_through(self, ctx: JobContext, worked: bool) -> bool:
        """Run the pending chunks in order until none is left (True when one ran), or the
        next one would not fit (`RunPaused`)."""
        longest = longest_s(ctx)
        for seq, args in _pending(ctx):
            if worked and not has_room(ctx, longest):
                raise RunPaused(progress(ctx.engine, ctx.run_id))
            try:
                took = self.run_chunk(ctx, seq, args)
            except (OutOfTime, BudgetSpent):
                # BudgetSpent is raised before an outbound call starts: a safe point too.
                raise RunPaused(progress(ctx.engine, ctx.run_id)) from None
            worked = True
            longest = max(longest, took)
        return worked

    def next_stage(self, ctx: JobContext, notes: Counters) -> Plan | None:
        """Every chunk done: the job's next stage, appended to the run (None: finish)."""
        if self.advance is None:
            return None
        stage = self.advance(ctx, notes, totals(ctx))
        if stage is not None:
            _save(ctx, stage, append=True)
        return stage

    def run_chunk(self, ctx: JobContext, seq: int, args: Counters) -> float:
        """Work one chunk and mark it done (whoever runs it: this run's call or a queue
        worker); the seconds it took."""
        started, clock = _utcnow(), time.monotonic()
        counters = self.work(replace(ctx, chunk=seq), args)
        took = time.monotonic() - clock
        _done(ctx, seq, counters, started, took)
        return took

    def _rehearse(self, ctx: JobContext) -> JobResult:
        plan: Plan | None = self.plan(ctx)
        notes: Counters = {}
        if self.prepare is not None and plan is not None:
            self.prepare(ctx, plan.notes)
        totals: Counters = {}
        while plan is not None:
            notes = plan.notes
            for args in plan.chunks:
                add(totals, self.work(ctx, args))
            plan = self.advance(ctx, notes, totals) if self.advance is not None else None
        return self.finish(ctx, notes, totals)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def has_room(ctx: JobContext, longest_s: float) -> bool:
    """Does another chunk, as long as the longest so far, fit in this invocation?"""
    if ctx.until is None:
        return True
    return ctx.until - time.monotonic() > longest_s * 1.2 + MARGIN_S


def _notes(ctx: JobContext) -> Counters | None:
    """The run's plan notes, or None when it has not planned yet."""
    with ctx.engine.connect() as conn:
        row = conn.execute(
            sa.select(log_t.c.chunks_total, log_t.c.checkpoint)
            .where(log_t.c.run_id == ctx.run_id)).first()
    if row is None or row.chunks_total is None:
        return None
    return dict(row.checkpoint or {})


def _save(ctx: JobContext, plan: Plan, *, append: bool = False) -> None:
    """The plan's chunks and notes, committed together: the run's first stage, or (with
    `append`) a next one, numbered after the chunks it has."""
    with ctx.engine.begin() as conn:
        first = 0
        if append:
            first = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(chunk_t.c.seq), -1))
                                     .where(chunk_t.c.run_id == ctx.run_id)).scalar_one()) + 1
        rows = [{"run_id": ctx.run_id, "seq": first + n, "args": args, "status": PENDING,
                 "records": 0} for n, args in enumerate(plan.chunks)]
        for batch in split(rows, 1000):
            conn.execute(chunk_t.insert(), batch)
        total = first + len(rows) if append else len(rows)
        values: dict[str, Any] = {"chunks_total": total, "checkpoint": plan.notes}
        if not append:
            values["chunks_done"] = 0
        conn.execute(log_t.update().where(log_t.c.run_id == ctx.run_id).values(**values))


def _pending(ctx: JobContext) -> list[tuple[int, Counters]]:
    with ctx.engine.connect() as conn:
        return [(int(seq), dict(args)) for seq, args in conn.execute(
            sa.select(chunk_t.c.seq, chunk_t.c.args)
            .where(chunk_t.c.run_id == ctx.run_id, chunk_t.c.status != DONE)
            .order_by(chunk_t.c.seq)).all()]


def longest_s(ctx: JobContext) -> float:
    """The longest chunk of the run so far, in seconds."""
    with ctx.engine.connect() as conn:
        longest = conn.execute(sa.select(sa.func.max(chunk_t.c.duration_ms))
                               .where(chunk_t.c.run_id == ctx.run_id)).scalar()
    return (longest or 0) / 1000


def _done(ctx: JobContext, seq: int, counters: Counters, started: dt.datetime,
          took: float) -> None:
    """Mark the chunk done and advance the run's progress, in one transaction; a chunk
    another process finished first is not counted twice.  A chunk its job marked done
    inside its own transaction (`done_within`) gets its times here."""
    times = {"started_at": started, "ended_at": _utcnow(), "duration_ms": int(took * 1000)}
    with ctx.engine.begin() as conn:
        if not _mark(conn, ctx.run_id, seq, counters, times):
            conn.execute(chunk_t.update()
                         .where(chunk_t.c.run_id == ctx.run_id, chunk_t.c.seq == seq,
                                chunk_t.c.duration_ms.is_(None))
                         .values(**times))


def _mark(conn: sa.Connection, run_id: uuid.UUID, seq: int, counters: Counters,
          times: dict[str, Any]) -> bool:
    records = int(counters.get("records", 0) or 0)
    marked = conn.execute(
        chunk_t.update()
        .where(chunk_t.c.run_id == run_id, chunk_t.c.seq == seq, chunk_t.c.status != DONE)
        .values(status=DONE, records=records, result=counters, **times)
    ).rowcount
    if marked:
        conn.execute(log_t.update().where(log_t.c.run_id == run_id).values(
            chunks_done=log_t.c.chunks_done + 1,
            records_processed=log_t.c.records_processed + records))
    return bool(marked)


def done_within(conn: sa.Connection, ctx: JobContext, counters: Counters) -> None:
    """Mark the chunk being worked (`ctx.chunk`) done in `conn`, the job's own transaction,
    with its counters: for a chunk whose writes are one transaction, so that they commit
    together.  A process that died between the two would leave the writes done and the
    chunk pending: run again, it would find nothing left to do and count nothing, and the
    run's summary would miss what the chunk did.  (Nothing when no chunk is being worked:
    a dry run, or a job called directly.)"""
    if ctx.chunk is not None and not ctx.dry_run:
        _mark(conn, ctx.run_id, ctx.chunk, counters, {})


def totals(ctx: JobContext) -> Counters:
    """The done chunks' counters summed, for `finish`."""
    totals: Counters = {}
    with ctx.engine.connect() as conn:
        for (result,) in conn.execute(
                sa.select(chunk_t.c.result)
                .where(chunk_t.c.run_id == ctx.run_id, chunk_t.c.status == DONE)
                .order_by(chunk_t.c.seq)):
            add(totals, dict(result or {}))
    return totals


def progress(engine: sa.Engine, run_id: uuid.UUID) -> Progress:
    with engine.connect() as conn:
        row = conn.execute(sa.select(log_t.c.chunks_done, log_t.c.chunks_total)
                           .where(log_t.c.run_id == run_id)).first()
    if row is None or row.chunks_total is None:
        return Progress(0, 0)
    return Progress(int(row.chunks_done or 0), int(row.chunks_total))


def inherit(conn: sa.Connection, dead: uuid.UUID, heir: uuid.UUID) -> bool:
    """Give the chunks of `dead` (a run whose process died) to `heir`, the run taking its
    slot up: done chunks stay done, the others are pending again.  False when `dead` had
    not planned."""
    row = conn.execute(sa.select(log_t.c.chunks_total, log_t.c.checkpoint)
                       .where(log_t.c.run_id == dead)).first()
    if row is None or row.chunks_total is None:
        return False
    done = chunk_t.c.status == DONE
    conn.execute(chunk_t.insert().from_select(
        ["run_id", "seq", "args", "status", "records", "result", "started_at", "ended_at",
         "duration_ms"],
        sa.select(sa.literal(heir, chunk_t.c.run_id.type), chunk_t.c.seq, chunk_t.c.args,
                  sa.case((done, DONE), else_=PENDING),
                  sa.case((done, chunk_t.c.records), else_=0),
                  sa.case((done, chunk_t.c.result), else_=sa.null()),
                  chunk_t.c.started_at, chunk_t.c.ended_at, chunk_t.c.duration_ms)
        .where(chunk_t.c.run_id == dead)))
    done_count, records = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(chunk_t.c.records), 0))
        .where(chunk_t.c.run_id == heir, done)).one()
    conn.execute(log_t.update().where(log_t.c.run_id == heir).values(
        chunks_total=row.chunks_total, chunks_done=int(done_count),
        checkpoint=row.checkpoint, records_processed=int(records)))
    return True
