"""ENGAGEMENT_REQUIRE_CONSENT: re-engagement email only to users whose consent is recorded,
and `voyagesmart-cron consent import` to record it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core.runner import Runner
from tests.conftest import SECRET, FixedClock, make_settings, rows
from tests.support.notification_data import add_people, recipients, user
from tests.support.servers import SmtpSink

RUN = dt.datetime(2026, 12, 1, 5, 0, 40, tzinfo=dt.UTC)
LONG_AGO = RUN - dt.timedelta(days=400)


def _sleepers(engine: Engine, emails: list[str]) -> dict[str, str]:
    people = [user(e, created=LONG_AGO) for e in emails]
    with Session(engine, expire_on_commit=False) as s, s.begin():
        add_people(s, people)
    return {p.email: str(p.id) for p in people}


def _import(db_url: str, tmp_path: Path, csv_text: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "consent.csv"
    source.write_text(csv_text)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET}
    return subprocess.run([sys.executable, "-m", "app", "consent", "import", str(source),
                           "--source", "signup form 2026", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_with_consent_required_only_consenting_users_are_emailed(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    ids = _sleepers(engine, ["yes@example.com", "Also@Example.com", "never-asked@example.com"])
    imported = _import(db_url, tmp_path,
                       f"user_id,granted_at\n{ids['yes@example.com']},2026-03-01T10:00:00Z\n")
    assert imported.returncode == 0, imported.stderr
    by_email = _import(db_url, tmp_path, "email\nalso@example.com\n")
    assert json.loads(by_email.stdout)["recorded"] == 1

    settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                             engagement_require_consent=True)
    outcome = Runner(settings, engine, clock=FixedClock(RUN)).run("user-engagement",
                                                                 trigger="cli")
    assert outcome.status == "success", outcome.message
    assert set(recipients(smtp_sink)) == {"yes@example.com", "Also@Example.com"}
    assert outcome.details["skipped"] == {"no_consent": 1}
    assert outcome.details["skipped_users"]["no_consent"] == [ids["never-asked@example.com"]]
    assert "1 without recorded consent" in outcome.message


def test_consent_import_reports_what_it_could_not_match(engine: Engine, db_url: str,
                                                        tmp_path: Path) -> None:
    ids = _sleepers(engine, ["a@example.com", "b@example.com"])
    csv_text = ("email,user_id,granted_at\n"
                "a@example.com,,\n"
                f",{ids['b@example.com']},2026-01-02\n"
                "stranger@example.com,,\n"
                ",not-a-uuid,\n"
                "a@example.com,,2026-05-05\n")
    dry = _import(db_url, tmp_path, csv_text, "--dry-run")
    assert rows(engine, "SELECT count(*) FROM cron_email_consent") == [(0,)]
    first = _import(db_url, tmp_path, csv_text)
    again = _import(db_url, tmp_path, csv_text)

    assert first.returncode == 1  # two lines recorded nothing: the operator must look
    report = json.loads(first.stdout)
    assert json.loads(dry.stdout) == {**report, "dry_run": True}
    assert report == {"dry_run": False, "lines": 5, "recorded": 2, "already_recorded": 1,
                      "unknown_users": 1, "unknown_user_lines": [4], "invalid": 1,
                      "invalid_lines": [5]}
    assert "stranger" not in first.stdout + first.stderr
    assert json.loads(again.stdout)["recorded"] == 0
    stored = rows(engine, "SELECT user_id, source, granted_at FROM cron_email_consent "
                          "ORDER BY granted_at")
    assert [(str(r[0]).replace("-", ""), r[1]) for r in stored] == [
        (ids["b@example.com"].replace("-", ""), "signup form 2026"),
        (ids["a@example.com"].replace("-", ""), "signup form 2026")]


def test_consent_import_refuses_a_file_without_a_user_column(db_url: str,
                                                             tmp_path: Path) -> None:
    if "postgresql" in db_url:
        pytest.skip("the file is refused before the database is read")
    result = _import(db_url, tmp_path, "name\nAda\n")
    assert result.returncode == 2
    assert "user_id or an email column" in result.stderr
    assert "Traceback" not in result.stderr
