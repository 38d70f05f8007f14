"""Billing and analytics tables (weekly analytics, monthly subscription reports).

Revision ID: svc_0002
Revises: svc_0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "svc_0002"
down_revision: str | Sequence[str] | None = "svc_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
