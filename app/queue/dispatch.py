"""A call's side of queue mode: defer the run's chunks, then work on them until its budget.

`drive` is what a run made of chunks does in queue mode, once its chunks are planned
(app/core/chunks.py hands over to it):

1. Start the run's chain of chunk jobs (app/queue/broker.py) when it has no live job: at
   its first call, or at a later one after a job failed for good.
2. Work as a bounded worker: a procrastinate worker in this process, on the `chunks`
   queue, that takes a chunk only while one fits in the time left (the longest chunk so
   far, app/core/chunks.py's rule) and stops once none does.  Whatever else the fleet's
   workers do meanwhile, a deployment with no worker at all still finishes its runs by
   calls alone.
3. The run's chunks all done: back to the call (app/core/chunks.py), which plans the
   run's next stage if it has one or has the runner close the row as for an inline run.
   Time spent with chunks left: `RunPaused`, the call answers 202 `partial` and the
   workers go on (a `partial` run's last chunk closes it: app/queue/chunk_job.py).
   A chunk whose job failed for good (its retries spent): `ChunkFailed`, the run ends
   `error` rather than waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import procrastinate

from app.core import chunks
from app.core.context import JobContext
from app.queue import broker


class ChunkFailed(RuntimeError):
    """A chunk's job failed for good while this call waited on the run."""


# How often a call waiting on chunks in other workers' hands looks at its run.
WATCH_S = 0.2


def drive(ctx: JobContext) -> bool:
    """Steps 1-3 of the module docstring, for the run of `ctx`: True when it had chunks
    left to wait on."""
    return asyncio.run(_drive(ctx))


async def _drive(ctx: JobContext) -> bool:
    app = broker.make_app(ctx.settings, pool_size=2)
    async with app.open_async():
        first = await asyncio.to_thread(broker.next_chunks, ctx.engine, ctx.run_id)
        await broker.defer_chunks(app, ctx.run_id, first, ctx.settings)
        env = broker.Env(ctx.settings, ctx.engine, broker.worker_name("call"), ctx.until)
        waited = False
        while True:
            progress = await asyncio.to_thread(chunks.progress, ctx.engine, ctx.run_id)
            if progress.left <= 0:
                return waited
            waited = True
            longest = await asyncio.to_thread(chunks.longest_s, ctx)
            if env.full.is_set() or not chunks.has_room(ctx, longest):
                raise chunks.RunPaused(progress)
            await _work_a_while(app, env, ctx)
            stranded = await asyncio.to_thread(broker.next_chunk, ctx.engine, ctx.run_id)
            if stranded is not None:
                # A chunk left pending with no job to run it: its job gave up after its
                # retries.  The run ends `error` now rather than wait for ever.
                raise ChunkFailed(f"chunk {stranded} of the run failed after "
                                  f"{broker.CHUNK_ATTEMPTS} attempts in the queue; its "
                                  "errors are in the workers' logs")


async def _work_a_while(app: procrastinate.App, env: broker.Env, ctx: JobContext) -> None:
    """Take chunks until none is free, or none fits; at most WATCH_S when none is free
    (the run's next chunk is in another worker's hands)."""
    started = time.monotonic()
    worker = asyncio.create_task(app.run_worker_async(
        name=env.name, queues=[broker.CHUNKS], wait=False, listen_notify=False,
        install_signal_handlers=False, concurrency=1, delete_jobs="successful",
        update_heartbeat_interval=broker.HEARTBEAT_S,
        stalled_worker_timeout=broker.STALLED_AFTER_S, additional_context={"env": env}))
    while not worker.done() and not env.full.is_set():
        await asyncio.sleep(WATCH_S)
    if not worker.done():
        # A chunk no longer fits: the worker stops taking any (the one in hand ends first).
        worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    if time.monotonic() - started < WATCH_S:
        await asyncio.sleep(WATCH_S)
