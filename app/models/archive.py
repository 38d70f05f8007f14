"""Rows a job removed, kept so that one run's removals can be restored."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, UTCDateTime, UUIDType


class CronArchivedRow(Base):
    """One deleted row of a VoyageSmart table, as it was, with the run that deleted it.

    `row_data` holds every column: PostgreSQL's `to_jsonb(row)`, SQLite's stored values
    (app/core/archive.py writes and reads both, set-based).  `restored_at` is set when
    `voyagesmart-cron restore` put the row back.
    """

    __tablename__ = "cron_archived_row"
    __table_args__ = (
        sa.Index("ix_cron_archived_row_run_id", "run_id"),
        sa.Index("ix_cron_archived_row_archived_at", "archived_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(UUIDType)
    job_name: Mapped[str] = mapped_column(sa.String(64))
    source_table: Mapped[str] = mapped_column(sa.String(128))
    row_key: Mapped[str] = mapped_column(sa.Text)
    row_data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    archived_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    restored_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
