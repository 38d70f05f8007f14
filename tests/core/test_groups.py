"""Groups through the runner: lanes, the worst status, and the grouped schedule's slots,
duplicates and overdue rule (app/core/groups.py, registry `scheduled`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.core import health, registry
from app.core.context import JobContext, JobResult
from app.core.groups import GroupOutcome, lanes, run_group, worst
from app.core.registry import GROUPS, JOBS, JobSpec
from app.core.runner import Runner, RunOutcome
from app.core.schedule_check import check
from app.core.status import RunStatus
from tests.conftest import FixedClock, make_settings, rows

DAILY = GROUPS["daily-maintenance"]
WEEKLY = GROUPS["weekly-cleanup"]
# Monday 2026-11-30, a day with no weekly or monthly job in the way.
DAY = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)

# Members that do their work: a member with nothing to do would answer `skipped`.
pytestmark = pytest.mark.usefixtures("without_preconditions")


def _ok(ctx: JobContext) -> JobResult:
    return JobResult(message="done")


def _broken(ctx: JobContext) -> JobResult:
    raise RuntimeError("the member's own failure")


def _stubbed(**funcs: Any) -> dict[str, JobSpec]:
    """The registry's jobs (names, schedules, tables) doing nothing, or what is given."""
    return {name: replace(spec, func=funcs.get(name.replace("-", "_"), _ok), settings=())
            for name, spec in JOBS.items()}


def _runner(engine: Engine, db_url: str, tmp_path: Path, clock: FixedClock, mode: str,
            **funcs: Any) -> Runner:
    settings = make_settings(db_url, tmp_path, schedule_mode=mode)
    jobs = registry.scheduled(_stubbed(**funcs), mode)
    return Runner(settings, engine, clock=clock, sleep=lambda _s: None, jobs=jobs)


def _statuses(outcome: GroupOutcome) -> dict[str, str]:
    return {m.task: m.status for m in outcome.members}


def test_the_registry_groups_are_the_seeds() -> None:
    assert {name: (g.schedule, g.members) for name, g in GROUPS.items()} == {
        "daily-maintenance": ("0 2 * * *",
                              ("subscription-sync", "promo-cleanup", "trip-reminders")),
        "weekly-cleanup": ("0 1 * * 0", ("db-maintenance", "storage-cleanup")),
    }
    members = [m for g in GROUPS.values() for m in g.members]
    assert len(members) == len(set(members)) and set(members) <= set(JOBS)
    assert not set(GROUPS) & set(JOBS)  # a group's path is never a job's


def test_members_sharing_a_table_share_a_lane() -> None:
    # sync and promo both touch subscription_history; trip-reminders shares nothing.
    assert lanes(DAILY, JOBS) == [["subscription-sync", "promo-cleanup"], ["trip-reminders"]]
    # db-maintenance touches every table: storage-cleanup waits for it.
    assert lanes(WEEKLY, JOBS) == [["db-maintenance", "storage-cleanup"]]


@pytest.mark.parametrize(("statuses", "expected", "http"), [
    ([RunStatus.SUCCESS, RunStatus.SUCCESS], RunStatus.SUCCESS, 200),
    ([RunStatus.SUCCESS, RunStatus.DUPLICATE], RunStatus.DUPLICATE, 200),
    ([RunStatus.DUPLICATE, RunStatus.WARNING, RunStatus.SUCCESS], RunStatus.WARNING, 200),
    ([RunStatus.SUCCESS, RunStatus.RUNNING], RunStatus.RUNNING, 409),
    ([RunStatus.RUNNING, RunStatus.DISABLED], RunStatus.DISABLED, 503),
    ([RunStatus.UNAVAILABLE, RunStatus.SUCCESS], RunStatus.UNAVAILABLE, 503),
    # An error wins over a 503: a scheduler retries a 503, and must not re-run a failure.
    ([RunStatus.UNAVAILABLE, RunStatus.ERROR, RunStatus.SUCCESS], RunStatus.ERROR, 500),
])
def test_the_worst_member_status_is_the_groups(statuses: list[RunStatus],
                                               expected: RunStatus, http: int) -> None:
    assert worst(statuses) == expected
    members = [RunOutcome(f"m{i}", None, s, "http") for i, s in enumerate(statuses)]
    outcome = GroupOutcome("g", "http", False, members)
    assert (outcome.status, outcome.http_status) == (expected, http)
    assert outcome.as_json()["status"] == expected


def test_a_failing_member_does_not_stop_the_others(engine: Engine, db_url: str,
                                                   tmp_path: Path) -> None:
    clock = FixedClock(DAY.replace(hour=2, second=30))
    runner = _runner(engine, db_url, tmp_path, clock, "groups", subscription_sync=_broken)
    outcome = run_group(runner, DAILY, trigger="vercel")
    assert _statuses(outcome) == {"subscription-sync": "error", "promo-cleanup": "success",
                                  "trip-reminders": "success"}
    assert (outcome.status, outcome.http_status) == ("error", 500)
    assert "the member's own failure" in outcome.members[0].message
    logged = rows(engine, "SELECT job_name, status FROM cron_job_log ORDER BY job_name")
    assert [tuple(r) for r in logged] == [("promo-cleanup", "success"),
                                          ("subscription-sync", "error"),
                                          ("trip-reminders", "success")]


def test_grouped_schedule_at_0200_is_neither_duplicate_nor_overdue(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """promo-cleanup (own 03:00) and trip-reminders (own 08:00) run by the 02:00 group."""
    clock = FixedClock(DAY - dt.timedelta(days=1) + dt.timedelta(hours=3, minutes=30))
    runner = _runner(engine, db_url, tmp_path, clock, "groups")
    # Yesterday's delivery came late, at 03:30 (GitHub Actions under load).
    late = run_group(runner, DAILY, trigger="github-actions")
    assert set(_statuses(late).values()) == {"success"}
    assert {m.slot for m in late.members} == {DAY - dt.timedelta(days=1, hours=-2)}
    # Today's at 02:05: every member runs for today's slot.
    clock.now = DAY.replace(hour=2, minute=5)
    today = run_group(runner, DAILY, trigger="github-actions")
    assert set(_statuses(today).values()) == {"success"}
    assert {m.slot for m in today.members} == {DAY.replace(hour=2)}
    # A second delivery of today's slot is a true duplicate for every member.
    again = run_group(runner, DAILY, trigger="vercel")
    assert set(_statuses(again).values()) == {"duplicate"}
    assert (again.status, again.http_status) == ("duplicate", 200)
    # Nothing overdue all day: each member is next due at tomorrow's 02:00 + its grace.
    facts, baseline = health.read_facts(engine, runner.jobs)
    for hour in (6, 12, 23):
        results, issues = health.evaluate(runner.jobs, facts, DAY.replace(hour=hour),
                                          baseline)
        assert not [i for i in issues if i.startswith(DAILY.members)]
        assert not any(r.overdue for r in results if r.name in DAILY.members)
    daily = {r.name: r for r in results if r.name in DAILY.members}
    assert {r.due_by for r in daily.values()} == {
        DAY + dt.timedelta(days=1, hours=2) + registry.JOBS["promo-cleanup"].grace}


def test_without_groups_mode_the_same_days_give_a_false_duplicate_and_overdue(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    """Why the setting exists: per-job slots under a 02:00 group schedule go wrong."""
    clock = FixedClock(DAY - dt.timedelta(days=1) + dt.timedelta(hours=3, minutes=30))
    runner = _runner(engine, db_url, tmp_path, clock, "jobs")
    run_group(runner, DAILY, trigger="github-actions")
    clock.now = DAY.replace(hour=2, minute=5)
    today = run_group(runner, DAILY, trigger="github-actions")
    # promo-cleanup's own slot is still yesterday's 03:00, which the late call ran.
    assert _statuses(today)["promo-cleanup"] == "duplicate"
    facts, baseline = health.read_facts(engine, runner.jobs)
    results, issues = health.evaluate(runner.jobs, facts, DAY.replace(hour=12), baseline)
    overdue = {r.name for r in results if r.overdue}
    assert {"promo-cleanup", "trip-reminders"} <= overdue
    assert any("trip-reminders is overdue" in issue for issue in issues)


def test_weekly_members_follow_the_groups_sunday_0100(engine: Engine, db_url: str,
                                                      tmp_path: Path) -> None:
    sunday = DAY - dt.timedelta(days=1)
    clock = FixedClock(sunday.replace(hour=1, second=30))
    runner = _runner(engine, db_url, tmp_path, clock, "groups")
    outcome = run_group(runner, WEEKLY, trigger="vercel")
    assert _statuses(outcome) == {"db-maintenance": "success", "storage-cleanup": "success"}
    # storage-cleanup's own schedule is Sunday 02:00; grouped, its slot is 01:00.
    assert {m.slot for m in outcome.members} == {sunday.replace(hour=1)}
    facts, baseline = health.read_facts(engine, runner.jobs)
    _results, issues = health.evaluate(runner.jobs, facts, sunday.replace(hour=23), baseline)
    assert not [i for i in issues if "db-maintenance" in i or "storage-cleanup" in i]


def test_dry_run_and_force_reach_every_member(engine: Engine, db_url: str,
                                              tmp_path: Path) -> None:
    clock = FixedClock(DAY.replace(hour=2, second=30))
    runner = _runner(engine, db_url, tmp_path, clock, "groups")
    dry = run_group(runner, DAILY, trigger="http", dry_run=True)
    assert all(m.dry_run and m.slot is None for m in dry.members)
    assert dry.as_json()["dry_run"] is True
    real = run_group(runner, DAILY, trigger="http")
    forced = run_group(runner, DAILY, trigger="http", force=True)
    assert set(_statuses(real).values()) == set(_statuses(forced).values()) == {"success"}
    assert all(m.slot is None for m in forced.members)
    counts = rows(engine, "SELECT dry_run, count(*) FROM cron_job_log GROUP BY dry_run "
                          "ORDER BY dry_run")
    assert [tuple(r) for r in counts] == [(False, 6), (True, 3)]


def test_the_registry_groups_feed_the_schedule_check() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    report = check(registry.planned(), registry.planned_groups(), start=start, hobby=True,
                   function_limit=300)
    # Both groups' members take longer than a Vercel Hobby function's 300 s.
    assert {(o.group, o.total) for o in report.over_budget} == {
        ("daily-maintenance", 1800.0), ("weekly-cleanup", 7200.0)}
    assert report.rejected == ()
