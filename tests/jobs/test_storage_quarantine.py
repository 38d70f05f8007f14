"""What storage-cleanup removes can be put back (issue 11: deletions can be undone for a
while; a dry run predicts the real run exactly).

A run moves what it removes to the quarantine prefix, the original of a recompressed image
included; `voyagesmart-cron restore <run-id>` (the real command, in a subprocess) puts back
exactly that, on the local backend and on S3 (moto_server); past the retention the
quarantine is purged, and then a removal is final.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine

from app.core.runner import RunOutcome
from app.models import Trip
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import SECRET, JobRun
from tests.support import storage_harness
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.storage_harness import (
    NOW,
    Harness,
    Item,
    bucket_of,
    settings_for,
)

store = storage_harness.store  # the fixture: each test on both backends


def _photo() -> bytes:
    image = Image.new("RGB", (400, 300))
    rnd = random.Random(7)
    image.putdata([(x % 256, y % 256, rnd.randint(0, 60)) for y in range(300)
                   for x in range(400)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=100)
    return out.getvalue()


PHOTO = _photo()

ITEMS = [
    Item("trip-media", "tmp/upload-old.bin", b"x" * 100, old=True),
    Item("trip-media", "tmp/upload-new.bin", b"y" * 100, old=False),
    Item("trip-media", "orphans/old.jpg", b"old orphan", old=True, content_type="image/jpeg",
         metadata={"owner": "u9"}),
    Item("trip-media", "orphans/young.jpg", b"young orphan", old=False),
    Item("trip-media", "trips/ref.txt", b"notes", old=True, content_type="text/plain"),
    Item("trip-media", "trips/photo.jpg", PHOTO, old=True, content_type="image/jpeg",
         metadata={"owner": "u1"}),
    Item("trip-documents", "t1/accommodations/booking.pdf", b"%PDF-1.4", old=True),
    Item("trip-documents", "t1/old draft.pdf", b"%PDF-draft", old=True),
]


@pytest.fixture
def seeded(engine: Engine, store: Harness) -> Harness:
    store.seed(ITEMS)
    app = AppWriter(engine)
    owner = app.sign_up("u1@example.com", at=NOW - dt.timedelta(days=300))
    trip = app.create_trip(owner, name="Lisbon", at=NOW)
    app.journal_media(trip, owner, "trips/photo.jpg", NOW)
    app.chat_attachment(trip, owner, "trips/ref.txt", NOW)
    app.accommodation(trip, "Hotel", ["t1/accommodations/booking.pdf"], NOW)
    return store


def _link(engine: Engine, key: str) -> None:
    with engine.connect() as conn:
        trip, owner = conn.execute(sa.select(Trip.id, Trip.owner_id)).one()
    AppWriter(engine).chat_attachment(trip, owner, key, NOW)


def _restore(engine: Engine, store: Harness, tmp_path: Path, run_id: uuid.UUID | None,
             *flags: str) -> subprocess.CompletedProcess[str]:
    """`python -m app restore <run-id>` with this store's settings in the environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "CRON_SECRET": SECRET,
           "DATABASE_URL": engine.url.render_as_string(hide_password=False),
           "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path.cwd()),
           "STORAGE_BUCKETS": ",".join(store.buckets)}
    env.update({name.upper(): str(value) for name, value in store.overrides.items()
                if not name.endswith(("_hours", "_days"))})
    return subprocess.run([sys.executable, "-m", "app", "restore", str(run_id), *flags],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _sizes(listing: dict[tuple[str, str], tuple[int, str]]) -> dict[tuple[str, str], int]:
    return {key: size for key, (size, _etag) in listing.items()}


@pytest.mark.slow
def test_restore_brings_back_exactly_what_a_run_moved(engine: Engine, seeded: Harness,
                                                      tmp_path: Path, run_job: JobRun) -> None:
    store = seeded
    before, before_bytes = store.listing(), store.bytes_of()
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    assert outcome.message.endswith(f"undo with: voyagesmart-cron restore {outcome.run_id}")
    folder = outcome.details["quarantine"]["folder"]
    assert folder.startswith(".quarantine/") and folder.endswith(f"_{outcome.run_id}/")
    assert set(store.quarantine()) == {
        ("trip-media", f"{folder}temp/tmp/upload-old.bin"),
        ("trip-media", f"{folder}orphan/orphans/old.jpg"),
        ("trip-media", f"{folder}replaced/trips/photo.jpg"),
        ("trip-documents", f"{folder}orphan/t1/old draft.pdf")}
    assert store.read("trip-media", f"{folder}replaced/trips/photo.jpg").body == PHOTO
    assert len(store.read("trip-media", "trips/photo.jpg").body) < len(PHOTO)
    assert set(store.listing()) == set(before) - {
        ("trip-media", "tmp/upload-old.bin"), ("trip-media", "orphans/old.jpg"),
        ("trip-documents", "t1/old draft.pdf")}

    dry = _restore(engine, store, tmp_path, outcome.run_id, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["other"] == {"files": {"trip-media": 3, "trip-documents": 1}}
    assert store.bytes_of() != before_bytes

    real = _restore(engine, store, tmp_path, outcome.run_id)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["other"] == {"files": {"trip-media": 3,
                                                          "trip-documents": 1}}
    after = store.listing()
    assert _sizes(after) == _sizes(before)
    assert store.bytes_of() == before_bytes
    assert store.quarantine() == {}
    if store.name == "local":  # the files keep their times: the listing is the same
        assert after == before
    else:  # same bytes, so the same ETags; metadata and headers came back with them
        assert after == before
        photo = store.read("trip-media", "trips/photo.jpg")
        assert (photo.content_type, photo.extra["Metadata"]) == ("image/jpeg", {"owner": "u1"})
        assert store.read("trip-media", "orphans/old.jpg").extra["Metadata"] == {"owner": "u9"}
        assert photo.extra["CacheControl"] == "max-age=3600"

    again = _restore(engine, store, tmp_path, outcome.run_id)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["other"] == {"files": {}}


@pytest.mark.slow
def test_restore_never_overwrites_a_key_taken_again(engine: Engine, seeded: Harness,
                                                    tmp_path: Path, run_job: JobRun) -> None:
    store = seeded
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    from app.adapters.storage import ObjectData

    store.storage.put("trip-media", "orphans/old.jpg", ObjectData(b"a new upload", None))
    result = _restore(engine, store, tmp_path, outcome.run_id)
    assert result.returncode == 1  # something could not come back: the operator looks
    other = json.loads(result.stdout)["other"]
    assert other["files"] == {"trip-media": 2, "trip-documents": 1}
    assert other["left"] == {"trip-media": 1}
    assert other["left_samples"] == ["trip-media/orphans/old.jpg: orphans/old.jpg exists"]
    assert store.read("trip-media", "orphans/old.jpg").body == b"a new upload"
    folder = outcome.details["quarantine"]["folder"]
    assert set(store.quarantine()) == {("trip-media", f"{folder}orphan/orphans/old.jpg")}


def test_the_quarantine_is_purged_after_the_retention(engine: Engine, seeded: Harness,
                                                      tmp_path: Path, run_job: JobRun) -> None:
    """Within the retention the quarantine is kept, and a file linked again goes back;
    past it the rest is deleted for good, and restore has nothing left to bring back."""
    store = seeded
    settings = settings_for(engine, tmp_path, store)
    first = run_job("storage-cleanup", settings, at=store.now)
    assert first.status == "success", first.message
    moved = store.quarantine()
    assert len(moved) == 4
    _link(engine, "orphans/old.jpg")  # a row links the removed file again

    six_days = run_job("storage-cleanup", settings, at=store.now + dt.timedelta(days=6))
    assert six_days.status == "success", six_days.message
    media = bucket_of(six_days, "trip-media")
    assert (media["quarantine_returned"], media["quarantine_purged"]) == (1, 0)
    assert store.read("trip-media", "orphans/old.jpg").body == b"old orphan"
    assert set(moved) - set(store.quarantine()) == {
        ("trip-media", f"{first.details['quarantine']['folder']}orphan/orphans/old.jpg")}

    later = store.now + dt.timedelta(days=8)
    dry = run_job("storage-cleanup", settings, at=later, dry_run=True)
    assert "purge 3 quarantined objects" in dry.message
    eight_days = run_job("storage-cleanup", settings, at=later)
    assert eight_days.status == "success", eight_days.message
    assert sum(b["quarantine_purged"] for b in eight_days.details["buckets"]) == 3
    assert not set(moved) & set(store.quarantine())
    gone = _restore(engine, store, tmp_path, first.run_id)
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["other"] == {"files": {}}
    assert ("trip-media", "tmp/upload-old.bin") not in store.listing()


def test_a_blocked_bucket_keeps_its_quarantine(engine: Engine, seeded: Harness,
                                               tmp_path: Path, run_job: JobRun) -> None:
    """Past the retention, but with the references of trip-media incomplete (a source
    unreadable), trip-media's quarantine is not purged."""
    store = seeded
    settings = settings_for(engine, tmp_path, store)
    assert run_job("storage-cleanup", settings, at=store.now).status == "success"
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE trip_chat_messages RENAME TO chat_elsewhere")
    try:
        later = run_job("storage-cleanup", settings, at=store.now + dt.timedelta(days=8))
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE chat_elsewhere RENAME TO trip_chat_messages")
    assert later.status == "warning"
    assert bucket_of(later, "trip-media")["quarantine_purged"] == 0
    assert bucket_of(later, "trip-documents")["quarantine_purged"] == 1
    assert len(store.quarantine()) == 3


# Per bucket: what a dry run predicts, and what the real run did for each prediction.
_PREDICTED = ("scanned", "scanned_bytes", "referenced", "temp_to_delete",
              "temp_to_delete_bytes", "orphans_to_delete", "orphans_to_delete_bytes",
              "temp_kept", "young_orphans_kept", "recompress_candidates",
              "recompress_to_replace", "recompress_to_save_bytes", "recompress_not_worth_it",
              "recompress_skipped_animated", "recompress_skipped_lossless",
              "quarantine_held", "quarantine_to_return", "quarantine_to_purge",
              "quarantine_to_purge_bytes", "protected_by", "brake", "samples")
_DONE = {"temp_to_delete": "temp_deleted", "temp_to_delete_bytes": "temp_deleted_bytes",
         "orphans_to_delete": "orphans_deleted",
         "orphans_to_delete_bytes": "orphans_deleted_bytes",
         "recompress_to_replace": "recompressed",
         "recompress_to_save_bytes": "recompress_bytes_saved",
         "quarantine_to_return": "quarantine_returned",
         "quarantine_to_purge": "quarantine_purged",
         "quarantine_to_purge_bytes": "quarantine_purged_bytes"}


def _assert_predicted(dry: RunOutcome, real: RunOutcome) -> dict[str, Any]:
    assert dry.status == real.status == "success", (dry.message, real.message)
    for name in ("reference_rows", "protected_buckets", "uninterpretable_values"):
        assert dry.details[name] == real.details[name]
    for predicted, done in zip(dry.details["buckets"], real.details["buckets"], strict=True):
        assert {f: predicted[f] for f in _PREDICTED} == {f: done[f] for f in _PREDICTED}
        assert {f: predicted[f] for f in _DONE} == {f: done[d] for f, d in _DONE.items()}
        assert done["errors"] == done["linked_during_run"] == 0
    figures: dict[str, Any] = {f: sum(b[f] for b in dry.details["buckets"]) for f in _DONE}
    return figures


def test_a_dry_run_predicts_the_real_run(engine: Engine, seeded: Harness,
                                         tmp_path: Path, run_job: JobRun) -> None:
    """Counts and samples, moves, recompression, returns and purges alike."""
    store = seeded
    settings = settings_for(engine, tmp_path, store)
    dry = run_job("storage-cleanup", settings, at=store.now, dry_run=True)
    real = run_job("storage-cleanup", settings, at=store.now)
    first = _assert_predicted(dry, real)
    assert (first["temp_to_delete"], first["orphans_to_delete"],
            first["recompress_to_replace"]) == (1, 2, 1)
    assert bucket_of(dry, "trip-media")["samples"] == {
        "orphans": ["orphans/old.jpg"], "recompress": ["trips/photo.jpg"],
        "temp": ["tmp/upload-old.bin"]}
    assert dry.message.startswith("would delete 3 objects (120 bytes) into the quarantine, "
                                  "recompress 1 images, put back 0 and purge 0")
    assert real.message.startswith("deleted 3 objects (120 bytes) into the quarantine, "
                                   "recompressed 1 images")

    _link(engine, "orphans/old.jpg")
    later = store.now + dt.timedelta(days=8)
    dry = run_job("storage-cleanup", settings, at=later, dry_run=True)
    real = run_job("storage-cleanup", settings, at=later)
    second = _assert_predicted(dry, real)
    assert (second["quarantine_to_return"], second["quarantine_to_purge"]) == (1, 3)
