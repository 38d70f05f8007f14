"""`voyagesmart-cron restore` of a storage-cleanup run works from the project directory with the
default, relative storage root (./data/storage)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.test_dev_serve import checkout

pytestmark = pytest.mark.slow
__all__ = ["checkout"]


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo.parent),
           "LANG": "C.UTF-8"}
    return subprocess.run([".venv/bin/voyagesmart-cron", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=180)


def test_restore_of_a_storage_cleanup_run_with_the_default_relative_root(
        checkout: Path) -> None:
    (checkout / ".env").write_text("APP_ENV=development\n"
                                   "CRON_SECRET=restore-secret-0123456789-abcdefghijkl\n")
    for command in (["migrate"], ["seed-demo"]):
        done = _cli(checkout, *command)
        assert done.returncode == 0, done.stderr
    storage = checkout / "data" / "storage"
    before = sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*")
                    if p.is_file())
    run = _cli(checkout, "run", "storage-cleanup")
    assert run.returncode == 0, run.stdout + run.stderr
    answer = json.loads(run.stdout)
    assert answer["status"] in ("success", "warning"), answer
    assert (storage / "trip-media" / ".quarantine").is_dir()  # it did move something

    restored = _cli(checkout, "restore", answer["run_id"])
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "Traceback" not in restored.stderr
    after = sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*")
                   if p.is_file() and ".quarantine/" not in p.relative_to(storage).as_posix())
    assert after == before
