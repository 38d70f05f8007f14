"""One queued chunk, in whichever process takes it; and the closing of its run, once.

`run(...)` works one chunk given only its run id and seq (the procrastinate job's args):

1. The run is read from its log row (task, slot, trigger, when it began).  A run that is
   no longer `running` or `partial` (abandoned, or closed) has nothing left to do here.
2. A chunk already `done` is not run again (a stalled job retried after its chunk was
   marked, a chunk deferred twice).
3. In a call's bounded worker, a chunk that would not fit in the time left goes back to
   the queue (`REQUEUE`), untouched.
4. The job's `prepare`, then the chunk's `work` and its `done` mark, by the same code as an
   inline run (`Chunked.run_chunk`).  Each send chunk of a mail run keeps its own
   hand-over cursor, so a cursor found set when the chunk starts is the batch of an
   earlier attempt whose process died (or was judged stalled): the chunk settles it and
   takes the cursor over before anything is sent again (app/mail/delivery.py), and a
   message in flight in the dead process ends `unconfirmed`, never sent twice.
5. When that was the run's last chunk: `finish_run`.

`finish_run` first asks the job for the run's next stage (`Chunked.next_stage`): when it
has chunks, they are appended and the run goes back to `partial`, for the chain (or the
upkeep) to defer them.

`finish_run` closes a run whose chunks are all done, when no call is driving it (the run is
`partial`: a call that sees its run complete finishes it itself, through the runner).  The
task's lease and the flip of the row from `partial` to `running` are taken in one
transaction; the row count decides who closes, so `finish` runs and the row is closed
once, whoever saw the last chunk done.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import logging
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import budget, chunks, registry
from app.core.budget import BudgetSpent
from app.core.context import JobContext, JobResult
from app.core.errors import JobRefused, TransientError
from app.core.heartbeat import Heartbeat
from app.core.registry import JobSpec
from app.core.requirements import check_job
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLease, CronJobLog, CronRunChunk
from app.observe import alerts
from app.observe.run_marks import JUDGED, mark_run
from app.observe.sentry import report_closed_by_worker

log = logging.getLogger("app.queue")

log_t = table_of(CronJobLog)
chunk_t = table_of(CronRunChunk)
lease_t = table_of(CronJobLease)

# A run whose chunks may still be worked on.
OPEN = (RunStatus.RUNNING, RunStatus.PARTIAL)


class Outcome(enum.StrEnum):
    DONE = "done"  # worked and marked done now
    ALREADY_DONE = "already done"
    CLOSED = "run closed"  # the run ended (abandoned, or closed); nothing to do
    REQUEUE = "requeue"  # not started: no time left in this call, or the job paused it


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def chunked_job(spec: JobSpec) -> chunks.Chunked:
    """The registry's entry of `spec` imports its module on the first run; here the
    module's own `run`, a `Chunked` for a job made of chunks."""
    module = spec.func.__qualname__.rpartition(".")[0]  # app.jobs.<module>
    job = importlib.import_module(module).run
    if not isinstance(job, chunks.Chunked):
        raise TypeError(f"{spec.name} is not made of chunks")
    return job


def context(settings: Settings, engine: Engine, run: Any, spec: JobSpec, *,
            until: float | None) -> JobContext:
    """The run's context for a process that has only its log row."""
    now = _utcnow()
    return JobContext(
        settings=settings, engine=engine, now=now, run_id=run.run_id, task=spec.name,
        slot=run.slot, trigger=run.trigger, deadline=now + spec.max_runtime, until=until,
        origin=run.started_at, log=logging.getLogger(f"app.jobs.{spec.name}"),
        schema=check_job(engine, settings, spec))


def _run_row(engine: Engine, run_id: uuid.UUID) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(log_t.c.run_id, log_t.c.job_name, log_t.c.slot, log_t.c.trigger,
                      log_t.c.started_at, log_t.c.status, log_t.c.checkpoint)
            .where(log_t.c.run_id == run_id)).first()


def run(settings: Settings, engine: Engine, run_id: uuid.UUID, seq: int, *, worker: str,
        until: float | None = None) -> Outcome:
    """Work chunk `seq` of run `run_id` (steps 1-5 of the module docstring).  `until`: the
    end of the calling invocation (time.monotonic()), for a call's bounded worker."""
    row = _run_row(engine, run_id)
    if row is None or row.status not in OPEN:
        return Outcome.CLOSED
    spec = registry.JOBS[row.job_name]
    job = chunked_job(spec)
    with engine.connect() as conn:
        chunk = conn.execute(sa.select(chunk_t.c.args, chunk_t.c.status)
                             .where(chunk_t.c.run_id == run_id, chunk_t.c.seq == seq)).first()
    if chunk is None:
        return Outcome.CLOSED
    ctx = context(settings, engine, row, spec, until=until)
    if chunk.status == chunks.DONE:
        finish_run(settings, engine, run_id)
        return Outcome.ALREADY_DONE
    if until is not None and not chunks.has_room(ctx, chunks.longest_s(ctx)):
        return Outcome.REQUEUE
    with engine.begin() as conn:
        conn.execute(chunk_t.update().where(chunk_t.c.run_id == run_id, chunk_t.c.seq == seq)
                     .values(worker=worker[:200]))
    if job.prepare is not None:
        job.prepare(ctx, dict(row.checkpoint or {}))
    try:
        took = job.run_chunk(ctx, seq, dict(chunk.args))
    except (chunks.OutOfTime, BudgetSpent):
        return Outcome.REQUEUE  # stopped at a safe point: the rest is for the next taker
    log.info("chunk %s of run %s (%s) done in %.1f s by %s", seq, run_id, spec.name, took,
             worker)
    finish_run(settings, engine, run_id)
    return Outcome.DONE


def _take_over(engine: Engine, settings: Settings, run_id: uuid.UUID, now: dt.datetime
               ) -> Any:
    """The complete `partial` run `run_id`, now `running` under its task's lease held by
    this process; None when it is not complete, not partial, or a call holds the task."""
    with engine.connect() as conn, conn.begin() as transaction:
        row = conn.execute(
            sa.select(log_t.c.run_id, log_t.c.job_name, log_t.c.slot, log_t.c.trigger,
                      log_t.c.started_at, log_t.c.status, log_t.c.checkpoint)
            .where(log_t.c.run_id == run_id, log_t.c.status == RunStatus.PARTIAL,
                   log_t.c.chunks_total.is_not(None),
                   log_t.c.chunks_done >= log_t.c.chunks_total)).first()
        if row is None:
            return None
        leased = conn.execute(
            lease_t.update()
            .where(lease_t.c.task == row.job_name,
                   sa.or_(lease_t.c.holder.is_(None), lease_t.c.expires_at <= now))
            .values(holder=run_id, acquired_at=now,
                    expires_at=now + dt.timedelta(seconds=settings.dead_after))).rowcount
        flipped = leased and conn.execute(
            log_t.update().where(log_t.c.run_id == run_id,
                                 log_t.c.status == RunStatus.PARTIAL)
            .values(status=RunStatus.RUNNING, heartbeat_at=now,
                    message="running: closing, every chunk done")).rowcount
        if not flipped:
            transaction.rollback()
            return None
    return row


def finish_run(settings: Settings, engine: Engine, run_id: uuid.UUID) -> bool:
    """Close run `run_id` if every chunk is done and no call drives it; True when this
    process closed it."""
    now = _utcnow()
    row = _take_over(engine, settings, run_id, now)
    if row is None:
        return False
    spec = registry.JOBS[row.job_name]
    clock = time.monotonic()
    details: dict[str, Any]
    status: RunStatus
    with Heartbeat(engine, spec.name, run_id, now, interval=settings.heartbeat_interval,
                   dead_after=settings.dead_after, holds_lease=True):
        try:
            ctx = context(settings, engine, row, spec, until=None)
            job = chunked_job(spec)
            notes = dict(row.checkpoint or {})
            while (stage := job.next_stage(ctx, notes)) is not None:
                notes = stage.notes
                if stage.chunks:
                    _reopen(engine, spec.name, run_id)
                    log.info("run %s of %s: %d chunk(s) of its next stage planned",
                             run_id, spec.name, len(stage.chunks))
                    return False
            result: JobResult = job.finish(ctx, notes, chunks.totals(ctx))
            status, message = RunStatus(result.status), result.message or "done"
            details, records = dict(result.details), result.records_processed
        except JobRefused as exc:  # a brake or a stop at a stage's gate: nothing changed
            status, records, message = RunStatus.ERROR, 0, str(exc)
            details = dict(exc.details)
        except TransientError as exc:  # e.g. Stripe answered none of the run's reads
            status, records, message = RunStatus.ERROR, 0, str(exc)
            details = {"transient": True}
        except Exception as exc:
            log.error("closing run %s of %s failed", run_id, spec.name, exc_info=exc)
            status, records = RunStatus.ERROR, 0
            message = f"closing the run failed: {type(exc).__name__}"
            details = {}
    details["closed_by"] = "queue worker"
    with engine.begin() as conn:
        closed = conn.execute(
            log_t.update().where(log_t.c.run_id == run_id, log_t.c.status == RunStatus.RUNNING)
            .values(status=status, ended_at=_utcnow(), message=message,
                    records_processed=records, details=details,
                    error_details={"error": message} if status == RunStatus.ERROR else None,
                    heartbeat_at=_utcnow())).rowcount
        conn.execute(lease_t.update().where(lease_t.c.task == spec.name,
                                            lease_t.c.holder == run_id)
                     .values(holder=None, expires_at=None))
    log.info("run %s of %s closed %s by a queue worker in %.1f s", run_id, spec.name, status,
             time.monotonic() - clock)
    if closed:
        _judge_and_alert(settings, engine, spec, run_id, status, row.started_at)
    return bool(closed)


def _judge_and_alert(settings: Settings, engine: Engine, spec: JobSpec, run_id: uuid.UUID,
                     status: RunStatus, started_at: dt.datetime) -> None:
    """What a call does after closing its run, for a run a worker closed: its anomaly
    marks (app/observe/run_marks.py), its Sentry check-in (app/observe/sentry.py), and the
    alerts of every job's incident state (app/observe/alerts.py, once across instances).
    A failure here is logged; the run stays closed as it is."""
    try:
        marks = mark_run(engine, spec.name, run_id) if status in JUDGED else []
        report_closed_by_worker(settings, spec, run_id, status,
                                (_utcnow() - started_at).total_seconds(), marks)
        with budget.limited(settings.alert_timeout):
            alerts.check(settings, engine,
                         registry.scheduled(registry.JOBS, settings.schedule_mode), _utcnow())
    except Exception as exc:
        log.warning("after closing run %s of %s: %s", run_id, spec.name, exc, exc_info=exc)


def _reopen(engine: Engine, task: str, run_id: uuid.UUID) -> None:
    """The run taken over by `finish_run` has chunks again: `partial` once more, its
    task's lease released."""
    with engine.begin() as conn:
        conn.execute(log_t.update().where(log_t.c.run_id == run_id,
                                          log_t.c.status == RunStatus.RUNNING)
                     .values(status=RunStatus.PARTIAL, heartbeat_at=_utcnow(),
                             message="partial: the next stage's chunks are queued"))
        conn.execute(lease_t.update().where(lease_t.c.task == task,
                                            lease_t.c.holder == run_id)
                     .values(holder=None, expires_at=None))


def complete_runs(engine: Engine) -> list[uuid.UUID]:
    """`partial` runs whose chunks are all done: left to close when their last chunk's
    process died after its mark, or a call paused just as the last chunk ended."""
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(log_t.c.run_id)
            .where(log_t.c.status == RunStatus.PARTIAL, log_t.c.chunks_total.is_not(None),
                   log_t.c.chunks_done >= log_t.c.chunks_total)).scalars())
