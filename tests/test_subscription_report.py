"""subscription-report: totals by email with a CSV, sent once, archived reports readable."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.jobs.subscription_report import read_report
from app.models import CronMonthlyReport, Subscription
from app.runner import Runner, RunOutcome
from tests.conftest import FixedClock, make_settings
from tests.servers import SmtpSink

NOW = dt.datetime(2026, 12, 1, 4, 0, 10, tzinfo=dt.UTC)
ADMINS = ["ceo@example.com", "cfo@example.com"]


def _at(y: int, m: int, d: int) -> dt.datetime:
    return dt.datetime(y, m, d, 12, tzinfo=dt.UTC)


def _seed(engine: Engine) -> None:
    def sub(tier: str, status: str, created: dt.datetime, canceled: dt.datetime | None = None,
            **extra: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "user_id": uuid.uuid4(), "tier": tier, "status": status,
                "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:12]}",
                "created_at": created, "updated_at": canceled or created,
                "canceled_at": canceled, "cancel_at_period_end": False, **extra}

    rows = [
        sub("premium", "active", _at(2026, 9, 1)),
        sub("premium", "active", _at(2026, 11, 10)),
        sub("ai", "active", _at(2026, 10, 5)),
        sub("ai", "canceled", _at(2026, 8, 1), _at(2026, 11, 15)),
        sub("premium", "trialing", _at(2026, 11, 20), trial_start=_at(2026, 11, 20),
            trial_end=_at(2026, 12, 4)),
        sub("premium", "past_due", _at(2026, 7, 1)),
        sub("premium", "canceled", _at(2026, 6, 1), _at(2026, 10, 20)),
        sub("free", "active", _at(2026, 11, 2)),
    ]
    with engine.begin() as conn:
        conn.execute(Subscription.__table__.insert(), rows)


def _settings(db_url: str, tmp_path: Path, sink: SmtpSink, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"admin_emails": ADMINS,
                              "tier_prices": "premium:4.99:EUR,ai:9.99:EUR", **sink.settings}
    return make_settings(db_url, tmp_path, **{**values, **overrides})


def _run(engine: Engine, settings: Settings, **kwargs: Any) -> RunOutcome:
    runner = Runner(settings, engine, clock=FixedClock(NOW), sleep=lambda _s: None)
    return runner.run("subscription-report", trigger="cli", **kwargs)


def _parts(message: Any) -> tuple[str, str, list[list[str]]]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "subscription-report-2026-11.csv"
    rows = list(csv.reader(io.StringIO(attachment.get_content())))
    return text, html, rows


def test_report_arrives_with_totals_and_csv(engine: Engine, db_url: str, tmp_path: Path,
                                            smtp_sink: SmtpSink) -> None:
    _seed(engine)
    outcome = _run(engine, _settings(db_url, tmp_path, smtp_sink))
    assert outcome.status == "success", outcome.message
    [mail] = smtp_sink.received
    assert sorted(mail.rcpt_tos) == sorted(ADMINS)
    message = mail.message
    assert "2026-11" in message["Subject"] and "19.97 EUR" in message["Subject"]
    text, html, rows = _parts(message)
    assert "active at month end  3 (+0)" in text
    assert "MRR                  19.97 EUR (-5.00)" in text
    assert "net change           +1" in text
    assert "churn rate           0.25" in text
    assert "<strong>19.97 EUR</strong>" in html
    assert rows[0] == ["month", "tier", "metric", "value", "previous_month_value"]
    table = {(r[1], r[2]): (r[3], r[4]) for r in rows[1:]}
    assert table[("premium", "active")] == ("2", "1")
    assert table[("ai", "active")] == ("1", "2")
    assert table[("premium", "trialing")] == ("1", "0")
    assert table[("premium", "past_due")] == ("1", "1")
    assert table[("premium", "new")] == ("2", "0")
    assert table[("ai", "canceled")] == ("1", "0")
    assert table[("premium", "mrr")] == ("9.98", "4.99")
    assert table[("all", "mrr_EUR")] == ("19.97", "24.97")
    assert table[("all", "net_change")] == ("1", "0")
    assert table[("all", "churn_rate")] == ("0.25", "0.25")
    with engine.connect() as conn:
        stored = read_report(conn, "2026-11")
    assert stored is not None and stored["sent_at"] == NOW and not stored["archived"]
    assert stored["data"]["totals"]["mrr"] == {"EUR": "19.97"}


def test_second_run_sends_nothing_unless_forced(engine: Engine, db_url: str,
                                                tmp_path: Path, smtp_sink: SmtpSink) -> None:
    _seed(engine)
    settings = _settings(db_url, tmp_path, smtp_sink)
    _run(engine, settings)
    again = _run(engine, settings)
    assert again.status == "success"
    assert "already sent, not sent again" in again.message
    assert len(smtp_sink.received) == 1
    forced = _run(engine, settings, force=True)
    assert "sent to 2 admin(s)" in forced.message
    assert len(smtp_sink.received) == 2
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(
            CronMonthlyReport.__table__)) == 1


def test_dry_run_sends_and_stores_nothing(engine: Engine, db_url: str, tmp_path: Path,
                                          smtp_sink: SmtpSink) -> None:
    _seed(engine)
    outcome = _run(engine, _settings(db_url, tmp_path, smtp_sink), dry_run=True)
    assert outcome.status == "success"
    assert "would send" in outcome.message
    assert outcome.details["report"]["totals"]["active"] == 3
    assert smtp_sink.received == []
    with engine.connect() as conn:
        assert read_report(conn, "2026-11") is None


def test_without_admins_the_report_is_stored_and_the_run_warns(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    _seed(engine)
    outcome = _run(engine, _settings(db_url, tmp_path, smtp_sink, admin_emails=[]))
    assert outcome.status == "warning"
    assert "ADMIN_EMAILS is empty" in outcome.message
    with engine.connect() as conn:
        stored = read_report(conn, "2026-11")
    assert stored is not None and stored["sent_at"] is None


def test_old_reports_are_archived_and_stay_readable(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def old(month: str) -> dict[str, Any]:
        first = dt.datetime.strptime(month, "%Y-%m").date()
        return {"month": month, "month_start": first, "data": {"month": month, "totals": {}},
                "csv": f"month\n{month}\n", "created_at": NOW, "updated_at": NOW,
                "sent_at": NOW, "archived": False}

    with engine.begin() as conn:
        conn.execute(CronMonthlyReport.__table__.insert(),
                     [old("2024-10"), old("2024-11"), old("2024-12")])
    outcome = _run(engine, _settings(db_url, tmp_path, smtp_sink))
    # Retention 24 months from December 2026: everything before December 2024 goes.
    assert outcome.details["archived"] == 2
    with engine.connect() as conn:
        archived = read_report(conn, "2024-10")
        kept = read_report(conn, "2024-12")
    assert archived is not None and archived["archived"] and archived["archived_at"] == NOW
    assert archived["csv"] == "month\n2024-10\n"
    assert kept is not None and not kept["archived"]

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(cli, ["report", "show", "--month", "2024-10"])
        as_csv = CliRunner().invoke(cli, ["report", "show", "--month", "2024-10", "--csv"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert '"archived": true' in shown.output
    assert as_csv.output == "month\n2024-10\n"
