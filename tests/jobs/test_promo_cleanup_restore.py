"""`voyagesmart-cron restore <run-id>` after a real promo-cleanup run brings back exactly what
the run deleted, and nothing else moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from tests.conftest import SECRET, FixedClock, rows
from tests.jobs.test_promo_cleanup import DAY, NOW, _bulk_codes, _seed, _tables

pytestmark = pytest.mark.slow


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path.cwd())}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_restore_brings_back_exactly_what_a_promo_run_deleted(
        engine: Engine, settings: Settings, db_url: str, tmp_path: Path) -> None:
    _seed(engine)
    _bulk_codes(engine, "OLD", 12, expires_at=NOW - 300 * DAY, tier="ai")
    before = _tables(engine)

    outcome = Runner(settings, engine, clock=FixedClock(NOW)).run("promo-cleanup",
                                                                 trigger="cli")
    assert outcome.status == "success", outcome.message
    assert outcome.details["steps"]["codes_deleted"] == 13
    after_run = _tables(engine)
    deleted = set(before["promo_codes"]) - set(after_run["promo_codes"])
    assert len(deleted) == 13
    assert after_run["promo_code_redemptions"] == before["promo_code_redemptions"]
    assert rows(engine, "SELECT count(*) FROM cron_archived_row")[0][0] == 13

    dry = _cli(db_url, tmp_path, "restore", str(outcome.run_id), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rows"] == {"promo_codes": 13}
    assert _tables(engine) == after_run

    real = _cli(db_url, tmp_path, "restore", str(outcome.run_id))
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["rows"] == {"promo_codes": 13}
    restored = _tables(engine)
    # The deleted rows are back as they were, every column; the rows the run changed in
    # place (deactivated, count raised) keep those changes; the redemptions never moved.
    expected: dict[str, dict[Any, Any]] = {
        "promo_codes": {**after_run["promo_codes"],
                        **{key: before["promo_codes"][key] for key in deleted}},
        "promo_code_redemptions": before["promo_code_redemptions"],
    }
    assert restored == expected
    changed_in_place = {key for key, row in before["promo_codes"].items()
                        if restored["promo_codes"][key] != row}
    assert {before["promo_codes"][key][1] for key in changed_in_place} == {
        "EXPIRED_RECENT", "EXPIRED_OLD_REDEEMED", "EXHAUSTED", "LAGGING",
        "EXPIRED_OLD_COUNTED"}

    again = _cli(db_url, tmp_path, "restore", str(outcome.run_id))
    assert again.returncode == 0 and json.loads(again.stdout)["rows"] == {"promo_codes": 0}
    assert _tables(engine) == restored
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cron_archived_row WHERE "
                                    "restored_at IS NULL")).scalar() == 0
