"""`/health` for uptime monitors, and the overdue rule it applies (pure functions of `now`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.context import JobContext, JobResult
from app.core.health import JobFacts, evaluate, job_health
from app.core.registry import JOBS, JobSpec
from app.db import make_engine, table_of
from app.models import CronJobLog
from app.ops.migrate import upgrade
from tests.conftest import FixedClock, auth, create_pg_database, drop_pg_database, pg_url
from tests.support.servers import free_port

UTC = dt.UTC
VERCEL = {**auth(), "User-Agent": "vercel-cron/1.0"}


# One critical job, so that what /health says depends only on what each test does.
PROMO_ONLY = {"promo-cleanup": JOBS["promo-cleanup"]}


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(jobs=PROMO_ONLY)


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- through HTTP, with a fixed clock -----------------------------------------------------

def test_healthy_after_a_fresh_run(client: TestClient, clock: FixedClock) -> None:
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).json()["status"] == "success"
    clock.advance(hours=1)
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert response.json()["issues"] == []
    assert response.headers["cache-control"] == "no-store"


def test_missed_slot_is_flagged_only_after_the_grace(client: TestClient,
                                                     clock: FixedClock) -> None:
    # Last success in the 2026-11-28 03:00 slot; the next slot is 11-29 03:00, grace 3 h.
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).status_code == 200
    clock.now = _at("2026-11-29T05:59:00")
    inside = client.get("/health")
    assert inside.status_code == 200, inside.json()
    clock.now = _at("2026-11-29T06:00:01")
    late = client.get("/health")
    assert late.status_code == 503
    body = late.json()
    assert body["status"] == "unhealthy"
    assert len(body["issues"]) == 1
    assert body["issues"][0].startswith("promo-cleanup is overdue")
    assert "2026-11-29T06:00:00Z" in body["issues"][0]
    assert "jobs" not in body  # details only with the secret


def test_a_late_run_makes_it_healthy_again(client: TestClient, clock: FixedClock) -> None:
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).status_code == 200
    clock.now = _at("2026-11-29T09:00:00")
    assert client.get("/health").status_code == 503
    # GitHub Actions fires hours late: that run still belongs to the 03:00 slot.  No code
    # changed since the first run, so it ends `skipped`, which counts as done for overdue.
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).json()["status"] == "skipped"
    assert client.get("/health").status_code == 200


def test_stuck_run_is_reported(client: TestClient, clock: FixedClock, engine: Engine) -> None:
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).status_code == 200
    started = clock.now + dt.timedelta(minutes=10)
    with engine.begin() as conn:
        conn.execute(table_of(CronJobLog).insert().values(
            run_id=uuid.uuid4(), job_name="promo-cleanup", trigger="cli", started_at=started,
            status="running", records_processed=0, attempts=1, dry_run=False))
    clock.now = started + dt.timedelta(minutes=4)
    assert client.get("/health").status_code == 200  # still within its 5 min max runtime
    clock.now = started + dt.timedelta(minutes=6)
    response = client.get("/health")
    assert response.status_code == 503
    assert [i.split(":")[0] for i in response.json()["issues"]] == ["promo-cleanup is stuck"]


def test_details_only_with_the_secret(client: TestClient, clock: FixedClock) -> None:
    assert client.get("/api/cron/promo-cleanup", headers=VERCEL).status_code == 200
    anonymous = client.get("/health").json()
    wrong = client.get("/health", headers=auth("w" * 40)).json()
    detailed = client.get("/health", headers=auth()).json()
    assert "jobs" not in anonymous and "jobs" not in wrong
    job = detailed["jobs"]["promo-cleanup"]
    assert job["last_status"] == "success"
    assert job["critical"] is True
    assert job["next_fire"] == "2026-11-29T03:00:00+00:00"
    assert job["due_by"] == "2026-11-29T06:00:00+00:00"


def test_failing_non_critical_job_does_not_make_it_unhealthy(
    make_client: Callable[..., TestClient], clock: FixedClock
) -> None:
    def ok(_ctx: JobContext) -> JobResult:
        return JobResult()

    jobs = {**PROMO_ONLY, "report": JobSpec("report", "0 4 1 * *", ok, "monthly", critical=False)}
    client = make_client(jobs=jobs)
    for name in jobs:
        assert client.get(f"/api/cron/{name}?force", headers=auth()).status_code == 200
    clock.now = _at("2027-03-01T00:00:00")
    issues = client.get("/health").json()["issues"]
    assert [i.split(" ")[0] for i in issues] == ["promo-cleanup"]


def _down_client(settings: Settings, engine: Engine, clock: FixedClock) -> TestClient:
    from app.main import create_app

    return TestClient(create_app(settings, engine=engine, clock=clock, jobs=PROMO_ONLY),
                      raise_server_exceptions=False)


def test_database_down_is_503(settings: Settings, clock: FixedClock) -> None:
    closed = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    with _down_client(settings, closed, clock) as client:
        anonymous = client.get("/health")
        detailed = client.get("/health", headers=auth())
        cron = client.get("/api/cron/promo-cleanup", headers=auth())
    closed.dispose()
    assert anonymous.status_code == 503
    assert anonymous.json()["database"] == "unreachable"
    assert "database_error" not in anonymous.json()
    assert detailed.json()["database_error"] == "OperationalError"
    assert cron.status_code == 503
    assert cron.json()["status"] == "unavailable"
    for response in (anonymous, detailed, cron):
        assert "Traceback" not in response.text
        assert "127.0.0.1" not in response.text


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_dropped_database_is_503(db_url: str, settings: Settings, clock: FixedClock) -> None:
    name = create_pg_database("vsc_health")
    engine = make_engine(pg_url(name))
    try:
        upgrade(engine)
        with _down_client(settings, engine, clock) as client:
            assert client.get("/health").status_code == 200
            drop_pg_database(name)
            response = client.get("/health")
    finally:
        engine.dispose()
        drop_pg_database(name)  # no-op when the test got that far
    assert response.status_code == 503
    assert response.json()["issues"] == ["database unreachable"]


# --- the rule itself, without a database ----------------------------------------------------

def _spec(schedule: str, grace: dt.timedelta, **kw: Any) -> JobSpec:
    return JobSpec("job", schedule, lambda _ctx: JobResult(), "test", critical=True,
                   grace=grace, **kw)


@pytest.mark.parametrize(("schedule", "grace", "last", "due"), [
    # daily 03:00, success at 03:04 -> due next day 03:00 + 3 h
    ("0 3 * * *", dt.timedelta(hours=3), "2026-11-28T03:04:00", "2026-11-29T06:00:00"),
    # a run late in its hour still counts for its own slot, not the next one
    ("0 3 * * *", dt.timedelta(hours=3), "2026-11-28T03:59:00", "2026-11-29T06:00:00"),
    # weekly, Sunday 01:00 (2026-11-22 is a Sunday) -> next Sunday 01:00 + 6 h
    ("0 1 * * 0", dt.timedelta(hours=6), "2026-11-22T01:10:00", "2026-11-29T07:00:00"),
    # weekly, Monday 03:00: a manual run on Wednesday moves the deadline to next Monday
    ("0 3 * * 1", dt.timedelta(hours=6), "2026-11-25T15:00:00", "2026-11-30T09:00:00"),
    # monthly, 1st 04:00 -> 1st of next month 04:00 + 12 h; December rolls into January
    ("0 4 1 * *", dt.timedelta(hours=12), "2026-11-01T04:02:00", "2026-12-01T16:00:00"),
    ("0 5 1 * *", dt.timedelta(hours=12), "2026-12-01T05:30:00", "2027-01-01T17:00:00"),
    # monthly across February
    ("0 4 1 * *", dt.timedelta(hours=12), "2027-02-01T04:00:00", "2027-03-01T16:00:00"),
])
def test_overdue_rule(schedule: str, grace: dt.timedelta, last: str, due: str) -> None:
    spec = _spec(schedule, grace)
    facts = JobFacts(last_success=_at(last))
    before = job_health(spec, facts, _at(due) - dt.timedelta(seconds=1), baseline=None)
    at_due = job_health(spec, facts, _at(due), baseline=None)
    after = job_health(spec, facts, _at(due) + dt.timedelta(seconds=1), baseline=None)
    assert before.due_by == _at(due)
    assert (before.overdue, at_due.overdue, after.overdue) == (False, False, True)


def test_never_run_job_is_measured_from_the_first_logged_run() -> None:
    spec = _spec("0 3 * * *", dt.timedelta(hours=3))
    baseline = _at("2026-11-28T12:00:00")
    assert not job_health(spec, JobFacts(), _at("2026-11-29T05:59:00"), baseline).overdue
    assert job_health(spec, JobFacts(), _at("2026-11-29T06:00:01"), baseline).overdue
    # An empty log (fresh deployment): nothing to measure from, nothing flagged.
    assert not job_health(spec, JobFacts(), _at("2030-01-01T00:00:00"), None).overdue


def test_stuck_rule() -> None:
    spec = _spec("0 3 * * *", dt.timedelta(hours=3), max_runtime=dt.timedelta(minutes=5))
    since = _at("2026-11-28T03:00:00")
    facts = JobFacts(last_success=since, running_since=since)
    assert not job_health(spec, facts, since + dt.timedelta(minutes=5), None).stuck
    assert job_health(spec, facts, since + dt.timedelta(minutes=5, seconds=1), None).stuck


def test_evaluate_names_only_critical_overdue_and_stuck_jobs() -> None:
    critical = _spec("0 3 * * *", dt.timedelta(hours=3))
    minor = JobSpec("minor", "0 3 * * *", lambda _ctx: JobResult(), "minor", critical=False)
    jobs = {"job": critical, "minor": minor}
    old = JobFacts(last_success=_at("2026-11-01T03:00:00"))
    now = _at("2026-11-28T12:00:00")
    results, issues = evaluate(jobs, {"job": old, "minor": old}, now, None)
    assert [r.overdue for r in results] == [True, True]
    assert len(issues) == 1 and issues[0].startswith("job is overdue")
    stuck = JobFacts(last_success=now, running_since=now - dt.timedelta(hours=1))
    _, issues = evaluate(jobs, {"job": JobFacts(last_success=now), "minor": stuck}, now, None)
    assert len(issues) == 1 and issues[0].startswith("minor is stuck")


# --- a critical job whose latest run failed ----------------------------------------------

def _failing_promo(ctx: JobContext) -> JobResult:
    raise ValueError("promo table is upside down")


@pytest.mark.parametrize("ending", ["error", "abandoned"])
def test_a_failed_critical_job_is_unhealthy_until_a_run_succeeds(
    make_client: Callable[..., TestClient], clock: FixedClock, engine: Engine, ending: str
) -> None:
    good = make_client(jobs=PROMO_ONLY)
    assert good.get("/api/cron/promo-cleanup", headers=VERCEL).json()["status"] == "success"
    clock.advance(hours=1)
    if ending == "error":
        failing = {"promo-cleanup": JobSpec("promo-cleanup", "0 3 * * *", _failing_promo,
                                            "fails", critical=True)}
        bad = make_client(jobs=failing)
        assert bad.post("/api/cron/promo-cleanup?force=1", headers=auth()).status_code == 500
    else:
        with engine.begin() as conn:
            conn.execute(table_of(CronJobLog).insert().values(
                run_id=uuid.uuid4(), job_name="promo-cleanup", trigger="crontab",
                started_at=clock.now, ended_at=clock.now, status="abandoned",
                message="abandoned: the process running it stopped", attempts=1,
                records_processed=0, dry_run=False))
    clock.advance(minutes=5)  # long before the job would be overdue
    response = good.get("/health")
    assert response.status_code == 503, response.json()
    [issue] = response.json()["issues"]
    assert issue.startswith(f"promo-cleanup's latest run failed ({ending}")
    assert "upside down" not in issue  # error details only with the secret
    detailed = good.get("/health", headers=auth()).json()
    assert detailed["jobs"]["promo-cleanup"]["failing"] is True
    # A dry run does not count as the job working again; a real success does.
    assert good.get("/api/cron/promo-cleanup?dry_run=1", headers=auth()).status_code == 200
    assert good.get("/health").status_code == 503
    assert good.post("/api/cron/promo-cleanup?force=1", headers=auth()).status_code == 200
    assert good.get("/health").status_code == 200


def test_a_run_in_progress_after_a_failure_keeps_the_failure() -> None:
    spec = _spec("0 3 * * *", dt.timedelta(hours=3))
    now = _at("2026-11-28T04:00:00")
    failed = JobFacts(last_success=now - dt.timedelta(days=1), last_status="running",
                      last_outcome="error", running_since=now)
    assert job_health(spec, failed, now, None).failing
    recovered = JobFacts(last_success=now, last_status="success", last_outcome="success")
    assert not job_health(spec, recovered, now, None).failing
    minor = JobSpec("minor", "0 3 * * *", lambda _ctx: JobResult(), "minor", critical=False)
    results, issues = evaluate({"job": spec, "minor": minor},
                               {"job": recovered, "minor": failed}, now, None)
    assert issues == [] and results[1].failing  # shown, but never a reason for 503
