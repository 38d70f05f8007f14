"""Missed slots are caught up: once, by a call of any task, within the job's useful lateness.

Through the runner and over HTTP, on SQLite and PostgreSQL, with the suite's fixed clock
(2026-11-28 03:00:30 UTC).  The daily jobs here fire at 03:00 with a grace of 3 h, so the
slot of 11-29 03:00 is missed from 06:00:01 on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cronsim import CronSim
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from app.config import Settings, get_settings
from app.core import catch_up, health, registry
from app.core.context import JobContext, JobResult
from app.core.registry import JOBS, JobSpec
from app.core.runner import CATCH_UP, Runner
from app.core.status import RunStatus
from app.db import table_of
from app.models import CronJobLog
from app.ops.cli import cli
from tests.conftest import FixedClock, auth, make_settings, rows

UTC = dt.UTC
VERCEL = {**auth(), "User-Agent": "vercel-cron/1.0"}
FIRST_SLOT = dt.datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
MISSED = dt.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def _jobs(calls: list[str], *, pause: float = 0.0, fail: bool = False) -> dict[str, JobSpec]:
    """`daily` is caught up within 20 h, `no-catch-up` never; `ping` is the other task
    whose calls carry the catch-up."""

    def job(ctx: JobContext) -> JobResult:
        calls.append(f"{ctx.task}@{ctx.slot.isoformat() if ctx.slot else None}")
        time.sleep(pause)
        if fail and ctx.task == "daily":
            raise ValueError("the daily job broke")
        return JobResult(records_processed=1)

    three_hours = dt.timedelta(hours=3)
    return {
        "daily": JobSpec("daily", "0 3 * * *", job, "daily", critical=True, grace=three_hours,
                         catch_up_within=dt.timedelta(hours=20)),
        "no-catch-up": JobSpec("no-catch-up", "0 3 * * *", job, "never caught up",
                               critical=True, grace=three_hours),
        "ping": JobSpec("ping", "*/10 * * * *", job, "the other task",
                        grace=dt.timedelta(hours=1)),
    }


def _runner(settings: Settings, engine: Engine, clock: FixedClock,
            jobs: dict[str, JobSpec]) -> Runner:
    return Runner(settings, engine, clock=clock, jobs=jobs, sleep=lambda _s: None)


def _log(engine: Engine, task: str) -> list[tuple[str, dt.datetime | None, str]]:
    found = rows(engine, "SELECT trigger, slot, status FROM cron_job_log WHERE job_name = :t "
                 "ORDER BY id", t=task)
    return [(r.trigger, _utc(r.slot), r.status) for r in found]


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _health(engine: Engine, jobs: dict[str, JobSpec], now: dt.datetime
            ) -> tuple[dict[str, health.JobHealth], list[str]]:
    facts, baseline = health.read_facts(engine, jobs)
    results, issues = health.evaluate(jobs, facts, now, baseline)
    return {item.name: item for item in results}, issues


# --- through the runner ---------------------------------------------------------------------

def test_missed_slot_is_caught_up_once_by_a_call_of_another_task(
        engine: Engine, settings: Settings, clock: FixedClock) -> None:
    calls: list[str] = []
    jobs = _jobs(calls)
    runner = _runner(settings, engine, clock, jobs)
    assert runner.run("daily", trigger="vercel").status == RunStatus.SUCCESS
    # No delivery of the 11-29 03:00 slot.  At the end of its grace it is not missed yet.
    clock.now = _at("2026-11-29T06:00:00")
    assert runner.run("ping", trigger="vercel").status == RunStatus.SUCCESS
    assert catch_up.catch_up_one(runner) is None

    clock.now = _at("2026-11-29T06:10:00")
    assert runner.run("ping", trigger="vercel").status == RunStatus.SUCCESS
    caught = catch_up.catch_up_one(runner)
    assert caught is not None
    assert (caught.task, caught.status, caught.trigger, caught.slot) == (
        "daily", RunStatus.SUCCESS, CATCH_UP, MISSED)
    # The next calls find nothing left to catch up.
    for minutes in (20, 30, 600):
        clock.now = _at("2026-11-29T06:00:00") + dt.timedelta(minutes=minutes)
        runner.run("ping", trigger="vercel")
        assert catch_up.catch_up_one(runner) is None
    assert [c for c in calls if c.startswith("daily")] == [
        f"daily@{FIRST_SLOT.isoformat()}", f"daily@{MISSED.isoformat()}"]
    assert _log(engine, "daily") == [("vercel", FIRST_SLOT, "success"),
                                     (CATCH_UP, MISSED, "success")]
    # A caught-up slot counts as done.
    by_name, issues = _health(engine, jobs, clock.now)
    assert not by_name["daily"].overdue
    assert not [issue for issue in issues if issue.startswith("daily")], issues


def test_late_delivery_after_the_catch_up_is_a_duplicate(
        engine: Engine, settings: Settings, clock: FixedClock) -> None:
    calls: list[str] = []
    runner = _runner(settings, engine, clock, _jobs(calls))
    runner.run("daily", trigger="vercel")
    clock.now = _at("2026-11-29T06:10:00")
    runner.run("ping", trigger="github-actions")
    caught = catch_up.catch_up_one(runner)
    assert caught is not None and caught.status == RunStatus.SUCCESS

    clock.now = _at("2026-11-29T09:30:00")  # GitHub Actions, hours late
    late = runner.run("daily", trigger="github-actions")
    assert (late.status, late.slot, late.run_id) == (RunStatus.DUPLICATE, MISSED, caught.run_id)
    assert late.http_status == 200
    assert calls.count(f"daily@{MISSED.isoformat()}") == 1
    assert [t for t, _slot, _status in _log(engine, "daily")] == ["vercel", CATCH_UP]


def test_slot_past_its_useful_lateness_is_left_and_stays_overdue(
        engine: Engine, settings: Settings, clock: FixedClock) -> None:
    calls: list[str] = []
    jobs = _jobs(calls)
    runner = _runner(settings, engine, clock, jobs)
    runner.run("daily", trigger="vercel")
    clock.now = _at("2026-11-29T23:00:01")  # 20 h and a second after the missed slot
    runner.run("ping", trigger="vercel")
    assert catch_up.catch_up_one(runner) is None
    assert calls.count(f"daily@{MISSED.isoformat()}") == 0
    by_name, issues = _health(engine, jobs, clock.now)
    assert by_name["daily"].overdue
    assert any(issue.startswith("daily is overdue") for issue in issues), issues


def test_job_without_catch_up_is_left_alone(engine: Engine, settings: Settings,
                                            clock: FixedClock) -> None:
    calls: list[str] = []
    jobs = _jobs(calls)
    runner = _runner(settings, engine, clock, jobs)
    runner.run("daily", trigger="vercel")
    runner.run("no-catch-up", trigger="vercel")
    assert catch_up.missed_slots(engine, jobs, _at("2026-11-29T06:10:00")) == [
        catch_up.MissedSlot("daily", MISSED, _at("2026-11-29T23:00:00"), critical=True)]
    for when in ("2026-11-29T06:10:00", "2026-11-29T06:20:00", "2026-11-29T12:00:00"):
        clock.now = _at(when)
        runner.run("ping", trigger="vercel")
        catch_up.catch_up_one(runner)
    assert _log(engine, "no-catch-up") == [("vercel", FIRST_SLOT, "success")]
    assert [t for t, _slot, _status in _log(engine, "daily")] == ["vercel", CATCH_UP]
    by_name, _issues = _health(engine, jobs, clock.now)
    assert by_name["no-catch-up"].overdue and not by_name["daily"].overdue


def test_a_fresh_deployment_catches_up_nothing_it_never_saw(
        engine: Engine, settings: Settings, clock: FixedClock) -> None:
    calls: list[str] = []
    runner = _runner(settings, engine, clock, _jobs(calls))
    clock.now = _at("2026-11-29T06:10:00")
    runner.run("ping", trigger="vercel")  # the first run the service ever records
    assert catch_up.catch_up_one(runner) is None
    assert calls == ["ping@2026-11-29T06:10:00+00:00"]


def test_a_failed_catch_up_is_never_repeated(engine: Engine, settings: Settings,
                                             clock: FixedClock) -> None:
    calls: list[str] = []
    jobs = _jobs(calls)
    _runner(settings, engine, clock, jobs).run("daily", trigger="vercel")
    broken = _runner(settings, engine, clock, _jobs(calls, fail=True))
    clock.now = _at("2026-11-29T06:10:00")
    caught = catch_up.catch_up_one(broken)
    assert caught is not None and caught.status == RunStatus.ERROR
    clock.now = _at("2026-11-29T06:20:00")
    assert catch_up.catch_up_one(broken) is None
    # A call that had found the slot missed just before (the race two calls run): under the
    # lease, the failed catch-up settles it.
    again = broken.run("daily", missed_slot=MISSED)
    assert (again.status, again.run_id) == (RunStatus.DUPLICATE, caught.run_id)
    assert calls.count(f"daily@{MISSED.isoformat()}") == 1
    # Health says so: the job is failing, not silently healed.
    by_name, _issues = _health(engine, jobs, clock.now)
    assert by_name["daily"].failing


def test_concurrent_calls_catch_the_slot_up_once(engine: Engine, settings: Settings,
                                                 clock: FixedClock) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("threads racing for one slot: PostgreSQL's row locks")
    calls: list[str] = []
    jobs = _jobs(calls, pause=0.5)
    _runner(settings, engine, clock, jobs).run("daily", trigger="vercel")
    clock.now = _at("2026-11-29T06:10:00")
    callers = 6
    barrier = threading.Barrier(callers)

    def call(_i: int) -> Any:
        runner = _runner(settings, engine, clock, jobs)
        barrier.wait()
        return catch_up.catch_up_one(runner)

    with ThreadPoolExecutor(callers) as pool:
        outcomes = list(pool.map(call, range(callers)))
    statuses = Counter(o.status for o in outcomes if o is not None)
    assert sum(statuses.values()) >= 2, statuses  # the lease decided between callers
    assert statuses[RunStatus.SUCCESS] == 1, statuses
    assert set(statuses) <= {RunStatus.SUCCESS, RunStatus.DUPLICATE}, statuses
    winner = next(o for o in outcomes if o is not None and o.status == RunStatus.SUCCESS)
    assert {o.run_id for o in outcomes if o is not None} == {winner.run_id}
    assert calls.count(f"daily@{MISSED.isoformat()}") == 1
    assert _log(engine, "daily") == [("vercel", FIRST_SLOT, "success"),
                                     (CATCH_UP, MISSED, "success")]


# --- over HTTP ------------------------------------------------------------------------------

# Real jobs: promo-cleanup's 11-29 03:00 slot is missed; subscription-expiry's call (its own
# slot is 00:00) catches it up.
# Their preconditions are left out: a job with nothing to do would answer `skipped`
# (tests/core/test_preconditions.py), and this is about the catch-up.
REAL = {name: dataclasses.replace(JOBS[name], precondition=None)
        for name in ("promo-cleanup", "subscription-expiry")}


def test_over_http_a_call_of_another_task_answers_the_catch_up(
        make_client: Callable[..., TestClient], engine: Engine, clock: FixedClock) -> None:
    client = make_client(jobs=REAL)
    first = client.get("/api/cron/promo-cleanup", headers=VERCEL).json()
    assert first["status"] == "success" and first["catch_up"] is None
    clock.now = _at("2026-11-29T06:10:00")
    answer = client.get("/api/cron/subscription-expiry", headers=VERCEL)
    assert answer.status_code == 200
    body = answer.json()
    assert body["task"] == "subscription-expiry" and body["status"] == "success"
    caught = body["catch_up"]
    assert (caught["task"], caught["status"], caught["trigger"], caught["slot"]) == (
        "promo-cleanup", "success", "catch-up", MISSED.isoformat())

    clock.now = _at("2026-11-29T07:40:00")
    late = client.post("/api/cron/promo-cleanup", headers={**auth(),
                                                           "X-Cron-Source": "crontab"})
    assert late.status_code == 200
    assert (late.json()["status"], late.json()["run_id"]) == ("duplicate", caught["run_id"])
    assert late.json()["catch_up"] is None
    assert _log(engine, "promo-cleanup") == [("vercel", FIRST_SLOT, "success"),
                                             ("catch-up", MISSED, "success")]
    assert client.get("/health").json()["status"] == "healthy"


def test_over_http_too_late_or_disabled_is_left_to_health(
        make_client: Callable[..., TestClient], engine: Engine, clock: FixedClock) -> None:
    calls: list[str] = []
    client = make_client(jobs=_jobs(calls))
    client.get("/api/cron/daily", headers=VERCEL)
    client.get("/api/cron/no-catch-up", headers=VERCEL)
    clock.now = _at("2026-11-29T23:00:01")
    answer = client.get("/api/cron/ping", headers=VERCEL).json()
    assert answer["status"] == "success" and answer["catch_up"] is None
    report = client.get("/health")
    assert report.status_code == 503
    issues = report.json()["issues"]
    assert any(i.startswith("daily is overdue") for i in issues), issues
    assert any(i.startswith("no-catch-up is overdue") for i in issues), issues
    assert calls == [f"daily@{FIRST_SLOT.isoformat()}", f"no-catch-up@{FIRST_SLOT.isoformat()}",
                     "ping@2026-11-29T23:00:00+00:00"]


def test_over_http_only_a_schedulers_real_call_catches_up(
        make_client: Callable[..., TestClient], engine: Engine, clock: FixedClock,
        db_url: str, tmp_path: Path) -> None:
    calls: list[str] = []
    jobs = _jobs(calls)
    client = make_client(jobs=jobs)
    client.get("/api/cron/daily", headers=VERCEL)
    clock.now = _at("2026-11-29T06:10:00")
    for query in ("?dry_run=true", "?force=true"):
        body = client.get(f"/api/cron/ping{query}", headers=VERCEL).json()
        assert "catch_up" not in body, body
    switched_off = make_client(jobs=jobs, settings=make_settings(db_url, tmp_path,
                                                                 cron_catch_up=False))
    assert "catch_up" not in switched_off.get("/api/cron/ping", headers=VERCEL).json()
    assert not any(c.startswith("daily@2026-11-29") for c in calls)
    clock.now = _at("2026-11-29T06:20:00")
    caught = client.get("/api/cron/ping", headers=VERCEL).json()["catch_up"]
    assert (caught["task"], caught["trigger"]) == ("daily", "catch-up")


def test_over_http_concurrent_calls_catch_the_slot_up_once(
        make_client: Callable[..., TestClient], engine: Engine, clock: FixedClock) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("threads racing for one slot: PostgreSQL's row locks")
    calls: list[str] = []
    jobs = _jobs(calls, pause=0.3)
    clients = [make_client(jobs=jobs) for _ in range(4)]
    clients[0].get("/api/cron/daily", headers=VERCEL)
    clock.now = _at("2026-11-29T06:10:00")
    barrier = threading.Barrier(len(clients))

    def call(client: TestClient) -> dict[str, Any]:
        barrier.wait()
        response = client.get("/api/cron/ping", headers=VERCEL)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(call, clients))
    caught = [a["catch_up"] for a in answers if a["catch_up"] is not None]
    assert [c["status"] for c in caught].count("success") == 1, caught
    assert {c["status"] for c in caught} <= {"success", "duplicate"}, caught
    assert len({c["run_id"] for c in caught}) == 1
    assert calls.count(f"daily@{MISSED.isoformat()}") == 1
    assert [t for t, _slot, _status in _log(engine, "daily")] == ["vercel", CATCH_UP]


# --- the registry and the operator's command ------------------------------------------------

def _shortest_gap(schedule: str) -> dt.timedelta:
    fires = CronSim(schedule, dt.datetime(2026, 1, 1, tzinfo=UTC))
    times = [next(fires) for _ in range(400)]
    return min(b - a for a, b in itertools.pairwise(times))


def test_each_jobs_useful_lateness_lies_between_its_grace_and_its_next_slot() -> None:
    for spec in JOBS.values():
        if spec.catch_up_within is None:
            continue
        # Past the grace, or it is never caught up; before the next slot, or a catch-up
        # would do that slot's work under the wrong slot.
        assert spec.grace < spec.catch_up_within < _shortest_gap(spec.schedule), spec.name
    within = {name: spec.catch_up_within for name, spec in JOBS.items()}
    assert within["trip-reminders"] is not None and within["trip-reminders"] <= dt.timedelta(
        hours=16)  # the same day
    assert within["storage-cleanup"] is None


def _shown(window: dt.timedelta | None) -> str:
    if window is None:
        return "never"
    hours = window.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours % 24 == 0 else f"{hours:g} h"


def test_jobs_doc_gives_each_jobs_catch_up_window() -> None:
    text = (Path(__file__).parents[2] / "docs" / "jobs.md").read_text()
    section = text.split("\n## Catch-up\n", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| `([a-z-]+)` \| ([^|]+?) \|", section, re.MULTILINE))
    assert table == {name: _shown(spec.catch_up_within) for name, spec in JOBS.items()}


def test_cli_catch_up_runs_every_missed_slot(engine: Engine, db_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The command reads the real clock: a schedule of every minute has a missed slot now.
    calls: list[str] = []
    minute = dt.timedelta(minutes=1)
    every_minute = {
        "each-minute": JobSpec("each-minute", "* * * * *", _jobs(calls)["daily"].func, "test",
                               grace=minute, catch_up_within=30 * minute),
    }
    with engine.begin() as conn:  # the service was there an hour ago
        conn.execute(table_of(CronJobLog).insert().values(
            run_id=uuid.uuid4(), job_name="each-minute", slot=None,
            trigger="cli", started_at=dt.datetime.now(UTC) - 60 * minute,
            status="success", records_processed=0, attempts=1, dry_run=False))
    monkeypatch.setattr(registry, "JOBS", every_minute)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("APP_ENV", "test")
    get_settings.cache_clear()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        listed = CliRunner().invoke(cli, ["catch-up", "--list"])
        done = CliRunner().invoke(cli, ["catch-up"])
        again = CliRunner().invoke(cli, ["catch-up"])
    finally:
        get_settings.cache_clear()
        signal.signal(signal.SIGTERM, sigterm)
    assert listed.exit_code == 0, listed.output
    assert [m["task"] for m in json.loads(listed.output)["missed"]] == ["each-minute"]
    assert "outcomes" not in json.loads(listed.output)
    assert done.exit_code == 0, done.output
    outcomes = json.loads(done.output)["outcomes"]
    assert [(o["task"], o["status"], o["trigger"]) for o in outcomes] == [
        ("each-minute", "success", "catch-up")]
    assert again.exit_code == 0 and json.loads(again.output) == {"missed": [], "outcomes": []}
    assert len(calls) == 1
