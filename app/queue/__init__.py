"""Queue mode (EXECUTION_MODE=queue): the chunks of a run shared by workers on any machine.

Built on procrastinate, the PostgreSQL task queue: no server but the database.

- `dispatch`: a call's side.  Once a run has planned its chunks (app/core/chunks.py), its
  first pending chunk is deferred as a procrastinate job (task args: the run id and the
  chunk's seq), then the call works as a bounded worker until its time budget: a
  deployment with no worker (Vercel alone) still finishes its runs, by calls.
- `chunk_job`: one chunk in whichever process takes it, and the closing of a run whose
  last chunk is done, once.
- `broker`: the procrastinate app, its tasks, and `voyagesmart-cron worker`; a periodic
  upkeep that retries the jobs of workers that died (SIGKILL, a lost machine) and closes
  runs no call is left to close.

What stays ours, not the queue's: the per-slot run record and its lease
(app/core/runner.py), since a queueing lock holds only while a job waits; and the
once-only mail claims (app/mail/delivery.py), since a stalled job retried runs its chunk
twice.  The chunks of a stage the job declares independent (`Chunked.parallel`: ranges to
count, plan or send, subscriptions to read or write) go side by side across the workers;
a send chunk moves its own mail hand-over cursor (app/mail/handover.py).  The others go
one at a time, each chunk's job deferring the next once its chunk is done.  The runs of
different tasks go in parallel across the workers.
"""
