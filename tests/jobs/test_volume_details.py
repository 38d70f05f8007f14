"""The jobs that can measure the size of their work write it in their run's details, where
their volume trend reads it (app/observe/volumes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.config import Settings
from app.core.runner import Runner
from tests.conftest import FixedClock, JobRun, make_settings
from tests.jobs.test_storage_cleanup import ITEMS, _seed_references
from tests.jobs.test_trip_reminders import LATE, START
from tests.jobs.test_user_engagement import NOW, _seed
from tests.support import storage_harness
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.notification_data import seed_reminders
from tests.support.servers import SmtpSink
from tests.support.storage_harness import Harness, settings_for

store = storage_harness.store  # the fixture: each test on both backends


@pytest.fixture
def seeded(engine: Engine, store: Harness) -> Harness:
    store.seed(ITEMS)
    _seed_references(engine)
    return store


def test_storage_cleanup_reports_the_objects_it_scanned(
        engine: Engine, seeded: Harness, tmp_path: Path, run_job: JobRun) -> None:
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, seeded),
                      at=seeded.now)
    assert outcome.status == "success", outcome.message
    per_bucket = {b["bucket"]: b["scanned"] for b in outcome.details["buckets"]}
    assert per_bucket == {"trip-media": 7, "trip-documents": 2}
    assert outcome.details["volume"] == {"measure": "objects_scanned", "value": 9}


def test_trip_reminders_report_the_messages_they_planned(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    seed_reminders(engine, START, LATE)
    settings = make_settings(db_url, tmp_path, **smtp_sink.settings)
    outcome = Runner(settings, engine, clock=FixedClock(LATE)).run(
        "trip-reminders", trigger="github-actions")
    assert outcome.status == "success", outcome.message
    # No ceiling: the brake's share follows the recent volume, so growth never reaches it.
    assert outcome.details["volume"] == {"measure": "planned_messages", "value": 3}


@pytest.mark.parametrize(("count", "share", "ceiling"), [(100, 0.25, 100), (2, 0.5, 6)])
def test_user_engagement_reports_its_messages_and_the_most_its_brake_lets_through(
        engine: Engine, db_url: str, tmp_path: Path, smtp_sink: SmtpSink, run_job: JobRun,
        count: int, share: float, ceiling: int) -> None:
    _seed(engine)  # 12 users, 4 of them to email
    settings: Settings = make_settings(db_url, tmp_path, **smtp_sink.settings,
                                       user_engagement_send_brake_count=count,
                                       user_engagement_send_brake_share=share)
    outcome = run_job("user-engagement", settings, at=NOW, trigger="vercel")
    assert outcome.status == "success", outcome.message  # type: ignore[attr-defined]
    # The brake trips above the count AND above the share of all users: the larger holds.
    assert outcome.details["volume"] == {  # type: ignore[attr-defined]
        "measure": "planned_messages", "value": 4, "ceiling": ceiling,
        "ceiling_label": "its send brake"}
