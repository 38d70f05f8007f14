"""Tables of the runs: the run log and the per-task leases (app/core/runner.py writes both),
and each job's incident state (app/observe/alerts.py writes it)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType


class CronJobLog(Base):
    """One row per run, written before the job starts and closed whatever happens."""

    __tablename__ = "cron_job_log"
    __table_args__ = (
        sa.Index("ix_cron_job_log_job_started", "job_name", "started_at"),
        sa.Index("ix_cron_job_log_job_slot", "job_name", "slot"),
        sa.Index("ix_cron_job_log_status", "status"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, unique=True)
    job_name: Mapped[str] = mapped_column(sa.String(64))
    slot: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16))
    message: Mapped[str | None] = mapped_column(sa.Text)
    records_processed: Mapped[int] = mapped_column(sa.Integer, default=0)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    dry_run: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The notification this run is handing to the mail server now (app/mail/handover.py).
    mail_cursor: Mapped[int | None] = mapped_column(sa.BigInteger)
    # What was unusual about this run, with figures (app/observe/run_marks.py); NULL: nothing.
    anomalies: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    # Renewed by the live run every HEARTBEAT_INTERVAL; older than DEAD_AFTER: its process
    # is dead (app/core/runner.py).  None on rows written before heartbeats existed.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What the run cost: memory, CPU, database time, outbound calls (app/observe/usage.py).
    resource_usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # A run made of chunks (app/core/chunks.py): how many it planned and finished, and what
    # its plan noted for the closing summary.  NULL on a run of one piece.
    chunks_total: Mapped[int | None] = mapped_column(sa.Integer)
    chunks_done: Mapped[int | None] = mapped_column(sa.Integer)
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # When a later call continued the run (app/core/runner.py): a continued run is stuck
    # only past its max runtime from then (app/core/health.py).
    resumed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    @property
    def duration_ms(self) -> int | None:
        if self.ended_at is None:
            return None
        return int((self.ended_at - self.started_at).total_seconds() * 1000)


class CronRunChunk(Base):
    """One planned piece of a run's work (app/core/chunks.py): its arguments, and once done
    what it did.  A chunk marked `done` is never run again for its run."""

    __tablename__ = "cron_run_chunk"

    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(sa.String(16))
    records: Mapped[int] = mapped_column(sa.Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(sa.Integer)
    # The queue worker that ran it (EXECUTION_MODE=queue, app/queue/): host and process.
    worker: Mapped[str | None] = mapped_column(sa.String(200))
    # A send chunk's mail hand-over cursor, and the attempt that may move it
    # (app/mail/delivery.py): the chunks of one run send side by side.
    mail_cursor: Mapped[int | None] = mapped_column(sa.BigInteger)
    mail_owner: Mapped[uuid.UUID | None] = mapped_column(UUIDType)


class CronJobLease(Base):
    """One row per task; a run holds it while `holder` is set and `expires_at` is ahead.

    The holder pushes `expires_at` to DEAD_AFTER past each heartbeat: a holder that stops
    renewing lets go of it within DEAD_AFTER, whatever the job's max runtime."""

    __tablename__ = "cron_job_lease"

    task: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[uuid.UUID | None] = mapped_column(UUIDType)
    acquired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class CronJobIncident(Base):
    """One row per job that ever left `healthy`: the incident state of app/observe/incidents.py.

    `version` grows with every change; a change is claimed by a conditional UPDATE on the
    version read, so of two instances seeing the same transition one sends the alert.
    """

    __tablename__ = "cron_job_incident"

    task: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    condition: Mapped[str] = mapped_column(sa.String(16))
    since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    alerted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reminded: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    run_id: Mapped[str | None] = mapped_column(sa.String(36))
    version: Mapped[int] = mapped_column(sa.Integer)
    # The last alert sent and what each channel did with it.
    last_alert: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
