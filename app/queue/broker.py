"""The procrastinate app: its connection, its tasks, and the worker process.

Chunks and the fleet's upkeep go in their own queues, so upkeep never waits behind a
long chunk:

- `chunk(run_id, seq)`, queue `chunks`: one chunk (app/queue/chunk_job.py).  A chunk
  whose step the job lets run alongside others (`Chunked.parallel`) is deferred with the
  rest of its stage at once, its queueing lock its own (`<run>/<seq>`).  The others go
  one at a time, as a chain: a chunk's job, once its chunk is marked done, defers the
  run's next pending chunk, which whichever worker is free takes (a listening worker
  hears of it at once; the one that deferred it is still finishing); their queueing lock
  (the run id) refuses a second waiting job of a run, and their lock (the run id too)
  a second running one.  `next_chunks` says what to defer: at a run's first call, after
  each chunk, when a stage is planned, or after a job failed for good.  Transient
  failures are retried with exponential backoff.
- `upkeep`, queue `upkeep`, every UPKEEP_EVERY_S seconds on the workers: the jobs of a
  worker whose heartbeat stopped (SIGKILL, OOM, a lost machine) go back to the queue, as
  procrastinate's workers never do that themselves; then the runs left complete but open
  are closed.
- `catch-up`, queue `upkeep`, every CATCH_UP_EVERY_S seconds: a missed slot (or a paused
  run nobody continues) is run by a worker, without waiting for a cron call.

A worker heartbeats every HEARTBEAT_S; one silent for STALLED_AFTER_S is dead.  So a
worker killed mid-chunk has its chunk retried within STALLED_AFTER_S + UPKEEP_EVERY_S
(under a minute), by whichever worker is free.

Connections: a worker needs a connection string its session can keep (LISTEN/NOTIFY is
session state).  Behind a transaction pooler (DATABASE_POOLER=transaction, Supabase's
port 6543) nothing is prepared and workers poll every QUEUE_POLLING_INTERVAL instead of
listening.  docs/queue.md
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import uuid
from typing import Any, NamedTuple

import procrastinate
import sqlalchemy as sa
from procrastinate import exceptions as procrastinate_errors
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import registry
from app.db import behind_transaction_pooler, libpq_conninfo
from app.queue import chunk_job

log = logging.getLogger("app.queue")

CHUNKS, UPKEEP = "chunks", "upkeep"
TASK_CHUNK, TASK_UPKEEP, TASK_CATCH_UP = "vsc:chunk", "vsc:upkeep", "vsc:catch-up"
HEARTBEAT_S = 5.0
STALLED_AFTER_S = 20.0
UPKEEP_EVERY_S = 10
# Where workers run, a missed slot is caught up within this long of passing its grace.
CATCH_UP_EVERY_S = 20
# A chunk failing for a passing reason (network, SMTP 4xx, a database restart) is retried
# this many times in all, backing off from EXPONENTIAL_WAIT_S.
CHUNK_ATTEMPTS = 5
EXPONENTIAL_WAIT_S = 2


@dataclasses.dataclass(frozen=True)
class Env:
    """What the tasks need from the process that runs them (procrastinate's
    `additional_context`)."""

    settings: Settings
    engine: Engine
    name: str  # who works: host and process, or the call's bounded worker
    until: float | None = None  # a call's bounded worker: the end of its invocation
    # Set by a call's bounded worker once a chunk no longer fits in the invocation.
    full: threading.Event = dataclasses.field(default_factory=threading.Event)


def worker_name(kind: str = "worker") -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


def conninfo(settings: Settings) -> str:
    return libpq_conninfo(settings.database_url)


def pooled(settings: Settings) -> bool:
    return behind_transaction_pooler(settings.database_url, settings.database_pooler)


async def chunk(context: procrastinate.JobContext, run_id: str, seq: int) -> str:
    env: Env = context.additional_context["env"]
    run = uuid.UUID(run_id)
    outcome = await asyncio.to_thread(chunk_job.run, env.settings, env.engine, run, seq,
                                      worker=env.name, until=env.until)
    if outcome == chunk_job.Outcome.REQUEUE:
        env.full.set()  # a call's bounded worker: no chunk fits any more
        job = context.job
        alongside = job is not None and job.queueing_lock == _lock(run, seq, True)
        await defer_chunk(context.app, run, seq, alongside=alongside,
                          lock=job.lock if job is not None else None)
    elif outcome != chunk_job.Outcome.CLOSED:
        job_id = context.job.id if context.job is not None else None
        following = await asyncio.to_thread(next_chunks, env.engine, run, job_id)
        await defer_chunks(context.app, run, following, env.settings)
    return str(outcome)


async def upkeep_fleet(context: procrastinate.JobContext, timestamp: int) -> None:
    env: Env = context.additional_context["env"]
    manager = context.app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER_S):
        log.warning("job %s (%s %s) stalled: its worker stopped; retried", job.id,
                    job.task_name, job.task_kwargs)
        await manager.retry_job(job)
    for run_id in await asyncio.to_thread(chunk_job.complete_runs, env.engine):
        await asyncio.to_thread(chunk_job.finish_run, env.settings, env.engine, run_id)
        # Closing it may have planned its next stage instead: defer its chunks.
        following = await asyncio.to_thread(next_chunks, env.engine, run_id)
        await defer_chunks(context.app, run_id, following, env.settings)


async def catch_up(context: procrastinate.JobContext, timestamp: int) -> None:
    """One missed slot, or one paused run nobody continues, run by a worker: without
    waiting for another cron call (CRON_CATCH_UP; app/core/catch_up.py decides what, and
    the runner's claim that it runs once)."""
    env: Env = context.additional_context["env"]
    if env.settings.cron_catch_up and env.settings.enable_cron_jobs:
        await asyncio.to_thread(_catch_up_one, env)


def _catch_up_one(env: Env) -> None:
    from app.core import catch_up as catching_up
    from app.core.runner import Runner
    from app.observe.sentry import observers_for

    runner = Runner(env.settings, env.engine, observers=observers_for(env.settings))
    outcome = catching_up.catch_up_one(runner)
    if outcome is not None:
        log.info("caught up %s slot %s: %s", outcome.task, outcome.slot, outcome.status)


def make_app(settings: Settings, *, upkeep: bool = False, pool_size: int = 4
             ) -> procrastinate.App:
    """The procrastinate app on DATABASE_URL; `upkeep`: with the periodic upkeep (a
    worker's app; a call's bounded worker only takes chunks)."""
    kwargs: dict[str, Any] = {"application_name": "voyagesmart-cron queue"}
    if pooled(settings):
        kwargs["prepare_threshold"] = None  # a transaction pooler keeps no prepared statement
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(settings), kwargs=kwargs, min_size=1, max_size=pool_size)
    app = procrastinate.App(connector=connector)
    # A new app registers the task functions anew: each call opens its own app.
    app.task(name=TASK_CHUNK, queue=CHUNKS, pass_context=True,
             retry=procrastinate.RetryStrategy(max_attempts=CHUNK_ATTEMPTS,
                                               exponential_wait=EXPONENTIAL_WAIT_S))(chunk)
    if upkeep:
        task = app.task(name=TASK_UPKEEP, queue=UPKEEP, queueing_lock=TASK_UPKEEP,
                        pass_context=True)(upkeep_fleet)
        app.periodic(cron=f"* * * * * */{UPKEEP_EVERY_S}", periodic_id=TASK_UPKEEP)(task)
        task = app.task(name=TASK_CATCH_UP, queue=UPKEEP, queueing_lock=TASK_CATCH_UP,
                        pass_context=True)(catch_up)
        app.periodic(cron=f"* * * * * */{CATCH_UP_EVERY_S}", periodic_id=TASK_CATCH_UP)(task)
    return app


# The procrastinate job states in which a job is still to run, or running.
LIVE = ("todo", "doing", "aborting")


def _lock(run_id: uuid.UUID, seq: int, alongside: bool) -> str:
    """The job's queueing lock: the run's own for its chain, the chunk's for a chunk that
    runs alongside the others."""
    return f"{run_id}/{seq}" if alongside else str(run_id)


def smtp_lock(seq: int, settings: Settings) -> str:
    """The lock of a chunk that sends mail: one of SMTP_MAX_CONNECTIONS, shared by every
    run's mail chunks on every worker, so that no more chunks hold an SMTP connection at
    once across the fleet (procrastinate runs one job of a lock at a time)."""
    return f"vsc:smtp/{seq % settings.smtp_max_connections}"


class Next(NamedTuple):
    """A chunk to defer: whether it runs alongside the run's others (`Chunked.parallel`)
    and whether it sends mail (`Chunked.mailing`)."""

    seq: int
    alongside: bool
    mailing: bool = False


def next_chunks(engine: Engine, run_id: uuid.UUID, job_id: int | None = None
                ) -> list[Next]:
    """The chunks of run `run_id` to defer now:

    - when the first pending chunk's step runs alongside others: every pending chunk of
      that stretch of such steps that has no live job;
    - else the first pending chunk, when no job of the run other than `job_id` (the
      caller's own) is live: the chain.

    A job whose chunk is already done does not count as live: it is only finishing."""
    with engine.connect() as conn:
        task = conn.execute(sa.select(chunk_job.log_t.c.job_name)
                            .where(chunk_job.log_t.c.run_id == run_id)).scalar()
        pending = conn.execute(sa.select(chunk_job.chunk_t.c.seq, chunk_job.chunk_t.c.args)
                               .where(chunk_job.chunk_t.c.run_id == run_id,
                                      chunk_job.chunk_t.c.status != "done")
                               .order_by(chunk_job.chunk_t.c.seq)).all()
        live = set(conn.execute(sa.text(
            "SELECT j.queueing_lock FROM procrastinate_jobs j WHERE j.task_name = :task"
            " AND j.args->>'run_id' = :run AND j.status::text = ANY(:live)"
            " AND j.id IS DISTINCT FROM :job AND NOT EXISTS (SELECT 1 FROM cron_run_chunk c"
            " WHERE c.run_id = :run_uuid AND c.seq = (j.args->>'seq')::int"
            " AND c.status = 'done')"),
            {"task": TASK_CHUNK, "run": str(run_id), "run_uuid": run_id, "live": list(LIVE),
             "job": job_id}).scalars())
    if not pending or task not in registry.JOBS:
        return []
    job = chunk_job.chunked_job(registry.JOBS[task])
    if job.alongside(dict(pending[0].args)):
        stretch: list[Next] = []
        for seq, args in pending:
            if not job.alongside(dict(args)):
                break
            if _lock(run_id, seq, True) not in live:
                stretch.append(Next(int(seq), True, job.mails(dict(args))))
        return stretch
    seq, args = pending[0]
    return [] if live else [Next(int(seq), False, job.mails(dict(args)))]


def next_chunk(engine: Engine, run_id: uuid.UUID, job_id: int | None = None) -> int | None:
    """The first chunk `next_chunks` would defer (None: none)."""
    found = next_chunks(engine, run_id, job_id)
    return found[0].seq if found else None


async def defer_chunks(app: procrastinate.App, run_id: uuid.UUID, chunks: list[Next],
                       settings: Settings) -> None:
    for seq, alongside, mailing in chunks:
        await defer_chunk(app, run_id, seq, alongside=alongside,
                          lock=smtp_lock(seq, settings) if mailing else None)


async def defer_chunk(app: procrastinate.App, run_id: uuid.UUID, seq: int, *,
                      alongside: bool = False, lock: str | None = None) -> bool:
    """Defer chunk `seq` of run `run_id`; False when it (or, for a chain, the run) has a
    job waiting already.  A chain's jobs also share a procrastinate `lock`, so that two
    of them never run at once (a chunk deferred again while its job still finishes),
    unless given another: a mail chunk's SMTP slot (`smtp_lock`), which serves as well,
    since the same chunk always takes the same slot."""
    options: dict[str, Any] = {"queueing_lock": _lock(run_id, seq, alongside)}
    if lock is not None or not alongside:
        options["lock"] = lock or str(run_id)
    task = app.tasks[TASK_CHUNK].configure(**options)
    try:
        await task.defer_async(run_id=str(run_id), seq=int(seq))
    except procrastinate_errors.AlreadyEnqueued:
        return False
    return True


async def work(settings: Settings, engine: Engine, *, name: str, concurrency: int = 1,
               upkeep: bool = True, install_signal_handlers: bool = True) -> None:
    """Run a worker until it is stopped (SIGINT/SIGTERM: the chunks in hand finish)."""
    app = make_app(settings, upkeep=upkeep, pool_size=concurrency + 3)
    async with app.open_async():
        await app.run_worker_async(
            name=name, queues=[CHUNKS, UPKEEP] if upkeep else [CHUNKS],
            concurrency=concurrency, listen_notify=not pooled(settings),
            fetch_job_polling_interval=settings.queue_polling_interval,
            update_heartbeat_interval=HEARTBEAT_S, stalled_worker_timeout=STALLED_AFTER_S,
            delete_jobs="successful", install_signal_handlers=install_signal_handlers,
            additional_context={"env": Env(settings, engine, name)})
