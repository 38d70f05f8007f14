"""db-maintenance made of chunks (one per table, one per index, the statistics reset): a
run stopped at every chunk boundary and continued by the next calls ends where a run left
whole ends, on SQLite and PostgreSQL, under one log row; every answer but the last is 202
`partial`."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog, CronRunChunk
from tests.conftest import FixedClock, make_settings, rows
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end

NOW = dt.datetime(2026, 11, 29, 1, 0, 30, tzinfo=dt.UTC)
TASK = "db-maintenance"
INDEX = "ix_history_tier_chunks"

log_t, chunk_t = table_of(CronJobLog), table_of(CronRunChunk)


def _settings(engine: Engine, tmp_path: Path) -> Settings:
    # Only the table this test fills reaches the threshold, whatever else the shared
    # database saw; the invalid index is a candidate whatever its size.
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path,
                         maintenance_lock_timeout=2.0, maintenance_vacuum_min_dead=1000,
                         cron_catch_up=False)


def _wait_for_dead(engine: Engine, table: str, dead: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        if _dead(engine, table) >= dead:
            return
        time.sleep(0.1)
    raise AssertionError(f"{table}: dead tuples never reached {dead}")


def _dead(engine: Engine, table: str) -> int:
    return int(rows(engine, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = :t",
                    t=table)[0][0])


def _fill(engine: Engine) -> None:
    """The same work for each run: dead tuples in subscription_history (and, on
    PostgreSQL, an invalid index left by a failed concurrent build)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 5000) INSERT INTO subscription_history (id, user_id, event_type, "
                "event_timestamp, created_at, details) SELECT printf('%032x', i), "
                "printf('%032x', i), 'payment_succeeded', '2026-01-01 00:00:00', "
                "'2026-01-01 00:00:00', '{\"note\": \"' || hex(randomblob(100)) || '\"}' "
                "FROM n")
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM subscription_history")
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE subscription_history")
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {INDEX}")
        conn.exec_driver_sql(
            "INSERT INTO subscription_history (id, user_id, event_type, event_timestamp, "
            "created_at, tier) SELECT gen_random_uuid(), gen_random_uuid(), "
            "'payment_succeeded', now(), now(), 'premium' FROM generate_series(1, 5000)")
    with (engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
          pytest.raises(sa.exc.IntegrityError)):
        conn.exec_driver_sql(
            f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON subscription_history (tier)")
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM subscription_history")
    _wait_for_dead(engine, "subscription_history", 5000)


def _state(engine: Engine) -> dict[str, Any]:
    """What the maintenance leaves behind."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            return {"free_pages": conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()}
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    return {"dead": _dead(engine, "subscription_history"),
            "index_valid": rows(engine, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                                f"to_regclass('{INDEX}')")[0][0]}


def _report(outcome: RunOutcome) -> dict[str, Any]:
    """The run's report, less what differs between any two runs (durations, sizes)."""
    return {
        "tables": [(t["table"], t["action"], t["status"]) for t in outcome.details["tables"]],
        "indexes": [(i["index"], i["action"], i["status"])
                    for i in outcome.details["indexes"]],
        "steps": [(s["step"], s["status"]) for s in outcome.details["steps"]],
        "gave_up": outcome.details["gave_up"], "errors": outcome.details["errors"],
    }


def _logged(engine: Engine, run_id: Any) -> tuple[Any, ...]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(log_t.c.status, log_t.c.records_processed,
                                     log_t.c.chunks_done, log_t.c.chunks_total)
                           .where(log_t.c.run_id == run_id)).one()
    return tuple(row)


@pytest.fixture
def no_autovacuum(engine: Engine) -> Any:
    """Autovacuum must not do the job's work between the two runs."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "ALTER TABLE subscription_history SET (autovacuum_enabled = false)")
    yield
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE subscription_history RESET (autovacuum_enabled)")
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {INDEX}")


def test_a_run_cut_at_every_chunk_ends_like_a_whole_run(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_autovacuum: None) -> None:
    settings = _settings(engine, tmp_path)
    if engine.dialect.name == "postgresql":
        # Fresh statistics everywhere first: what earlier tests wrote into the shared
        # database (cron_job_log, say) must not be analyzed by one run and not the other.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    _fill(engine)
    whole = Runner(settings, engine, clock=FixedClock(NOW)).run(TASK, trigger="cli")
    assert whole.status == RunStatus.SUCCESS, whole.message
    whole_state = _state(engine)

    _fill(engine)
    cut_everywhere(monkeypatch)
    answers = run_to_the_end(Runner(settings, engine, clock=FixedClock(NOW)), TASK)
    last = answers[-1]
    assert last.status == RunStatus.SUCCESS, last.message

    chunks = 1 if engine.dialect.name == "sqlite" else 3  # table, index, statistics reset
    assert len(answers) == chunks
    assert [a.http_status for a in answers] == [202] * (chunks - 1) + [200]
    assert {a.run_id for a in answers} == {last.run_id}
    assert _state(engine) == whole_state
    if engine.dialect.name == "postgresql":
        assert whole_state == {"dead": 0, "index_valid": True}
    else:
        assert whole_state == {"free_pages": 0}
    assert _report(last) == _report(whole)
    assert last.records_processed == whole.records_processed == (
        1 if engine.dialect.name == "sqlite" else 2)
    assert _logged(engine, last.run_id) == ("success", whole.records_processed, chunks, chunks)
    assert _logged(engine, whole.run_id) == ("success", whole.records_processed, chunks,
                                             chunks)
    with engine.connect() as conn:
        runs = conn.execute(sa.select(sa.func.count()).select_from(log_t)
                            .where(log_t.c.job_name == TASK)).scalar_one()
        done = conn.execute(sa.select(sa.func.count()).select_from(chunk_t)
                            .where(chunk_t.c.run_id == last.run_id,
                                   chunk_t.c.status == "done")).scalar_one()
    assert (runs, done) == (2, chunks)  # one row per run; each chunk done once


def test_a_give_up_stops_the_chunks_left_but_the_statistics_reset(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_autovacuum: None) -> None:
    """Behind a lock the table's chunk gives up: the index chunk of a later invocation
    does nothing, and the run ends `warning` as a whole run would."""
    if engine.dialect.name != "postgresql":
        pytest.skip("lock_timeout is PostgreSQL's")
    settings = _settings(engine, tmp_path).model_copy(update={"maintenance_lock_timeout": 0.3})
    _fill(engine)
    cut_everywhere(monkeypatch)
    holder = engine.connect()
    tx = holder.begin()
    holder.exec_driver_sql("LOCK TABLE subscription_history IN SHARE UPDATE EXCLUSIVE MODE")
    try:
        answers = run_to_the_end(Runner(settings, engine, clock=FixedClock(NOW)), TASK)
    finally:
        tx.rollback()
        holder.close()
    last = answers[-1]
    assert [a.http_status for a in answers] == [202, 202, 200]
    assert last.status == RunStatus.WARNING
    assert "gave up at vacuum-analyze public.subscription_history" in last.message
    assert [(s["step"], s["status"]) for s in last.details["steps"]] == [
        ("vacuum-analyze", "gave-up"), ("vacuum", "not-run"), ("indexes", "not-run"),
        ("reindex-database", "not-run"), ("pg_stat_statements", "skipped")]
    assert last.details["indexes"] == []
    assert _state(engine) == {"dead": 5000, "index_valid": False}
