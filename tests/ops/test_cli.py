"""`python -m app` (the `voyagesmart-cron` console script) as an operator uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db import make_engine
from app.models import VOYAGESMART_TABLES
from app.ops import deploy
from tests.conftest import SECRET, create_pg_database, drop_pg_database, pg_url, rows

pytestmark = pytest.mark.slow


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (not the suite's migrated one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    request.getfixturevalue("pg_database")  # skips or fails when PostgreSQL is unreachable
    name = create_pg_database("vsc_cli")
    yield pg_url(name)
    drop_pg_database(name)


def test_migrate_service_only_creates_only_service_tables(empty_db_url: str,
                                                          tmp_path: Path) -> None:
    result = _cli(empty_db_url, tmp_path, "migrate", "--service-only")
    assert result.returncode == 0, result.stderr
    assert "service tables only" in result.stdout
    tables = _tables(empty_db_url)
    assert tables, "nothing was created"
    # The service's own: its cron_ tables and, on PostgreSQL, the queue's (procrastinate_).
    assert {t for t in tables if not t.startswith(("cron_", "procrastinate_"))} == set()
    assert {"cron_job_log", "cron_job_lease", "cron_alembic_version"} <= tables


def test_service_only_leaves_an_existing_voyagesmart_database_alone(
    empty_db_url: str, tmp_path: Path
) -> None:
    # An existing VoyageSmart database: its own tables, no service tables, no version table.
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("CREATE SCHEMA auth")  # Supabase's
        for table in VOYAGESMART_TABLES:
            table.create(conn)
    before = {t: [c["name"] for c in sa.inspect(engine).get_columns(t)]
              for t in sa.inspect(engine).get_table_names()}
    engine.dispose()

    assert _cli(empty_db_url, tmp_path, "migrate", "--service-only").returncode == 0
    run = _cli(empty_db_url, tmp_path, "run", "promo-cleanup")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "success"

    engine = make_engine(empty_db_url)
    after = {t: [c["name"] for c in sa.inspect(engine).get_columns(t)]
             for t in sa.inspect(engine).get_table_names() if t in before}
    versions = rows(engine, "SELECT version_num FROM cron_alembic_version")
    engine.dispose()
    assert after == before
    assert all(not v.version_num.startswith("vs_") for v in versions)


def test_list_run_and_dry_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    assert _cli(url, tmp_path, "migrate").returncode == 0
    assert _cli(url, tmp_path, "seed-demo").returncode == 0

    listing = _cli(url, tmp_path, "list")
    assert listing.returncode == 0, listing.stderr
    line = next(x for x in listing.stdout.splitlines() if x.startswith("promo-cleanup"))
    assert "0 3 * * *" in line and "yes" in line and "never run" in line

    dry = _cli(url, tmp_path, "run", "promo-cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    outcome = json.loads(dry.stdout)
    assert (outcome["status"], outcome["dry_run"], outcome["trigger"]) == ("success", True, "cli")
    assert outcome["message"].startswith("would change")
    assert outcome["records_processed"] > 0  # the demo data has work to do

    real = json.loads(_cli(url, tmp_path, "run", "promo-cleanup").stdout)
    assert real["records_processed"] == outcome["records_processed"]
    again = json.loads(_cli(url, tmp_path, "run", "promo-cleanup").stdout)
    assert again["records_processed"] == 0
    # Nothing changed since the real run: its precondition skips the job (issue 16, item 4).
    assert again["status"] == "skipped" and "no promo code changed" in again["message"]

    listing = _cli(url, tmp_path, "list").stdout
    assert "skipped at" in next(x for x in listing.splitlines() if x.startswith("promo-cleanup"))

    unknown = _cli(url, tmp_path, "run", "no-such-task")
    assert unknown.returncode == 2
    assert "unknown task 'no-such-task'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_seed_demo_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/seed.db"
    assert _cli(url, tmp_path, "migrate").returncode == 0
    first = _cli(url, tmp_path, "seed-demo")
    second = _cli(url, tmp_path, "seed-demo")
    assert first.returncode == second.returncode == 0
    assert "users=12" in first.stdout
    engine = make_engine(url)
    counts = rows(engine, "SELECT (SELECT count(*) FROM users) AS users, "
                          "(SELECT count(*) FROM promo_codes) AS codes")
    engine.dispose()
    assert (counts[0].users, counts[0].codes) == (12, 6)


def test_run_against_an_unreachable_database_says_so(tmp_path: Path) -> None:
    from tests.support.servers import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = _cli(url, tmp_path, "run", "promo-cleanup")
    assert result.returncode == 3
    assert "database unreachable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("fmt", ["vercel", "crontab", "github"])
def test_schedule_export_prints_what_deploy_renders(tmp_path: Path, fmt: str) -> None:
    result = _cli(f"sqlite:///{tmp_path}/x.db", tmp_path, "schedule", "export", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == deploy.render(fmt)


def test_schedule_export_unknown_format(tmp_path: Path) -> None:
    result = _cli(f"sqlite:///{tmp_path}/x.db", tmp_path, "schedule", "export", "--format", "k8s")
    assert result.returncode == 2
    assert "unknown format 'k8s'" in result.stderr
