"""`voyagesmart-cron run daily-maintenance`: a group from the terminal, and `list` under
SCHEDULE_MODE=groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET

pytestmark = pytest.mark.slow


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
            "CRON_SECRET": SECRET, "DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "app", *args], env={**base, **env},
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)


def test_run_a_group_from_the_cli(tmp_path: Path) -> None:
    assert _cli(tmp_path, "migrate").returncode == 0
    assert _cli(tmp_path, "seed-demo").returncode == 0
    dry = _cli(tmp_path, "run", "weekly-cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    answer = json.loads(dry.stdout)
    assert (answer["task"], answer["trigger"], answer["dry_run"]) == (
        "weekly-cleanup", "cli", True)
    assert [(m["task"], m["dry_run"]) for m in answer["members"]] == [
        ("db-maintenance", True), ("storage-cleanup", True)]
    # No Stripe key: subscription-sync refuses, the group exits 1, the others ran.
    daily = _cli(tmp_path, "run", "daily-maintenance")
    assert daily.returncode == 1, daily.stderr
    members = {m["task"]: m["status"] for m in json.loads(daily.stdout)["members"]}
    assert members == {"subscription-sync": "error", "promo-cleanup": "success",
                       "trip-reminders": "success"}
    assert "Traceback" not in daily.stderr


def test_list_shows_the_group_schedule_in_groups_mode(tmp_path: Path) -> None:
    assert _cli(tmp_path, "migrate").returncode == 0
    for mode, schedule in (("jobs", "0 8 * * *"), ("groups", "0 2 * * *")):
        listing = _cli(tmp_path, "list", SCHEDULE_MODE=mode)
        assert listing.returncode == 0, listing.stderr
        line = next(x for x in listing.stdout.splitlines() if x.startswith("trip-reminders"))
        assert schedule in line, (mode, line)
