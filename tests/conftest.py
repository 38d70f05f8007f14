"""Fixtures shared by the suite.

Every test that takes `engine` runs twice: on SQLite (the embedded default) and on the
local PostgreSQL.  With CI=true an unreachable PostgreSQL fails the run instead of
skipping.  Each test gets an empty, fully migrated database.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

os.environ.setdefault("APP_ENV", "test")

from app.config import Settings
from app.core.runner import Runner, RunOutcome
from app.db import Base, auth_database_path, make_engine
from app.ops.migrate import upgrade

SECRET = "test-secret-0123456789-abcdefghijklmnop"
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
PG_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
IN_CI = os.environ.get("CI", "").lower() == "true"


def pg_url(dbname: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def create_pg_database(prefix: str = "vsc_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session (dropped at the end)."""
    problem = _pg_reachable()
    if problem is not None:
        message = f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable: {problem}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    name = create_pg_database()
    engine = make_engine(pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA main.wal_checkpoint(TRUNCATE)")
        conn.exec_driver_sql("PRAGMA auth.wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def copy_sqlite_database(source: Path, target: Path) -> None:
    """Copy a SQLite database with the sibling file that holds its `auth` schema."""
    shutil.copyfile(source, target)
    shutil.copyfile(auth_database_path(str(source)), auth_database_path(str(target)))


_SEEDED: dict[str, list[dict[str, Any]]] = {}


def _truncate_all(engine: Engine) -> None:
    """Empty every table, then put back the rows the migrations seed (the plan catalogue),
    so each test starts from a freshly migrated database."""
    plans = Base.metadata.tables["subscriptions"]
    names = ", ".join(f'"{t.schema or "public"}"."{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        if "plans" not in _SEEDED:
            _SEEDED["plans"] = [dict(r) for r in conn.execute(sa.select(plans)).mappings()]
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        if _SEEDED["plans"]:
            conn.execute(plans.insert(), _SEEDED["plans"])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty, migrated database: SQLite file per test, or the session's PG db."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "test.db"
        copy_sqlite_database(template, target)
        yield f"sqlite:///{target}"
        return
    name: str = request.getfixturevalue("pg_database")
    url = pg_url(name)
    engine = make_engine(url)
    _truncate_all(engine)
    engine.dispose()
    yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def dialect(engine: Engine) -> str:
    return engine.dialect.name


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "app_env": "test",
        "database_url": db_url,
        "cron_secret": SECRET,
        "data_dir": tmp_path / "data",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(dt.datetime(2026, 11, 28, 3, 0, 30, tzinfo=dt.UTC))


@pytest.fixture
def make_client(engine: Engine, settings: Settings, clock: FixedClock
                ) -> Iterator[Callable[..., TestClient]]:
    from app.main import create_app

    clients: list[TestClient] = []

    def factory(**kwargs: Any) -> TestClient:
        app_settings = kwargs.pop("settings", settings)
        app = create_app(app_settings, engine=engine, clock=kwargs.pop("clock", clock), **kwargs)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


class JobRun:
    """The `run_job` fixture: one run of a registered job through the real `Runner`, as
    `voyagesmart-cron run` makes it (trigger `cli`), at the fixed time `at`.

    The run uses the test's own `engine`; a test without one gets an engine on
    `settings.database_url` for this run alone.  A retry's backoff is not slept (pass `sleep`
    to see it).  `expect` asserts the run's status (one, or any of several), naming the run's
    message when it differs.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(self, task: str, settings: Settings, *, at: dt.datetime,
                 engine: Engine | None = None, trigger: str = "cli",
                 sleep: Callable[[float], None] = lambda _s: None,
                 expect: str | tuple[str, ...] | None = None,
                 dry_run: bool = False, force: bool = False) -> RunOutcome:
        own = engine is None and "engine" not in self._request.fixturenames
        if engine is None:
            engine = (make_engine(settings.database_url) if own
                      else self._request.getfixturevalue("engine"))
        try:
            outcome = Runner(settings, engine, clock=FixedClock(at), sleep=sleep).run(
                task, trigger=trigger, dry_run=dry_run, force=force)
        finally:
            if own:
                engine.dispose()
        if expect is not None:
            assert outcome.status in ((expect,) if isinstance(expect, str) else expect), (
                outcome.message)
        return outcome


@pytest.fixture
def run_job(request: pytest.FixtureRequest) -> JobRun:
    return JobRun(request)


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


# Real local servers (aiosmtpd sink, HTTP capture) available to every test module.
from tests.support.servers import http_capture, smtp_sink  # noqa: E402,F401


@pytest.fixture
def without_preconditions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registered job runs even when it has nothing to do (its precondition, which
    would end the run `skipped`, is tested in tests/core/test_preconditions.py)."""
    import dataclasses

    from app.core import registry

    for name, spec in list(registry.JOBS.items()):
        monkeypatch.setitem(registry.JOBS, name, dataclasses.replace(spec, precondition=None))
