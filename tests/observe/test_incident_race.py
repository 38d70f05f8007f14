"""Two service processes racing on one database: a job failing three times, then
succeeding, sends exactly one failure alert and one recovery, by mail and by webhook."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.db import table_of
from app.models import CronJobIncident, CronJobLog, PromoCode
from tests.conftest import SECRET, auth, rows
from tests.support.servers import HttpCapture, SmtpSink, UvicornProcess

pytestmark = pytest.mark.slow

BASE = "https://cron.example.com"
PROBES = 6  # /health requests per server and round, released together with the deliveries


def _seed_expired_codes(engine: Engine, n: int) -> None:
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(table_of(PromoCode).insert(), [
            {"id": uuid.uuid4(), "code": f"R{i:04d}", "tier": "premium", "used_count": 0,
             "is_active": True, "expires_at": now - dt.timedelta(days=1), "created_at": now,
             "updated_at": now}
            for i in range(n)
        ])


def _round(servers: list[UvicornProcess]) -> list[httpx.Response]:
    """Deliver the slot to both servers (as Vercel would, twice) while both are probed."""
    calls: list[tuple[str, str, dict[str, str]]] = []
    for server in servers:
        calls.append(("GET", f"{server.url}/api/cron/promo-cleanup",
                      {**auth(), "User-Agent": "vercel-cron/1.0"}))
        calls += [("GET", f"{server.url}/health", {})] * PROBES
    barrier = threading.Barrier(len(calls))

    def call(item: tuple[str, str, dict[str, str]]) -> httpx.Response:
        method, url, headers = item
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            return http.request(method, url, headers=headers)

    with ThreadPoolExecutor(len(calls)) as pool:
        return [r for r in pool.map(call, calls) if "/api/cron/" in str(r.url)]


def _statuses(engine: Engine) -> list[str]:
    return [r.status for r in rows(engine, "SELECT status FROM cron_job_log ORDER BY id")]


def _until(condition: Callable[[], bool], servers: list[UvicornProcess]) -> None:
    for _ in range(8):
        if condition():
            return
        _round(servers)
    raise AssertionError("the rounds never reached the expected state")


def test_three_failures_then_a_success_alert_once_and_recover_once_across_processes(
    db_url: str, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink,
    http_capture: HttpCapture,
) -> None:
    # 50 expired codes and a deactivation brake at 10: every run of the slot trips it.
    _seed_expired_codes(engine, 50)
    env = {"APP_ENV": "test", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "PROMO_CLEANUP_DEACTIVATE_BRAKE_COUNT": "10",
           "SMTP_HOST": smtp_sink.host, "SMTP_PORT": str(smtp_sink.port),
           "SMTP_SECURITY": "none", "ADMIN_EMAILS": "ops@example.com",
           "WEBHOOK_URL": f"{http_capture.url}/hook", "SERVICE_BASE_URL": BASE}
    servers = [UvicornProcess(env, cwd=tmp_path).start() for _ in range(2)]
    try:
        _until(lambda: _statuses(engine).count("error") >= 3, servers)
        failures = len(_statuses(engine))
        # The cause fixed (the codes dealt with by hand): the next delivery succeeds.
        with engine.begin() as conn:
            conn.execute(table_of(PromoCode).update().values(is_active=False))
        _until(lambda: "success" in _statuses(engine), servers)
        _round(servers)  # the slot is done now: duplicates, probes, nothing to say
    finally:
        for server in servers:
            server.stop()

    statuses = _statuses(engine)
    assert statuses == ["error"] * failures + ["success"], statuses
    log_t = table_of(CronJobLog)
    with engine.connect() as conn:
        run_ids = [str(r) for r in conn.scalars(sa.select(log_t.c.run_id).order_by(log_t.c.id))]

    hooks = [r.json() for r in http_capture.requests]
    assert [str(m["Subject"]) for m in smtp_sink.messages()] == [
        "[voyagesmart-cron] promo-cleanup is failing",
        "[voyagesmart-cron] promo-cleanup recovered"]
    opened_mail = smtp_sink.messages()[0].get_content()
    assert "brake" in opened_mail.lower()
    assert f"{BASE}/dashboard/jobs/promo-cleanup#run-{hooks[0]['run_id']}" in opened_mail

    assert [(h["event"], h["status"]) for h in hooks] == [
        ("incident_opened", "failing"), ("incident_recovered", "healthy")]
    # The opening names the failed run the first check saw (the first, unless a second
    # delivery's run ended before any check ran); the recovery, the run that succeeded.
    assert hooks[0]["run_id"] in run_ids[:failures]
    assert hooks[1]["run_id"] == run_ids[-1]
    assert hooks[1]["previous_status"] == "failing"
    assert hooks[1]["since"] == hooks[0]["since"]

    with engine.connect() as conn:
        [state] = conn.execute(sa.select(table_of(CronJobIncident))).all()
    assert (state.task, state.condition, state.run_id) == ("promo-cleanup", "healthy",
                                                          run_ids[-1])
