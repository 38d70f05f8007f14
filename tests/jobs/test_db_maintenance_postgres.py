"""db-maintenance on PostgreSQL: vacuums what bulk deletes left, rebuilds invalid indexes,
handles pg_stat_statements present or not, skips what it may not touch, and gives up
cleanly behind a conflicting lock.  Each test gets its own database (the job looks at the
whole database)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext
from app.core.runner import RunOutcome
from app.db import make_engine
from app.jobs import db_maintenance
from app.ops.migrate import upgrade
from tests.conftest import (
    PG_ADMIN_DSN,
    JobRun,
    _pg_reachable,
    create_pg_database,
    drop_pg_database,
    make_settings,
    pg_url,
    rows,
)
from tests.support.servers import free_port

NOW = dt.datetime(2026, 11, 29, 1, 0, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    problem = _pg_reachable()
    if problem is not None:
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = create_pg_database("vsc_maint_tpl")
    engine = make_engine(pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    drop_pg_database(name)


@pytest.fixture
def pg(template: str) -> Iterator[Engine]:
    name = f"vsc_maint_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    engine = make_engine(pg_url(name))
    with engine.begin() as conn:
        # Autovacuum must not do the job's work behind the test's back.
        for table in ("subscription_history", "trip_media"):
            conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    yield engine
    engine.dispose()
    drop_pg_database(name)


def _settings(engine: Engine, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"maintenance_lock_timeout": 0.3,
                              "maintenance_reindex_min_bytes": 0}
    values.update(overrides)
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path, **values)


def _bulk_history(engine: Engine, total: int, delete: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO subscription_history (id, user_id, event_type, event_timestamp, "
            "created_at) SELECT gen_random_uuid(), gen_random_uuid(), 'payment_succeeded', "
            f"now(), now() FROM generate_series(1, {total})")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DELETE FROM subscription_history WHERE id IN "
            f"(SELECT id FROM subscription_history LIMIT {delete})")
    _wait_for_stats(engine, "subscription_history", delete)


def _wait_for_stats(engine: Engine, table: str, dead: int) -> None:
    """Statistics reach the shared view a moment after commit; wait for them."""
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


def _table(outcome: RunOutcome, name: str) -> dict[str, Any]:
    return next(t for t in outcome.details["tables"] if t["table"] == name)


def _step(outcome: RunOutcome, name: str) -> dict[str, Any]:
    return next(s for s in outcome.details["steps"] if s["step"] == name)


def test_bulk_deletes_are_vacuumed(pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    _bulk_history(pg, total=20_000, delete=15_000)
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert outcome.status == "success", outcome.message
    entry = _table(outcome, "public.subscription_history")
    assert entry["action"] == "vacuum-analyze" and entry["status"] == "done"
    assert entry["before"]["dead_tuples"] >= 15_000
    assert entry["after"]["dead_tuples"] == 0
    assert entry["after"]["live_tuples"] == 5_000
    assert entry["duration_ms"] >= 0
    assert _dead(pg, "subscription_history") == 0
    # Untouched tables are not vacuumed "just in case".
    assert [t["table"] for t in outcome.details["tables"]] == ["public.subscription_history"]
    assert _step(outcome, "reindex-database")["status"] == "skipped"
    # Nothing left to do the second time.
    again = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert again.status == "success" and again.details["tables"] == []


def test_dry_run_reports_and_vacuums_nothing(pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    _bulk_history(pg, total=5_000, delete=4_000)
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg, dry_run=True)
    assert outcome.status == "success", outcome.message
    assert _table(outcome, "public.subscription_history")["status"] == "planned"
    assert outcome.message.startswith("would maintain 1 tables")
    assert _dead(pg, "subscription_history") >= 4_000


def _make_invalid_index(engine: Engine, name: str) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index behind."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO subscription_history (id, user_id, event_type, event_timestamp, "
            "created_at, tier) SELECT gen_random_uuid(), gen_random_uuid(), "
            "'subscription_created', now(), now(), 'premium' "
            "FROM generate_series(1, 3)")
    with (engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
          pytest.raises(sa.exc.IntegrityError)):
        conn.exec_driver_sql(
            f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON subscription_history (tier)")
    assert rows(engine, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                f"'{name}'::regclass")[0][0] is False


def _valid(engine: Engine, name: str) -> bool | None:
    found = rows(engine, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                 "to_regclass(:n)", n=name)
    return bool(found[0][0]) if found else None


def test_invalid_index_is_rebuilt_and_leftover_dropped(pg: Engine, tmp_path: Path,
                                                       run_job: JobRun) -> None:
    _make_invalid_index(pg, "ix_history_tier")
    _make_invalid_index(pg, "ix_subscription_history_user_id_ccnew")
    with pg.begin() as conn:  # the duplicates are gone: a rebuild can now succeed
        conn.exec_driver_sql("DELETE FROM subscription_history")
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert outcome.status == "success", outcome.message
    by_name = {i["index"]: i for i in outcome.details["indexes"]}
    rebuilt = by_name["public.ix_history_tier"]
    assert (rebuilt["action"], rebuilt["status"]) == ("reindex", "done")
    assert rebuilt["before"]["valid"] is False and rebuilt["after"]["valid"] is True
    dropped = by_name["public.ix_subscription_history_user_id_ccnew"]
    assert (dropped["action"], dropped["after"]) == ("drop", {"dropped": True})
    assert _valid(pg, "ix_history_tier") is True
    assert _valid(pg, "ix_subscription_history_user_id_ccnew") is None
    assert _valid(pg, "ix_subscription_history_user_id") is True


def test_an_index_that_cannot_be_rebuilt_is_reported_and_leaves_nothing(
        pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    _make_invalid_index(pg, "ix_history_tier")  # duplicates still there: rebuild fails
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert outcome.status == "warning"
    entry = outcome.details["indexes"][0]
    assert entry["status"] == "error" and "is duplicated" in entry["error"]
    assert rows(pg, "SELECT count(*) FROM pg_class WHERE relname LIKE '%ccnew%'")[0][0] == 0


def test_bloated_index_is_rebuilt(pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    _bulk_history(pg, total=100_000, delete=95_000)
    outcome = run_job("db-maintenance",
                      _settings(pg, tmp_path, maintenance_reindex_bloat_fraction=0.5),
                      at=NOW, engine=pg)
    assert outcome.status == "success", outcome.message
    entry = next(i for i in outcome.details["indexes"]
                 if i["index"] == "public.pk_subscription_history")
    assert entry["reason"].startswith("estimated bloat")
    assert entry["after"]["bytes"] < entry["before"]["bytes"] / 5


def test_without_pg_stat_statements_the_step_is_skipped(pg: Engine, tmp_path: Path,
                                                        run_job: JobRun) -> None:
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert outcome.status == "success"
    assert outcome.details["pg_stat_statements"] == {
        "status": "skipped", "reason": "extension not installed in this database"}


def test_installed_but_not_loaded_pg_stat_statements_is_skipped(
        pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    preload = rows(pg, "SHOW shared_preload_libraries")[0][0]
    if "pg_stat_statements" in preload:
        pytest.skip("this server preloads pg_stat_statements")
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION pg_stat_statements")
    outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert outcome.status == "success"
    step = outcome.details["pg_stat_statements"]
    assert step["status"] == "skipped" and "shared_preload_libraries" in step["reason"]


def test_a_lock_held_too_long_makes_the_run_give_up_cleanly(pg: Engine, tmp_path: Path,
                                                            run_job: JobRun
                                                            ) -> None:
    _bulk_history(pg, total=5_000, delete=4_000)
    _make_invalid_index(pg, "ix_history_tier")
    holder = pg.connect()
    tx = holder.begin()
    holder.exec_driver_sql("LOCK TABLE subscription_history IN SHARE UPDATE EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        outcome = run_job("db-maintenance", _settings(pg, tmp_path, maintenance_lock_timeout=0.3),
                          at=NOW, engine=pg)
        assert time.monotonic() - started < 10
    finally:
        tx.rollback()
        holder.close()
    assert outcome.status == "warning"
    assert "gave up at vacuum-analyze public.subscription_history" in outcome.message
    assert outcome.details["gave_up"]["reason"] == "lock not granted within lock_timeout"
    assert _step(outcome, "indexes")["status"] == "not-run"
    assert outcome.attempts == 1  # a give-up is an answer, not an error to retry
    # Nothing half-done: the table still has its dead tuples, the index is as it was,
    # and no copy of an index was left behind.
    assert _dead(pg, "subscription_history") >= 4_000
    assert _valid(pg, "ix_history_tier") is False
    assert rows(pg, "SELECT count(*) FROM pg_class WHERE relname LIKE '%ccnew%'")[0][0] == 0
    # Once the lock is gone, the next run does the work.
    assert run_job("db-maintenance", _settings(pg, tmp_path), at=NOW,
                   engine=pg).status == "warning"  # duplicates remain


def test_tables_the_role_may_not_maintain_are_skipped_with_the_reason(
        pg: Engine, tmp_path: Path) -> None:
    _bulk_history(pg, total=5_000, delete=4_000)
    role = f"vsc_maint_ro_{uuid.uuid4().hex[:8]}"
    database = pg.url.database
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    limited = make_engine(pg_url(str(database)).replace("postgres@", f"{role}@"))
    try:
        settings = _settings(limited, tmp_path)
        ctx = JobContext(settings=settings, engine=limited, now=NOW, run_id=uuid.uuid4(),
                         task="db-maintenance")
        result = db_maintenance.run(ctx)
    finally:
        limited.dispose()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')
    entry = next(t for t in result.details["tables"]
                 if t["table"] == "public.subscription_history")
    assert entry["status"] == "skipped"
    assert "permission denied" in entry["skipped_reason"] and "postgres" in entry[
        "skipped_reason"]
    assert any(s["object"] == "public.subscription_history" for s in result.details["skipped"])
    assert _dead(pg, "subscription_history") >= 4_000


# --- pg_stat_statements loaded: needs a server started with it preloaded ------------------

_PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _private_server(tmp_path: Path) -> tuple[list[str], Path, int] | None:
    """initdb + pg_ctl a throwaway cluster with pg_stat_statements preloaded, or None."""
    bindir = Path(os.environ.get("TEST_PG_BINDIR", str(_PG_BIN)))
    initdb, pg_ctl = bindir / "initdb", bindir / "pg_ctl"
    if not initdb.exists():
        found = shutil.which("initdb")
        if not found:
            return None
        initdb, pg_ctl = Path(found), Path(found).with_name("pg_ctl")
    prefix: list[str] = []
    datadir = tmp_path / "cluster"
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as `postgres`
        runuser = shutil.which("runuser")
        if runuser is None:
            return None
        prefix = [runuser, "-u", "postgres", "--"]
        datadir = Path("/tmp") / f"vsc-pgss-{uuid.uuid4().hex[:8]}"
        datadir.mkdir()
        shutil.chown(datadir, "postgres", "postgres")
    port = free_port()
    subprocess.run([*prefix, str(initdb), "-D", str(datadir), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*prefix, str(pg_ctl), "-D", str(datadir), "-w", "-l",
                    str(datadir / "log"), "-o",
                    f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 "
                    "-c shared_preload_libraries=pg_stat_statements -c fsync=off",
                    "start"], check=True, capture_output=True)
    return [*prefix, str(pg_ctl), "-D", str(datadir), "-m", "immediate", "stop"], datadir, port


def test_loaded_pg_stat_statements_is_reset_for_this_database(tmp_path: Path) -> None:
    try:
        server = _private_server(tmp_path)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot start a private PostgreSQL with pg_stat_statements: {exc}")
    if server is None:
        pytest.skip("no initdb/pg_ctl to start a PostgreSQL with pg_stat_statements")
    stop, datadir, port = server
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION pg_stat_statements")
            conn.exec_driver_sql("CREATE TABLE t (id int)")
            for _ in range(3):
                conn.exec_driver_sql("SELECT count(*) FROM t")
        settings = make_settings(url, tmp_path)
        ctx = JobContext(settings=settings, engine=engine, now=NOW, run_id=uuid.uuid4(),
                         task="db-maintenance")
        result = db_maintenance.run(ctx)
        step = result.details["pg_stat_statements"]
        assert step["status"] == "reset", step
        # The most expensive statements are kept in the report before the reset.
        assert 0 < len(step["top"]) <= 5
        assert {"query", "calls", "total_ms", "mean_ms", "rows"} <= set(step["top"][0])
        left = rows(engine, "SELECT count(*) FROM pg_stat_statements WHERE query LIKE "
                    "'SELECT count(*) FROM t%'")[0][0]
        assert left == 0
        dry = db_maintenance.run(JobContext(settings=settings, engine=engine, now=NOW,
                                            run_id=uuid.uuid4(), task="db-maintenance",
                                            dry_run=True))
        assert dry.details["pg_stat_statements"]["status"] == "planned"
    finally:
        engine.dispose()
        subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


def test_a_reindex_stopped_by_a_lock_is_finished_by_the_next_run(
        pg: Engine, tmp_path: Path, run_job: JobRun) -> None:
    """REINDEX CONCURRENTLY waits for open writers; past lock_timeout the run gives up, and
    the invalid copy it could not drop while the writer held on is dropped next time."""
    _make_invalid_index(pg, "ix_history_tier")
    with pg.begin() as conn:
        conn.exec_driver_sql("DELETE FROM subscription_history")
    writer = pg.connect()
    tx = writer.begin()
    writer.exec_driver_sql(
        "INSERT INTO subscription_history (id, user_id, event_type, event_timestamp, "
        "created_at) VALUES (gen_random_uuid(), gen_random_uuid(), 'subscription_created', "
        "now(), now())")
    try:
        outcome = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    finally:
        tx.rollback()
        writer.close()
    assert outcome.status == "warning"
    assert outcome.details["gave_up"]["step"] == "reindex"
    assert outcome.details["indexes"][0]["status"] == "gave-up"
    assert _valid(pg, "ix_history_tier") is False  # the original is as it was
    again = run_job("db-maintenance", _settings(pg, tmp_path), at=NOW, engine=pg)
    assert again.status == "success", again.message
    assert _valid(pg, "ix_history_tier") is True
    assert rows(pg, "SELECT count(*) FROM pg_class WHERE relname LIKE '%ccnew%'")[0][0] == 0
