"""On Vercel (VERCEL=1) a function's files do not outlive the invocation: a SQLite database
and the local mail outbox are refused at startup, with one line that says what to use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool

from app.config import ConfigError, load_settings
from app.db import behind_transaction_pooler, make_engine, service_engine
from tests.conftest import pg_url
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "k3-" + "x" * 40
SUPABASE_POOLER = "postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
SQLITE_REFUSED = ("invalid configuration: DATABASE_URL: SQLite loses its data between Vercel "
                  "invocations (VERCEL=1); use a PostgreSQL URL through the Supabase pooler "
                  "(postgres://…pooler.supabase.com:6543/postgres)")
OUTBOX_REFUSED = ("invalid configuration: SMTP_HOST is required on Vercel (VERCEL=1): without "
                  "it email goes to a local .eml outbox, lost after each invocation")

# Every way the service starts: the CLI, uvicorn importing app.main, Vercel's runtime
# loading app/index.py.  None of them gets as far as listening.
WAYS = {
    "cli": lambda port: [sys.executable, "-m", "app", "list"],
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", "app.main:app",
                             "--host", "127.0.0.1", "--port", str(port)],
    "vercel": lambda port: [sys.executable, str(ROOT / "tests" / "support" / "vercel_runtime.py"),
                            str(port)],
}


def _start(way: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT), "VERCEL": "1", "APP_ENV": "production",
            "CRON_SECRET": GOOD_SECRET}
    return subprocess.run(WAYS[way](free_port()), env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def _the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("way", sorted(WAYS))
def test_on_vercel_a_sqlite_database_is_refused_at_startup(way: str, tmp_path: Path) -> None:
    result = _start(way, tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/cron.db")
    assert _the_one_line(result) == SQLITE_REFUSED
    assert not (tmp_path / "cron.db").exists()


@pytest.mark.parametrize("way", sorted(WAYS))
def test_on_vercel_mail_without_smtp_host_is_refused_at_startup(way: str, tmp_path: Path
                                                                ) -> None:
    result = _start(way, tmp_path, DATABASE_URL=SUPABASE_POOLER)
    assert _the_one_line(result) == OUTBOX_REFUSED
    assert not (tmp_path / "data").exists()


def test_the_default_database_is_refused_on_vercel_too() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, vercel=True, app_env="development",
                      smtp_host="smtp.example.com")
    assert str(caught.value) == SQLITE_REFUSED


def test_off_vercel_sqlite_and_the_outbox_stay_allowed() -> None:
    settings = load_settings(_env_file=None, app_env="development")
    assert settings.is_sqlite and settings.smtp_host is None and not settings.vercel


def test_on_vercel_the_engine_keeps_no_pool() -> None:
    settings = load_settings(_env_file=None, vercel=True, app_env="development",
                             smtp_host="smtp.example.com",
                             database_url="postgres://postgres:pw@db.ref.supabase.co:5432/x")
    engine = service_engine(settings)
    assert isinstance(engine.pool, NullPool)


@pytest.mark.parametrize(("url", "declared", "expected"), [
    (SUPABASE_POOLER, "auto", True),
    ("postgres://postgres:pw@aws-0-eu.pooler.supabase.com:5432/postgres", "auto", False),
    ("postgresql+psycopg://u@127.0.0.1:6432/db", "auto", False),
    ("postgresql+psycopg://u@127.0.0.1:6432/db", "transaction", True),
    (SUPABASE_POOLER, "session", False),
    ("sqlite:///./data/x.db", "auto", False),
])
def test_a_transaction_pooler_is_declared_or_known_by_supavisors_port(
        url: str, declared: str, expected: bool) -> None:
    assert behind_transaction_pooler(url, declared) is expected


def test_behind_a_transaction_pooler_nothing_is_prepared_and_nothing_pooled(
        pg_database: str) -> None:
    assert isinstance(make_engine("postgresql+psycopg://u@127.0.0.1:6543/db").pool, NullPool)
    behind = make_engine(pg_url(pg_database), transaction_pooler=True)
    direct = make_engine(pg_url(pg_database))
    try:
        assert isinstance(behind.pool, NullPool) and isinstance(direct.pool, QueuePool)
        assert _prepare_threshold(behind) is None
        assert _prepare_threshold(direct) == 5  # psycopg's default
    finally:
        behind.dispose()
        direct.dispose()


def _prepare_threshold(engine: Engine) -> int | None:
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        return conn.prepare_threshold
    finally:
        raw.close()
