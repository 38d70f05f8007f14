"""Tables for database maintenance and storage cleanup, if any.

Revision ID: svc_0004
Revises: svc_0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "svc_0004"
down_revision: str | Sequence[str] | None = "svc_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
