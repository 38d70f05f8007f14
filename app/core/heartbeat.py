"""A live run's heartbeat: proof, renewed from a thread of its own, that its process lives.

Every HEARTBEAT_INTERVAL seconds the thread writes the run's `cron_job_log.heartbeat_at`
and pushes its lease's `expires_at` to DEAD_AFTER past that moment, in one short transaction
of its own connection.  A process that dies (SIGKILL, a platform's timeout, a lost machine)
stops renewing: within DEAD_AFTER its lease is free for the next call (app/core/runner.py)
and `/health` names the run dead (app/core/health.py), however long the job's max runtime.
A run that keeps renewing is alive, even past its max runtime.

The job never writes the rows the heartbeat writes except in short statements (its attempts,
its mail hand-over cursor), so the renewal does not wait on the job's own transactions; on
PostgreSQL a renewal that would wait on a lock gives up at once and the next one tries
again.  SQLite has one writer at a time: a renewal waits for the job's write transaction to
commit, which the jobs keep to batches far shorter than DEAD_AFTER.

The heartbeat's clock is the run's own: the moment the run started (from the runner's
clock) plus the time elapsed since, so a run under a test's fixed clock stays consistent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLease, CronJobLog

log = logging.getLogger("app.core.heartbeat")

lease_t = table_of(CronJobLease)
log_t = table_of(CronJobLog)

# Longest a renewal waits for a row lock on PostgreSQL before it leaves it to the next one.
LOCK_WAIT = 2.0


class Heartbeat:
    """`with Heartbeat(...):` renews the run's heartbeat until the block ends."""

    def __init__(self, engine: Engine, task: str, run_id: uuid.UUID, started_at: dt.datetime,
                 *, interval: float, dead_after: float, holds_lease: bool) -> None:
        self.engine = engine
        self.task = task
        self.run_id = run_id
        self.interval = interval
        self.dead_after = dt.timedelta(seconds=dead_after)
        self.holds_lease = holds_lease
        self._started_at = started_at
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat {task}",
                                        daemon=True)
        self.beats = 0

    def now(self) -> dt.datetime:
        return self._started_at + dt.timedelta(seconds=time.monotonic() - self._started)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # A renewal in progress ends within its lock wait; a daemon thread never holds
            # the process up if the database hangs.
            self._thread.join(LOCK_WAIT + 1.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.beat():
                return

    def beat(self) -> bool:
        """Renew once; False when the run is no longer `running` (closed under it)."""
        at = self.now()
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = {int(LOCK_WAIT * 1000)}"))
                alive = conn.execute(
                    log_t.update()
                    .where(log_t.c.run_id == self.run_id, log_t.c.status == RunStatus.RUNNING)
                    .values(heartbeat_at=at)
                ).rowcount == 1
                if alive and self.holds_lease:
                    conn.execute(
                        lease_t.update()
                        .where(lease_t.c.task == self.task, lease_t.c.holder == self.run_id)
                        .values(expires_at=at + self.dead_after)
                    )
        except sa_exc.SQLAlchemyError as exc:
            # The next beat tries again; DEAD_AFTER leaves room for a few missed ones.
            log.warning("heartbeat of run %s of %s not renewed: %s", self.run_id, self.task,
                        type(exc).__name__)
            return True
        if not alive:
            log.warning("run %s of %s was closed under it (found dead); its heartbeat stops",
                        self.run_id, self.task)
            return False
        self.beats += 1
        return True
