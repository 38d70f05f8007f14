"""Connected as a role that row-level security applies to, promo-cleanup refuses in one line
and changes nothing (PostgreSQL: SQLite has no row-level security).

Under RLS such a role sees only what VoyageSmart's policies show it, i.e. nothing
(`auth.uid()` is unset): no redemption history, and, where the redemptions table has the
usual "users see their own rows" policy, no redemption row.  Working on that view, every
redeemed code whose count the app failed to bump looks never-redeemed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from app.core.runner import Runner
from app.db import make_engine
from app.ops.migrate import upgrade
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import (
    PG_ADMIN_DSN,
    FixedClock,
    create_pg_database,
    drop_pg_database,
    make_settings,
    pg_url,
)
from tests.jobs.test_promo_cleanup import DAY, NOW, _bulk_codes, _tables


@pytest.fixture
def rls_role_database(pg_database: str) -> Iterator[tuple[str, str]]:
    """A migrated database with app-written promo data, and a login role that does not
    bypass row-level security, with the privileges Supabase gives its API roles."""
    name = create_pg_database("vsc_promo_rls")
    role = f"vsc_promo_rls_{uuid.uuid4().hex[:8]}"
    engine = make_engine(pg_url(name))
    upgrade(engine)
    app = AppWriter(engine)
    users = [app.sign_up(f"traveller{i}@example.com", at=NOW - 400 * DAY) for i in range(3)]
    for i, user in enumerate(users):  # redeemed long ago, the count RPC failed each time
        code = app.promo_code(f"OLD_REDEEMED{i}", tier="premium", at=NOW - 500 * DAY,
                              expires_at=NOW - 200 * DAY)
        app.redeem(user, code, NOW - 300 * DAY, count_use=False)
    used_up = app.promo_code("USED_UP", tier="ai", at=NOW - 100 * DAY, max_uses=2,
                             expires_at=NOW + 30 * DAY)
    for user in users[:2]:
        app.redeem(user, used_up, NOW - 5 * DAY, count_use=False)
    _bulk_codes(engine, "NEVER", 3, expires_at=NOW - 200 * DAY)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN NOBYPASSRLS")
        conn.exec_driver_sql(f"GRANT authenticated TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA auth TO {role}")
        conn.exec_driver_sql(f"GRANT SELECT ON auth.users TO {role}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    engine.dispose()
    try:
        yield name, role
    finally:
        drop_pg_database(name)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize("redemptions_policy", [False, True])
def test_a_role_under_row_level_security_is_refused_and_nothing_changes(
        rls_role_database: tuple[str, str], tmp_path: Path, redemptions_policy: bool) -> None:
    name, role = rls_role_database
    owner = make_engine(pg_url(name))
    if redemptions_policy:
        with owner.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE promo_code_redemptions ENABLE ROW LEVEL SECURITY")
            conn.exec_driver_sql(
                'CREATE POLICY "Users can view their own redemptions" ON '
                "promo_code_redemptions FOR SELECT USING (auth.uid() = user_id)")
    before = _tables(owner)
    url = pg_url(name).replace("postgres@", f"{role}@")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # what the role sees: no redemption history at all
            assert conn.execute(sa.text("SELECT current_user")).scalar() == role
            assert conn.execute(sa.text("SELECT count(*) FROM subscription_history")
                                ).scalar() == 0
        runner = Runner(make_settings(url, tmp_path), engine, clock=FixedClock(NOW))
        for dry_run in (True, False):
            outcome = runner.run("promo-cleanup", trigger="cli", dry_run=dry_run)
            assert outcome.status == "error" and outcome.attempts == 1
            assert "\n" not in outcome.message
            assert outcome.message.startswith("promo-cleanup cannot run on this database: ")
            assert (f"subscription_history: row-level security is on and role {role} does "
                    "not bypass it" in outcome.message)
            assert ("promo_code_redemptions: row-level security" in outcome.message
                    ) is redemptions_policy
            assert outcome.message.endswith("connect as the `postgres` or service role")
    finally:
        engine.dispose()
    assert _tables(owner) == before
    owner.dispose()
