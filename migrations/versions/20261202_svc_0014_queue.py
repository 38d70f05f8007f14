"""The procrastinate queue (EXECUTION_MODE=queue): its schema, and who ran each chunk.

On PostgreSQL, procrastinate's own schema (tables `procrastinate_*`, their functions,
triggers and types), as the installed package ships it, so that `voyagesmart-cron migrate`
versions it like the rest.  SQLite has no queue: nothing is installed there.
`cron_run_chunk` gains `worker`, the process that ran (or runs) the chunk.

Revision ID: svc_0014
Revises: svc_0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "svc_0014"
down_revision: str | Sequence[str] | None = "svc_0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every object procrastinate's schema creates is named with this prefix.
_PREFIX = "procrastinate"


def upgrade() -> None:
    with op.batch_alter_table("cron_run_chunk") as batch:
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    installed = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
    if installed is not None:  # installed by hand (`procrastinate schema --apply`) before
        return
    from procrastinate.schema import SchemaManager

    # Run as one script (several statements at once); % doubled, as the driver formats it.
    bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Every procrastinate object of the schema, whichever version created it (% doubled:
        # the driver formats the script).
        bind.exec_driver_sql(f"""
            DO $$
            DECLARE item record;
            BEGIN
              FOR item IN SELECT c.relname FROM pg_class c
                          JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = current_schema() AND c.relkind = 'r'
                            AND c.relname LIKE '{_PREFIX}%%' LOOP
                EXECUTE format('DROP TABLE IF EXISTS %%I CASCADE', item.relname);
              END LOOP;
              FOR item IN SELECT p.oid::regprocedure AS signature FROM pg_proc p
                          JOIN pg_namespace n ON n.oid = p.pronamespace
                          WHERE n.nspname = current_schema()
                            AND p.proname LIKE '{_PREFIX}%%' LOOP
                EXECUTE format('DROP FUNCTION IF EXISTS %%s CASCADE', item.signature);
              END LOOP;
              FOR item IN SELECT t.typname FROM pg_type t
                          JOIN pg_namespace n ON n.oid = t.typnamespace
                          WHERE n.nspname = current_schema() AND t.typtype IN ('e', 'c')
                            AND t.typname LIKE '{_PREFIX}%%' LOOP
                EXECUTE format('DROP TYPE IF EXISTS %%I CASCADE', item.typname);
              END LOOP;
            END $$""")
    with op.batch_alter_table("cron_run_chunk") as batch:
        batch.drop_column("worker")
