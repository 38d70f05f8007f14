"""A redemption committed while promo-cleanup deletes its code is never lost (PostgreSQL).

`promo_code_redemptions.promo_code_id` references `promo_codes` ON DELETE CASCADE.  A
redemption inserted after the job judged a code deletable, and committed while the job's
delete waits on the row lock the insert's foreign-key check holds, would be removed with
the code, unseen and unarchived, at READ COMMITTED.  The job deletes at REPEATABLE READ:
PostgreSQL fails that batch instead, the runner retries, and the retry keeps the code.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner, RunOutcome
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock
from tests.jobs.test_promo_cleanup import DAY, NOW, _tables


def _waiting_on_a_lock(dsn: str, deadline: float) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%DELETE FROM promo_codes%'"
            ).fetchone()
            if row is not None and row[0]:
                return True
            time.sleep(0.05)
    return False


def test_a_redemption_committed_during_the_delete_keeps_its_code(
        engine: Engine, settings: Settings, db_url: str) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks and isolation levels: PostgreSQL")
    app = AppWriter(engine)
    user = app.sign_up("late@example.com", at=NOW - 400 * DAY)
    code = app.promo_code("LATE", tier="premium", at=NOW - 500 * DAY,
                          expires_at=NOW - 200 * DAY)
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    outcome: dict[str, Any] = {}
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)

    with psycopg.connect(dsn) as other:
        # Not committed yet: the job judges the code never redeemed.
        other.execute("INSERT INTO promo_code_redemptions (id, promo_code_id, user_id, "
                      "redeemed_at) VALUES (%s, %s, %s, %s)",
                      (uuid.uuid4(), code, user, NOW - DAY))
        job = threading.Thread(target=lambda: outcome.update(
            run=runner.run("promo-cleanup", trigger="cli")))
        job.start()
        try:
            assert _waiting_on_a_lock(dsn, time.monotonic() + 30), "the delete never waited"
        finally:
            other.commit()
            job.join(60)

    run: RunOutcome = outcome["run"]
    assert run.status == "success", run.message
    assert run.attempts == 2  # the batch failed on the concurrent redemption, then retried
    assert run.details["steps"]["codes_deleted"] == 0
    tables = _tables(engine)
    assert [row[1] for row in tables["promo_codes"].values()] == ["LATE"]
    assert [row[1] for row in tables["promo_code_redemptions"].values()] == [code]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cron_archived_row")).scalar() == 0
