"""`schedule export --layout`: the grouped scheduler files, and the per-job ones unchanged."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from app.core.registry import GROUPS, JOBS
from app.ops import deploy
from app.ops.cli import cli

UNGROUPED = ["subscription-expiry", "analytics", "subscription-report", "user-engagement"]


def _crons(text: str) -> list[tuple[str, str]]:
    return [(c["path"], c["schedule"]) for c in json.loads(text)["crons"]]


def test_the_committed_files_stay_per_job() -> None:
    for fmt, path in deploy.PATHS.items():
        assert path.read_text() == deploy.render(fmt) == deploy.render(fmt, "jobs"), fmt
    assert len(_crons(deploy.vercel())) == len(JOBS)


def test_vercel_groups_only_is_two_crons() -> None:
    assert _crons(deploy.vercel("groups-only")) == [
        ("/api/cron/daily-maintenance", "0 2 * * *"),
        ("/api/cron/weekly-cleanup", "0 1 * * 0")]


def test_the_grouped_layout_calls_the_groups_and_the_jobs_in_none() -> None:
    crons = _crons(deploy.vercel("groups"))
    assert [path.rsplit("/", 1)[1] for path, _ in crons] == [*GROUPS, *UNGROUPED]
    assert dict(crons)["/api/cron/analytics"] == JOBS["analytics"].schedule


def test_crontab_and_workflow_give_a_group_its_longest_lane() -> None:
    # daily: sync (10 min) then promo (5 min), beside trip-reminders (15 min): 900 s.
    assert deploy.group_max_time(GROUPS["daily-maintenance"]) == 900 + 30
    # weekly: db-maintenance then storage-cleanup, one hour each.
    assert deploy.group_max_time(GROUPS["weekly-cleanup"]) == 7200 + 30
    crontab = deploy.crontab("groups")
    assert "0 2 * * * /etc/voyagesmart-cron/call-task daily-maintenance 930" in crontab
    assert "SCHEDULE_MODE=groups" in crontab
    assert "call-task promo-cleanup" not in crontab
    github = deploy.github("groups")
    assert "'0 1 * * 0') tasks=\"weekly-cleanup\" ;;" in github
    assert "weekly-cleanup) max_time=7230 ;;" in github
    # A person may still run any single job by hand.
    assert "promo-cleanup) max_time=330 ;;" in github
    assert "          - promo-cleanup" in github


def test_the_cli_writes_either_layout() -> None:
    runner = CliRunner()
    grouped = runner.invoke(cli, ["schedule", "export", "--format", "vercel",
                                  "--layout", "groups-only"])
    assert grouped.exit_code == 0, grouped.output
    assert grouped.output == deploy.vercel("groups-only")
    plain = runner.invoke(cli, ["schedule", "export", "--format", "vercel"])
    assert plain.output == deploy.PATHS["vercel"].read_text()
    bad = runner.invoke(cli, ["schedule", "export", "--layout", "nested"])
    assert bad.exit_code == 2
    assert "unknown layout 'nested'" in bad.output
