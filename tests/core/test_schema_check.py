"""Can each job run here?  `schema check`, the runner's refusal and /health, from the one
declaration each job makes in the registry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from app.config import get_settings
from app.core.runner import Runner
from app.db import make_engine
from app.ops.cli import cli
from app.ops.migrate import alembic_config, upgrade
from tests.conftest import (
    PG_ADMIN_DSN,
    auth,
    create_pg_database,
    drop_pg_database,
    make_settings,
    pg_url,
    rows,
)


def _check(monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> Result:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, ["schema", "check", *args])
    finally:
        get_settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def imagined_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The shape the service was first built on (`voyagesmart` at vs_0002) plus the
    service's own tables: what a VoyageSmart database is *not*."""
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/imagined.db"
    else:
        request.getfixturevalue("pg_database")
        name = create_pg_database("vsc_imagined")
        url = pg_url(name)
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "vs_0002")
    upgrade(engine, service_only=True)
    engine.dispose()
    yield url
    if name:
        drop_pg_database(name)


def test_the_real_shape_lets_every_job_run(db_url: str, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    result = _check(monkeypatch, db_url, "--ignore-settings")
    assert result.exit_code == 0, result.output
    assert "every job can run here" in result.output
    assert "user_subscriptions [id, user_id, tier, status" in result.output
    # In this shell STRIPE_SECRET_KEY is not set: subscription-sync cannot run.
    with_settings = _check(monkeypatch, db_url, "--json")
    assert with_settings.exit_code == 1
    report = json.loads(with_settings.output)
    assert report["cannot_run"] == ["subscription-sync"]
    assert report["jobs"]["subscription-sync"]["settings"] == [
        "STRIPE_SECRET_KEY is not set (Stripe is not configured)"]


def test_schema_check_names_what_the_imagined_shape_lacks(
        imagined_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _check(monkeypatch, imagined_url, "--ignore-settings")
    assert result.exit_code == 1
    out = result.output
    assert "table user_subscriptions is missing" in out
    assert "promo_codes lacks column(s) tier, max_uses, used_count, expires_at, is_active" in out
    assert "table trip_chat_messages is missing (its files are then protected" in out
    report = json.loads(_check(monkeypatch, imagined_url, "--ignore-settings", "--json")
                        .output)
    assert set(report["cannot_run"]) == {"promo-cleanup", "subscription-sync",
                                         "subscription-expiry", "analytics",
                                         "subscription-report"}
    assert report["jobs"]["db-maintenance"]["can_run"]
    assert report["jobs"]["trip-reminders"]["can_run"]
    assert report["jobs"]["storage-cleanup"]["can_run"]  # its sources are optional
    assert "auth.users" in " ".join(report["jobs"]["user-engagement"]["warnings"])


def test_a_job_whose_tables_do_not_fit_refuses_with_one_line(
        imagined_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(imagined_url)
    try:
        outcome = Runner(make_settings(imagined_url, tmp_path), engine).run(
            "promo-cleanup", trigger="cli")
        assert outcome.status == "error" and outcome.attempts == 1
        assert outcome.message == (
            "promo-cleanup cannot run on this database: promo_codes lacks column(s) tier, "
            "max_uses, used_count, expires_at, is_active, updated_at")
        assert outcome.details["refused"] is True
        assert rows(engine, "SELECT status, message FROM cron_job_log") == [
            ("error", outcome.message)]
        assert "Traceback" not in caplog.text
    finally:
        engine.dispose()


def test_health_lists_the_jobs_that_cannot_run(imagined_url: str, tmp_path: Path) -> None:
    from app.main import create_app

    engine = make_engine(imagined_url)
    try:
        client = TestClient(create_app(make_settings(imagined_url, tmp_path), engine=engine))
        plain = client.get("/health").json()
        assert "cannot_run" not in plain  # details need the secret
        body = client.get("/health", headers=auth()).json()
        assert body["cannot_run"]["subscription-sync"] == (
            "subscription-sync cannot run: STRIPE_SECRET_KEY is not set (Stripe is not "
            "configured)")
        assert body["cannot_run"]["promo-cleanup"].startswith(
            "promo-cleanup cannot run on this database: promo_codes lacks column(s) tier")
        assert "trip-reminders" not in body["cannot_run"]
        client.close()
    finally:
        engine.dispose()


def test_an_unconfigured_integration_answers_one_line(
        make_client: Callable[..., TestClient]) -> None:
    response = make_client().post("/api/cron/subscription-sync", headers=auth())
    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "error" and body["attempts"] == 1
    assert body["message"] == ("subscription-sync cannot run: STRIPE_SECRET_KEY is not set "
                               "(Stripe is not configured)")


def test_production_startup_names_jobs_without_their_settings(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from app.main import create_app

    settings = make_settings(f"sqlite:///{tmp_path}/p.db", tmp_path, app_env="production",
                             smtp_host="smtp.example.com",
                             unsubscribe_secret="unsubscribe-key-0123456789-abcdefghij",
                             service_base_url="https://cron.example.com")
    with caplog.at_level("WARNING", logger="app"):
        create_app(settings)
    lines = [r.getMessage() for r in caplog.records if "cannot run" in r.getMessage()]
    assert lines == [
        "subscription-sync cannot run: STRIPE_SECRET_KEY is not set (Stripe is not configured)",
        "subscription-report cannot run: ADMIN_EMAILS is not set (the report has no "
        "recipients)",
    ]


@pytest.fixture
def rls_database(pg_database: str) -> Iterator[tuple[str, str]]:
    """A migrated database and a login role that does not bypass row-level security,
    with every privilege Supabase gives its API roles."""
    name = create_pg_database("vsc_rls")
    role = f"vsc_rls_{uuid.uuid4().hex[:8]}"
    engine = make_engine(pg_url(name))
    upgrade(engine)
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


def test_row_level_security_that_hides_rows_makes_jobs_refuse(
        rls_database: tuple[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name, role = rls_database
    url = pg_url(name).replace("postgres@", f"{role}@")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # as that role, the tables look empty
            assert conn.execute(sa.text("SELECT current_user")).scalar() == role
        outcome = Runner(make_settings(url, tmp_path), engine).run("trip-reminders",
                                                                   trigger="cli")
        assert outcome.status == "error" and outcome.attempts == 1
        assert outcome.message.startswith("trip-reminders cannot run on this database: ")
        assert (f"trips: row-level security is on and role {role} does not bypass it"
                in outcome.message)
        assert outcome.message.endswith("connect as the `postgres` or service role")
        # promo_codes has no RLS in VoyageSmart, but promo-cleanup reads the redemption
        # history (subscription_history), which has: it refuses too.
        promo = Runner(make_settings(url, tmp_path), engine).run("promo-cleanup",
                                                                 trigger="cli")
        assert promo.status == "error"
        assert promo.message.startswith("promo-cleanup cannot run on this database: "
                                        "subscription_history: row-level security is on")
    finally:
        engine.dispose()
    result = _check(monkeypatch, url, "--ignore-settings", "--json")
    report: dict[str, Any] = json.loads(result.output)
    assert result.exit_code == 1
    assert "trip-reminders" in report["cannot_run"]
    assert "promo-cleanup" in report["cannot_run"]
    users = next(t for t in report["jobs"]["user-engagement"]["tables"]
                 if t["table"] == "users")
    assert users["rls"].startswith(f"row-level security is on and role {role}")
    # The subscription catalogue's policy shows every row to everyone: nothing hidden.
    plans = next(t for t in report["jobs"]["analytics"]["tables"]
                 if t["table"] == "subscriptions")
    assert plans["rls"] is None
