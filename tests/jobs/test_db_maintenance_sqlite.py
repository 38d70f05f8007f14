"""db-maintenance on SQLite: integrity check, analyze, vacuum; the file shrinks after
deletes; a dry run rewrites nothing; a writer holding the lock makes the run give up."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
import uuid
from pathlib import Path

from app.core.context import JobContext
from app.core.runner import RunOutcome
from app.db import make_engine
from app.jobs import db_maintenance
from app.ops.migrate import upgrade
from tests.conftest import JobRun, make_settings

NOW = dt.datetime(2026, 11, 29, 1, 0, 30, tzinfo=dt.UTC)


def _database(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "maint.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
            "INSERT INTO subscription_history (id, user_id, event_type, event_timestamp, "
            "created_at, details) SELECT printf('%032x', i), printf('%032x', i), "
            "'payment_succeeded', '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00', '{\"note\": \"' || hex(randomblob(100)) || '\"}' FROM n")
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM subscription_history")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").close()
    engine.dispose()
    return url, path


def _steps(outcome: RunOutcome) -> dict[str, str]:
    return {s["step"]: s["status"] for s in outcome.details["steps"]}


def test_integrity_check_and_vacuum_shrink_the_file(tmp_path: Path, run_job: JobRun) -> None:
    url, path = _database(tmp_path)
    size_before = os.path.getsize(path)
    outcome = run_job("db-maintenance", make_settings(url, tmp_path, maintenance_lock_timeout=0.3),
                      at=NOW)
    assert outcome.status == "success", outcome.message
    assert _steps(outcome) == {"integrity_check": "done", "analyze": "done",
                               "optimize": "done", "vacuum": "done", "wal_checkpoint": "done"}
    entry = outcome.details["tables"][0]
    assert entry["before"]["free_pages"] > 100
    assert entry["after"]["free_pages"] == 0
    assert entry["after"]["file_bytes"] < entry["before"]["file_bytes"]
    assert os.path.getsize(path) < size_before / 2


def test_dry_run_checks_integrity_and_rewrites_nothing(tmp_path: Path, run_job: JobRun) -> None:
    url, path = _database(tmp_path)
    size_before = os.path.getsize(path)
    outcome = run_job("db-maintenance", make_settings(url, tmp_path, maintenance_lock_timeout=0.3),
                      at=NOW, dry_run=True)
    assert outcome.status == "success", outcome.message
    assert _steps(outcome)["integrity_check"] == "done"
    assert _steps(outcome)["vacuum"] == "planned"
    assert os.path.getsize(path) == size_before


def test_a_writer_holding_the_lock_makes_the_run_give_up(tmp_path: Path) -> None:
    url, path = _database(tmp_path)
    size_before = os.path.getsize(path)
    # The job itself, not through the runner: the runner's own log write would wait for
    # the same lock.
    engine = make_engine(url)
    ctx = JobContext(settings=make_settings(url, tmp_path, maintenance_lock_timeout=0.3),
                     engine=engine, now=NOW, run_id=uuid.uuid4(), task="db-maintenance")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        result = db_maintenance.run(ctx)
        assert time.monotonic() - started < 10
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        engine.dispose()
    assert result.status == "warning", result.message
    assert result.details["gave_up"]["reason"].startswith("database locked")
    assert result.message.startswith("gave up at analyze")
    assert os.path.getsize(path) == size_before
