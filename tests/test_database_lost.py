"""A database that disappears or loses its schema under a running service is noticed and
answered with a short 503 that says what to do; no command but `migrate` creates one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.db import make_engine
from tests.conftest import SECRET, auth, create_pg_database, drop_pg_database, pg_url
from tests.support.servers import ROOT, UvicornProcess

pytestmark = pytest.mark.slow

USER, PASSWORD = "ops", "dashboard-password-123"
MIGRATE = "run `voyagesmart-cron migrate`"


def _env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
            "DATA_DIR": str(tmp_path / "data"), "DASHBOARD_USER": USER,
            "DASHBOARD_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=_env(db_url, tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _sqlite_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


@pytest.fixture
def sqlite_db(sqlite_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "service.db"
    shutil.copyfile(sqlite_template, target)
    return target


@pytest.fixture
def pg_db(pg_database: str) -> Iterator[str]:
    name = create_pg_database("vsc_lost")
    engine = make_engine(pg_url(name))
    from app.ops.migrate import upgrade

    upgrade(engine)
    engine.dispose()
    yield pg_url(name)
    drop_pg_database(name)


def _server(db_url: str, tmp_path: Path) -> UvicornProcess:
    return UvicornProcess(_env(db_url, tmp_path), cwd=tmp_path).start()


def _assert_503_saying(response: httpx.Response, words: str) -> None:
    assert response.status_code == 503, response.text
    assert words in response.text, response.text
    assert len(response.text) < 400
    for leak in ("Traceback", 'File "', "sqlite3.", "psycopg", SECRET):
        assert leak not in response.text


def _stopped_output(server: UvicornProcess) -> str:
    """Everything the server logged (its stderr), once it has stopped."""
    server.stop()
    return server.captured


def test_deleting_the_sqlite_file_is_noticed_and_migrate_brings_it_back(
        sqlite_db: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{sqlite_db}"
    server = _server(url, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health").status_code == 200
            assert http.get("/metrics", headers=auth()).status_code == 200
            for path in _sqlite_files(sqlite_db):
                path.unlink()
            health = http.get("/health")
            detailed = http.get("/health", headers=auth())
            metrics = http.get("/metrics", headers=auth())
            dash = http.get("/dashboard/", auth=(USER, PASSWORD))
            cron = http.post("/api/cron/promo-cleanup", headers=auth())
            for response in (health, metrics, dash, cron):
                _assert_503_saying(response, MIGRATE)
            assert health.json()["issues"] == [f"database file missing; {MIGRATE}"]
            assert health.json()["database"] == "missing"
            assert detailed.json()["database"] == "missing"
            assert cron.json()["status"] == "unavailable"
            assert not sqlite_db.exists(), "the service created a database by itself"

            migrate = _cli(url, tmp_path, "migrate")
            assert migrate.returncode == 0, migrate.stderr
            # The service now uses the new file, not the deleted one it had open.
            assert http.get("/health").status_code == 200
            ran = http.post("/api/cron/promo-cleanup", headers=auth())
            assert ran.status_code == 200, ran.text
    finally:
        out = _stopped_output(server)
    assert "Traceback" not in out, out
    # One short log line per failed request, e.g. for /metrics.
    assert len([line for line in out.splitlines() if "GET /metrics" in line]) == 1, out
    engine = make_engine(url, may_create=False)
    with engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT run_id FROM cron_job_log")).scalars().all()
    engine.dispose()
    assert [uuid.UUID(str(r)) for r in logged] == [uuid.UUID(ran.json()["run_id"])]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_that_lost_its_schema_says_run_migrate(
        request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{request.getfixturevalue('sqlite_db')}"
    else:
        url = request.getfixturevalue("pg_db")
    server = _server(url, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health").status_code == 200
            engine = make_engine(url, may_create=False)
            with engine.begin() as conn:
                for table in ("cron_job_log", "cron_job_lease"):
                    conn.execute(sa.text(f"DROP TABLE {table}"))
            engine.dispose()
            health = http.get("/health")
            for response in (health, http.get("/metrics", headers=auth()),
                             http.get("/dashboard/", auth=(USER, PASSWORD)),
                             http.post("/api/cron/promo-cleanup", headers=auth())):
                _assert_503_saying(response, MIGRATE)
            assert health.json()["issues"] == [f"database has no schema; {MIGRATE}"]
    finally:
        out = _stopped_output(server)
    assert "Traceback" not in out, out


def test_commands_do_not_create_a_missing_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "service.db"
    url = f"sqlite:///{db}"
    listing = _cli(url, tmp_path, "list")
    run = _cli(url, tmp_path, "run", "promo-cleanup")
    seed = _cli(url, tmp_path, "seed-demo")
    for result in (listing, run, seed):
        assert result.returncode == 3, result.stdout + result.stderr
        assert MIGRATE in result.stderr
        assert "Traceback" not in result.stderr
        assert "unreachable" not in result.stderr
    assert "never run" not in listing.stdout
    assert "promo-cleanup" in listing.stdout  # the listing itself still shows the jobs
    assert not db.exists() and not db.parent.exists()
    migrate = _cli(url, tmp_path, "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert db.exists()
    assert _cli(url, tmp_path, "list").returncode == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_commands_against_a_database_without_schema_say_run_migrate(
        request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        db = tmp_path / "empty.db"
        sqlite3 = __import__("sqlite3")
        sqlite3.connect(db).close()
        url = f"sqlite:///{db}"
    else:
        request.getfixturevalue("pg_database")
        name = create_pg_database("vsc_noschema")
        request.addfinalizer(lambda: drop_pg_database(name))
        url = pg_url(name)
    for args in (("list",), ("run", "promo-cleanup")):
        result = _cli(url, tmp_path, *args)
        assert result.returncode == 3, result.stderr
        assert f"database has no schema; {MIGRATE}" in result.stderr
        assert "Traceback" not in result.stderr


def test_migrate_into_an_impossible_directory_is_one_line(tmp_path: Path) -> None:
    # /proc refuses new directories even to root.
    result = _cli("sqlite:////proc/vsc-nonexistent/x.db", tmp_path, "migrate")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], result.stderr
    # The service itself starts, and says what is wrong rather than crashing.
    server = _server("sqlite:////proc/vsc-nonexistent/x.db", tmp_path)
    try:
        health = httpx.get(server.url + "/health", timeout=30)
    finally:
        out = _stopped_output(server)
    _assert_503_saying(health, MIGRATE)
    assert json.loads(health.text)["database"] == "missing"
    # And it said so when it started, naming the setting, in one line.
    [said] = [line for line in out.splitlines() if "DATABASE_URL" in line]
    assert "/proc/vsc-nonexistent/x.db does not exist" in said and MIGRATE in said
    assert "Traceback" not in out
