"""`voyagesmart-cron schedule check` and `schedule export --stagger`, as an operator runs them:
each seeded collision found in a registry made for the test; on the shipped registry the
03:00 Monday collision, and none once staggered; the shipped files keep the seed's times."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from cronsim import CronSim
from typer.testing import CliRunner

from app.core import registry
from app.core.registry import JOBS, JobSpec, previous_fire
from app.ops import deploy
from app.ops.cli import cli

RUNNER = CliRunner()


def _use(monkeypatch: pytest.MonkeyPatch, jobs: dict[str, JobSpec]) -> None:
    """Check and export read this registry instead of the shipped one."""
    monkeypatch.setattr(registry, "JOBS", jobs)
    monkeypatch.setattr(deploy, "JOBS", jobs)


def _made_registry() -> dict[str, JobSpec]:
    """Four of the shipped jobs, moved onto each other: two seeded collisions (a shared
    table at the same minute; every table under db-maintenance), and one near miss
    (same minute, no common table)."""
    def at(name: str, schedule: str) -> JobSpec:
        return dataclasses.replace(JOBS[name], schedule=schedule)

    return {
        "subscription-sync": at("subscription-sync", "30 2 * * *"),
        "subscription-expiry": at("subscription-expiry", "30 2 * * 1"),  # user_subscriptions
        "db-maintenance": at("db-maintenance", "15 4 * * 0"),  # every table
        "storage-cleanup": at("storage-cleanup", "15 4 * * 0"),
        "promo-cleanup": at("promo-cleanup", "45 5 * * *"),  # alone with its tables
        "trip-reminders": at("trip-reminders", "45 5 * * *"),  # near miss: other tables
    }


def test_schedule_check_finds_each_seeded_collision_in_a_made_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, _made_registry())
    result = RUNNER.invoke(cli, ["schedule", "check"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    collisions = [line for line in lines if " both fire at " in line]
    assert len(collisions) == 2, result.output
    assert collisions[0].startswith("subscription-sync and subscription-expiry both fire at Mon ")
    assert "02:30 UTC" in collisions[0] and "user_subscriptions" in collisions[0]
    assert collisions[1].startswith("db-maintenance and storage-cleanup both fire at Sun ")
    assert not any("trip-reminders" in line and "promo-cleanup" in line for line in collisions)
    assert not any("minute 0" in line for line in lines)  # none at the top of the hour

    staggered = RUNNER.invoke(cli, ["schedule", "check", "--stagger"])
    assert staggered.exit_code == 0, staggered.output
    assert "no collision" in staggered.output


def test_schedule_check_reports_what_vercel_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    made = {"analytics": dataclasses.replace(JOBS["analytics"], schedule="10 3 * * MON"),
            "promo-cleanup": dataclasses.replace(JOBS["promo-cleanup"],
                                                 schedule="5 */6 * * *")}
    _use(monkeypatch, made)
    hobby = RUNNER.invoke(cli, ["schedule", "check"])
    assert hobby.exit_code == 1
    assert "analytics (10 3 * * MON): uses names (MON, JAN); Vercel takes numbers only" in (
        hobby.output)
    assert ("promo-cleanup (5 */6 * * *): fires more than once a day, which Vercel Hobby "
            "refuses") in hobby.output
    pro = RUNNER.invoke(cli, ["schedule", "check", "--vercel-plan", "pro"])
    assert "more than once a day" not in pro.output


def test_the_shipped_registry_collides_on_monday_at_0300_and_stagger_clears_it() -> None:
    result = RUNNER.invoke(cli, ["schedule", "check"])
    assert result.exit_code == 1
    [collision] = [line for line in result.output.splitlines() if " both fire at " in line]
    assert collision.startswith("promo-cleanup and analytics both fire at Mon ")
    assert " 03:00 UTC " in collision
    assert "touch promo_code_redemptions, subscription_history" in collision
    assert sum("fires at minute 0" in line for line in result.output.splitlines()) == len(JOBS)

    staggered = RUNNER.invoke(cli, ["schedule", "check", "--stagger"])
    assert staggered.exit_code == 0, staggered.output
    assert staggered.output == (f"{len(JOBS)} schedules checked: no collision, none at the "
                                "top of the hour, all taken by Vercel\n")


def test_export_stagger_moves_minutes_later_deterministically_and_files_keep_the_seed(
        ) -> None:
    plain = RUNNER.invoke(cli, ["schedule", "export", "--format", "vercel"])
    assert plain.output == deploy.PATHS["vercel"].read_text()  # the seed's times
    first = RUNNER.invoke(cli, ["schedule", "export", "--format", "vercel", "--stagger"])
    second = RUNNER.invoke(cli, ["schedule", "export", "--format", "vercel", "--stagger"])
    assert first.exit_code == 0 and first.output == second.output
    moved = {c["path"].rsplit("/", 1)[1]: c["schedule"]
             for c in json.loads(first.output)["crons"]}
    assert set(moved) == set(JOBS)
    for name, schedule in moved.items():
        seed = JOBS[name].schedule.split()
        fields = schedule.split()
        assert fields[1:] == seed[1:], name  # only the minute moves
        assert 0 < int(fields[0]) < 60 and int(fields[0]) > int(seed[0]), name
    # analytics had to leave promo-cleanup's minute; the others only left minute 0.
    assert moved["promo-cleanup"] == "1 3 * * *" and moved["analytics"] == "2 3 * * 1"
    github = RUNNER.invoke(cli, ["schedule", "export", "--format", "github", "--stagger"])
    assert "- cron: '2 3 * * 1'  # analytics" in github.output
    crontab = RUNNER.invoke(cli, ["schedule", "export", "--format", "crontab", "--stagger"])
    assert "2 3 * * 1 /etc/voyagesmart-cron/call-task analytics" in crontab.output


def test_a_staggered_call_still_belongs_to_its_registry_slot() -> None:
    """The runner reads a call's slot off the registry's schedule: a staggered call a few
    minutes after the seed's time belongs to that same slot."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for name, schedule in deploy.staggered(start).items():
        fire = next(CronSim(schedule, start))
        slot = previous_fire(JOBS[name].schedule, fire)
        assert dt.timedelta(0) < fire - slot < dt.timedelta(hours=1), name


def test_the_grouped_layout_reports_groups_too_long_for_one_function_call() -> None:
    result = RUNNER.invoke(cli, ["schedule", "check", "--groups"])
    assert result.exit_code == 1, result.output
    assert ("group daily-maintenance: its members' budgets add up to 1800 s, past the "
            "function's 300 s") in result.output
    assert ("group weekly-cleanup: its members' budgets add up to 7200 s, past the "
            "function's 300 s") in result.output
    # Vercel Pro's 800 s still cannot hold them; a limit above both clears the budget lines.
    roomy = RUNNER.invoke(cli, ["schedule", "check", "--groups", "--function-limit", "8000"])
    assert "budgets add up" not in roomy.output
