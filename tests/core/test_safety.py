"""Brakes, archives and restore: the shared mechanisms behind every destructive step."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core import archive
from app.core.context import JobContext, JobResult
from app.core.registry import JobSpec
from app.core.runner import Runner
from app.core.safety import Brake, BrakeTripped
from tests.conftest import SECRET, rows

NOW = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
BRAKE = Brake("delete probes", share=0.1, count=5, settings=("PROBE_SHARE", "PROBE_COUNT"))


# --- the brake rule ------------------------------------------------------------------------
@pytest.mark.parametrize(("affected", "population", "allowed"), [
    (0, 0, True),          # nothing to do
    (5, 5, True),          # a small table never trips on a handful of rows
    (6, 1000, True),       # above the count, under the share
    (100, 1000, True),     # exactly the share
    (101, 1000, False),    # above both
    (6, 6, False),         # everything, above the count
    (1000, 1000, False),
])
def test_brake_trips_only_above_both_the_count_and_the_share(
        affected: int, population: int, allowed: bool) -> None:
    assert BRAKE.allows(affected, population) is allowed


def test_tripped_brake_names_figures_samples_and_the_way_on() -> None:
    with pytest.raises(BrakeTripped) as caught:
        BRAKE.engage(affected=30, population=30, samples=[f"probe-{i}" for i in range(30)])
    message = str(caught.value)
    assert "would delete probes: 30 of 30 (100%)" in message
    assert "nothing was changed" in message
    assert "PROBE_SHARE/PROBE_COUNT" in message and "force" in message
    brake = caught.value.details["brake"]
    assert brake["affected"] == 30 and brake["population"] == 30 and brake["tripped"] is True
    assert brake["samples"] == [f"probe-{i}" for i in range(5)]


def test_forced_brake_lets_the_step_through_and_says_so() -> None:
    figures = BRAKE.engage(affected=30, population=30, force=True)
    assert figures["tripped"] is True and figures["forced"] is True


def test_brake_within_limits_reports_its_figures() -> None:
    figures = BRAKE.engage(affected=3, population=30)
    assert figures == {"step": "delete probes", "affected": 3, "population": 30,
                       "share_limit": 0.1, "count_limit": 5, "tripped": False,
                       "forced": False}


def _braked_job(ctx: JobContext) -> JobResult:
    BRAKE.engage(affected=50, population=50, samples=["a", "b"], force=ctx.force)
    return JobResult(50, "deleted 50 probes")


def test_runner_ends_a_braked_run_as_error_without_retrying(engine: Engine,
                                                            settings: Settings) -> None:
    spec = JobSpec(name="probe", schedule="0 3 * * *", func=_braked_job, description="t")
    runner = Runner(settings, engine, clock=lambda: NOW, sleep=lambda _s: None,
                    jobs={"probe": spec})
    for dry_run in (True, False):
        outcome = runner.run("probe", trigger="vercel", dry_run=dry_run)
        assert outcome.status == "error" and outcome.http_status == 500
        assert outcome.attempts == 1  # a brake is not transient
        assert outcome.message.startswith("safety brake: would delete probes: 50 of 50")
        assert outcome.details["brake"]["samples"] == ["a", "b"]
    logged = rows(engine, "SELECT status, message, details FROM cron_job_log "
                          "WHERE dry_run = :d", d=False)
    assert logged[0][0] == "error" and logged[0][1].startswith("safety brake")
    forced = runner.run("probe", trigger="cli", force=True)
    assert forced.status == "success" and forced.records_processed == 50


# --- archive and restore -------------------------------------------------------------------
probe_md = sa.MetaData()
parent_t = sa.Table(
    "archive_probe", probe_md,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("code", sa.Text, unique=True, nullable=False),
    sa.Column("used", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("price", sa.Numeric(10, 2)),
    sa.Column("meta", sa.JSON),
)
child_t = sa.Table(
    "archive_probe_child", probe_md,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("probe_id", sa.Uuid, sa.ForeignKey("archive_probe.id"), nullable=False),
    sa.Column("note", sa.Text),
)


@pytest.fixture
def probes(engine: Engine) -> Any:
    probe_md.drop_all(engine)
    probe_md.create_all(engine)
    yield engine
    probe_md.drop_all(engine)


def _seed(engine: Engine, n: int) -> list[uuid.UUID]:
    ids = [uuid.UUID(int=i + 1) for i in range(n)]
    with engine.begin() as conn:
        conn.execute(parent_t.insert(), [
            {"id": pid, "code": f"CODE{i}", "used": i, "active": i % 2 == 0,
             "expires_at": NOW - dt.timedelta(days=i) if i % 3 else None,
             "price": "9.99", "meta": {"tier": "ai", "list": [1, i]} if i % 2 else "a string"}
            for i, pid in enumerate(ids)])
        conn.execute(child_t.insert(), [
            {"id": uuid.UUID(int=1000 + i), "probe_id": pid, "note": None if i else "x"}
            for i, pid in enumerate(ids)])
    return ids


def _snapshot(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        return (conn.execute(parent_t.select().order_by(parent_t.c.id)).all(),
                conn.execute(child_t.select().order_by(child_t.c.id)).all())


def _archive_expired(engine: Engine, run_id: uuid.UUID) -> int:
    doomed = sa.select(parent_t.c.id).where(parent_t.c.used >= 2)
    with engine.begin() as conn:
        children = archive.archive_and_delete(conn, child_t, child_t.c.probe_id.in_(doomed),
                                              run_id=run_id, job="probe", now=NOW)
        parents = archive.archive_and_delete(conn, parent_t, parent_t.c.used >= 2,
                                             run_id=run_id, job="probe", now=NOW)
    return len(children) + len(parents)


def test_archive_then_restore_brings_back_every_column_exactly(probes: Engine) -> None:
    _seed(probes, 6)
    before = _snapshot(probes)
    run_id = uuid.uuid4()
    assert _archive_expired(probes, run_id) == 8
    parents, children = _snapshot(probes)
    assert [p.code for p in parents] == ["CODE0", "CODE1"] and len(children) == 2
    with probes.begin() as conn:
        assert archive.pending_restore(conn, run_id) == {"archive_probe": 4,
                                                         "archive_probe_child": 4}
        report = archive.restore_rows(conn, run_id, NOW + dt.timedelta(hours=1))
    assert report.restored == {"archive_probe": 4, "archive_probe_child": 4}
    assert report.left == {}
    assert _snapshot(probes) == before
    with probes.begin() as conn:  # a second restore finds nothing to do
        again = archive.restore_rows(conn, run_id, NOW + dt.timedelta(hours=2))
    assert again.total == 0 and _snapshot(probes) == before


def test_restore_never_overwrites_a_key_or_unique_value_taken_again(probes: Engine) -> None:
    _seed(probes, 4)
    run_id = uuid.uuid4()
    _archive_expired(probes, run_id)
    with probes.begin() as conn:  # CODE2 is created anew meanwhile, with another id
        conn.execute(parent_t.insert().values(id=uuid.uuid4(), code="CODE2", used=0,
                                              active=True))
    with probes.begin() as conn:
        report = archive.restore_rows(conn, run_id, NOW + dt.timedelta(hours=1))
        # CODE2's child cannot come back without its parent, so it stays archived too.
        assert report.restored["archive_probe"] == 1
        assert report.left["archive_probe"] == 1
        left = archive.pending_restore(conn, run_id)
    assert left["archive_probe"] == 1
    codes = [r[0] for r in rows(probes, "SELECT code FROM archive_probe ORDER BY code")]
    assert codes == ["CODE0", "CODE1", "CODE2", "CODE3"]
    assert rows(probes, "SELECT count(*) FROM archive_probe WHERE used = 0 AND code = 'CODE2'"
                )[0][0] == 1


def test_purge_drops_only_archives_past_retention(probes: Engine) -> None:
    _seed(probes, 4)
    _archive_expired(probes, uuid.uuid4())
    with probes.begin() as conn:
        assert archive.purge_archive(conn, NOW + dt.timedelta(days=6),
                                     dt.timedelta(days=7)) == 0
        assert archive.purge_archive(conn, NOW + dt.timedelta(days=8),
                                     dt.timedelta(days=7)) == 4


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": db_url, "CRON_SECRET": SECRET,
           "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path.cwd())}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_restore_command_puts_back_one_runs_rows(probes: Engine, db_url: str,
                                                 tmp_path: Path) -> None:
    _seed(probes, 5)
    before = _snapshot(probes)
    run_id = uuid.uuid4()
    with probes.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO cron_job_log (run_id, job_name, trigger, started_at, status, "
            "records_processed, attempts, dry_run) VALUES (:r, 'promo-cleanup', 'cli', :t, "
            "'success', 6, 1, :f)").bindparams(
                sa.bindparam("r", run_id, type_=sa.Uuid()),
                sa.bindparam("t", NOW, type_=sa.DateTime(timezone=True))), {"f": False})
    _archive_expired(probes, run_id)
    dry = _cli(db_url, tmp_path, "restore", str(run_id), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rows"] == {"archive_probe": 3, "archive_probe_child": 3}
    assert _snapshot(probes) != before
    real = _cli(db_url, tmp_path, "restore", str(run_id))
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["rows"] == {"archive_probe": 3, "archive_probe_child": 3}
    assert _snapshot(probes) == before
    unknown = _cli(db_url, tmp_path, "restore", str(uuid.uuid4()))
    assert unknown.returncode == 2 and "no run" in unknown.stderr
    garbage = _cli(db_url, tmp_path, "restore", "x" * 500)
    assert garbage.returncode == 2 and "not a run id" in garbage.stderr
