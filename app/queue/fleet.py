"""What operators see of the queue: the workers alive, and the chunks of each open run.

Read from the database at request time (procrastinate's tables and the run's chunk rows),
in three grouped reads, so any instance answers for the whole fleet.  A chunk is `running`
while its job is held by a worker, `failed` once its job gave up (the next call for the
run starts it again), `waiting` otherwise: its job waits in the queue, or it waits behind
the run's earlier chunks (a chain's chunks go one at a time) or for an SMTP connection.
Nothing on SQLite, or before `migrate` installed the queue.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.queue.broker import STALLED_AFTER_S, TASK_CHUNK


@dataclass(frozen=True)
class RunChunks:
    run_id: uuid.UUID
    task: str
    started_at: dt.datetime
    waiting: int
    running: int
    failed: int
    done: int


@dataclass(frozen=True)
class Fleet:
    workers_alive: int = 0
    runs: list[RunChunks] = field(default_factory=list)
    oldest_waiting_s: float | None = None  # since the oldest run with a chunk waiting began

    @property
    def waiting(self) -> int:
        return sum(r.waiting for r in self.runs)


def installed(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass('procrastinate_jobs')")).scalar() \
            is not None


def read(engine: Engine, now: dt.datetime) -> Fleet | None:
    """The fleet's figures at `now`; None where there is no queue."""
    if not installed(engine):
        return None
    with engine.connect() as conn:
        alive = int(conn.execute(sa.text(
            "SELECT count(*) FROM procrastinate_workers"
            " WHERE last_heartbeat >= now() - make_interval(secs => :stale)"),
            {"stale": STALLED_AFTER_S}).scalar() or 0)
        rows = conn.execute(sa.text(
            # Each chunk's latest job (a chunk retried for time has had several).
            "WITH latest AS (SELECT DISTINCT ON (args->>'run_id', (args->>'seq')::int)"
            " args->>'run_id' AS run, (args->>'seq')::int AS seq, status::text AS status"
            " FROM procrastinate_jobs WHERE task_name = :task"
            " ORDER BY args->>'run_id', (args->>'seq')::int, id DESC)"
            " SELECT l.run_id, l.job_name, l.started_at,"
            " count(*) FILTER (WHERE c.status = 'done') AS done,"
            " count(*) FILTER (WHERE c.status <> 'done' AND j.status = 'doing') AS running,"
            " count(*) FILTER (WHERE c.status <> 'done' AND j.status = 'failed') AS failed,"
            " count(*) FILTER (WHERE c.status <> 'done') AS pending"
            " FROM cron_job_log l JOIN cron_run_chunk c ON c.run_id = l.run_id"
            " LEFT JOIN latest j ON j.run = l.run_id::text AND j.seq = c.seq"
            " WHERE l.status IN ('running', 'partial') AND l.chunks_total IS NOT NULL"
            " GROUP BY l.run_id, l.job_name, l.started_at ORDER BY l.started_at"),
            {"task": TASK_CHUNK}).all()
    runs = [RunChunks(row.run_id, row.job_name, row.started_at,
                      waiting=int(row.pending) - int(row.running) - int(row.failed),
                      running=int(row.running), failed=int(row.failed), done=int(row.done))
            for row in rows]
    waiting_since = [r.started_at for r in runs if r.waiting]
    oldest = (now - min(waiting_since)).total_seconds() if waiting_since else None
    return Fleet(alive, runs, oldest)
