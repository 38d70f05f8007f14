"""Index for the trip-reminder recipient lookup on VoyageSmart's `trip_participants`.

Part of the `voyagesmart` branch, so `migrate --service-only` never applies it to an
existing VoyageSmart database; there an operator creates it without blocking writes (see
README, "Indexes on an existing VoyageSmart database"):

    CREATE INDEX CONCURRENTLY ix_trip_participants_accepted_trip
        ON trip_participants (trip_id, user_id) WHERE invitation_status = 'accepted';

Revision ID: vs_0002
Revises: vs_0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "vs_0002"
down_revision: str | Sequence[str] | None = "vs_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACCEPTED = sa.text("invitation_status = 'accepted'")


def upgrade() -> None:
    op.create_index(
        "ix_trip_participants_accepted_trip",
        "trip_participants",
        ["trip_id", "user_id"],
        unique=False,
        postgresql_where=_ACCEPTED,
        sqlite_where=_ACCEPTED,
    )


def downgrade() -> None:
    op.drop_index("ix_trip_participants_accepted_trip", table_name="trip_participants")
